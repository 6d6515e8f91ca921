"""Who works a host: lease owners and runners are named ``agent@node:pid``.

The name says where the process runs, so a process on the same node can tell that a lease
holder is gone (a killed stonith agent or worker) without waiting for its lease to end. A
role, such as the evacuation service's ``NovaEvacuate``, names no process: it is never gone.
"""

from __future__ import annotations

import os


def name(agent: str, pid: int | None = None) -> str:
    """This process (or process `pid` on this node) working as `agent`."""
    return f"{agent}@{os.uname().nodename}:{os.getpid() if pid is None else pid}"


def gone(owner: str | None) -> bool:
    """A lease holder of this node whose process no longer exists."""
    if not owner or "@" not in owner:
        return False
    node, _, pid = owner.split("@", 1)[1].rpartition(":")
    return node == os.uname().nodename and pid.isdigit() and not os.path.exists(f"/proc/{pid}")
