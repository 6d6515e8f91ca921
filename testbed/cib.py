"""An offline CIB file (Pacemaker tools honour CIB_file) with compute hosts as remote nodes."""

from __future__ import annotations

import functools
import re
import subprocess
from pathlib import Path

_NODE = '    <node id="{n}" uname="{n}" type="remote"/>'
_REMOTE = """      <primitive id="{n}" class="ocf" provider="pacemaker" type="remote">
        <instance_attributes id="{n}-instance_attributes">
          <nvpair id="{n}-server" name="server" value="127.0.0.1"/>
        </instance_attributes>
      </primitive>"""


@functools.cache
def feature_set() -> str:
    """This Pacemaker's CIB feature set: a newer one in the file makes every tool refuse it."""
    empty = subprocess.run(["cibadmin", "--empty"], capture_output=True, text=True, timeout=30)
    found = re.search(r'crm_feature_set="([^"]+)"', empty.stdout)
    return found.group(1) if found else "3.16.1"


def write_cib(path: Path | str, nodes: list[str]) -> str:
    """A minimal valid CIB whose <nodes> lists `nodes` as pacemaker-remote nodes."""
    text = f"""<cib crm_feature_set="{feature_set()}" validate-with="pacemaker-3.9" epoch="1"
     num_updates="0" admin_epoch="0">
  <configuration>
    <crm_config/>
    <nodes>
{chr(10).join(_NODE.format(n=n) for n in nodes)}
    </nodes>
    <resources>
{chr(10).join(_REMOTE.format(n=n) for n in nodes)}
    </resources>
    <constraints/>
  </configuration>
  <status/>
</cib>
"""
    Path(path).write_text(text)
    return str(path)
