"""Shared helpers of the test suite: run the agents the way Pacemaker does."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping

from testbed import util as bed_util
from testbed.util import need

ROOT = str(bed_util.ROOT)
FENCE_AGENT = str(bed_util.FENCE_AGENT)
COMPUTE_AGENT = os.path.join(ROOT, "agents", "ocf", "NovaCompute")
PYTHON = sys.executable


def need_binary(name: str) -> str:
    path = shutil.which(name) or (name if os.path.isfile(name) else None)
    need(path is not None, name)
    return path


def stdin_text(params: Mapping[str, object] | Iterable[tuple[str, object]]) -> str:
    items = params.items() if isinstance(params, Mapping) else params
    return "".join(f"{k}={v}\n" for k, v in items)


def run_fence(
    params: Mapping[str, object] | Iterable[tuple[str, object]] | None = None,
    args: list[str] | None = None,
    stdin: bytes | str | None = None,
    user: str | None = None,
    timeout: float = 120,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run fence_nova_evacuate as Pacemaker does: parameters on stdin, no argv."""
    if stdin is None:
        stdin = stdin_text(params or {})
    if isinstance(stdin, str):
        stdin = stdin.encode()
    cmd = [PYTHON, FENCE_AGENT] + (args or [])
    if user:
        cmd = ["runuser", "-u", user, "--"] + cmd
    done = subprocess.run(
        cmd,
        input=stdin,
        capture_output=True,
        timeout=timeout,
        env=dict(env if env is not None else os.environ),
        cwd="/",
    )
    return subprocess.CompletedProcess(
        done.args,
        done.returncode,
        done.stdout.decode(errors="replace"),
        done.stderr.decode(errors="replace"),
    )


EVACUATE_AGENT = os.path.join(ROOT, "agents", "ocf", "NovaEvacuate")
INSTANCE_AGENT = os.path.join(ROOT, "agents", "ocf", "NovaInstanceHA")


def ocf_env(
    params: Mapping[str, object] | None = None,
    meta: Mapping[str, object] | None = None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment Pacemaker's executor gives an OCF agent."""
    env = {k: v for k, v in (base or os.environ).items() if not k.startswith("OCF_")}
    env["OCF_ROOT"] = "/usr/lib/ocf"
    env.update({f"OCF_RESKEY_{k}": str(v) for k, v in (params or {}).items()})
    env.update({f"OCF_RESKEY_CRM_meta_{k}": str(v) for k, v in (meta or {}).items()})
    return env


def run_ocf(
    agent: str,
    action: str,
    params: Mapping[str, object] | None = None,
    meta: Mapping[str, object] | None = None,
    timeout: float = 120,
    user: str | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    env = ocf_env(params, meta, env)
    cmd = [PYTHON, agent, action]
    if user:
        cmd = ["runuser", "-u", user, "--"] + cmd
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd="/")


def wait_until(predicate, timeout: float = 60.0, interval: float = 0.2):
    """The predicate's first true value, polled; AssertionError when time runs out."""
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not reached in time")


def cloud_params(cloud) -> dict[str, str]:
    """The agents' parameters for a simulated or real test cloud (admin, no token cache)."""
    from testbed import util

    return {**util.cloud_params(cloud), "os_token_cache": "0"}


def cloud_client(cloud):
    """A Nova client of nova-ha for a test cloud."""
    from nova_ha.lib import params
    from nova_ha.openstack.compute import Nova

    return Nova.from_params(params.parse(cloud_params(cloud), params.FENCE))
