"""The guests' agent and real failures on demand.

The agent is spoken to through libvirt (``libvirt_qemu.qemuAgentCommand``), as masakari's
introspective monitor does: libvirtd itself is the one client of the agent's host-side
socket (QEMU serves it, one client at a time), so a second, direct client would wait.

* ``kill_qemu``: SIGKILL of the domain's QEMU -> STOPPED/FAILED.
* ``panic``: ``guest-exec`` of ``echo c > /proc/sysrq-trigger`` -> a kernel panic in the
  guest -> pvpanic -> CRASHED/PANICKED (then, with on_crash destroy, STOPPED/CRASHED).
* ``hang``: ``guest-exec`` of a SCHED_FIFO 99 busy loop (chrt) with RT throttling off
  (sched_rt_runtime_us = -1): it owns the only vCPU for good, so the agent never runs again
  while QEMU (and the domain, for libvirt) keeps running.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

PANIC_COMMAND = "sleep 0.5; echo c > /proc/sysrq-trigger"  # the reply leaves first
HANG_COMMAND = (
    "echo -1 > /proc/sys/kernel/sched_rt_runtime_us; "
    "/usr/bin/chrt -f 99 /bin/sh -c 'sleep 0.3; while :; do :; done' &"
)


class AgentError(RuntimeError):
    pass


def agent_command(dom: Any, command: str, arguments: dict | None = None, timeout: int = 5) -> Any:
    """One guest-agent command; its "return" value. AgentError when there is no answer."""
    import libvirt
    import libvirt_qemu

    request = {"execute": command, **({"arguments": arguments} if arguments else {})}
    try:
        answer = libvirt_qemu.qemuAgentCommand(dom, json.dumps(request), timeout, 0)
    except libvirt.libvirtError as exc:
        raise AgentError(f"{command}: {exc.get_error_message()}") from None
    return json.loads(answer)["return"]


def agent_ping(dom: Any, timeout: int = 2) -> bool:
    """guest-ping answered within `timeout` seconds."""
    try:
        agent_command(dom, "guest-ping", timeout=timeout)
        return True
    except AgentError:
        return False


def wait_agent(dom: Any, timeout: float = 60.0) -> float:
    """Seconds until the guest's agent answers its first guest-ping."""
    t0 = time.monotonic()
    while not agent_ping(dom, timeout=1):
        if time.monotonic() - t0 > timeout:
            raise AgentError(f"{dom.name()}: no guest-ping answer in {timeout}s")
        time.sleep(0.2)
    return time.monotonic() - t0


def guest_exec(dom: Any, shell_command: str) -> int:
    """Start `/bin/sh -c shell_command` in the guest; its PID there."""
    answer = agent_command(dom, "guest-exec", {"path": "/bin/sh", "arg": ["-c", shell_command]})
    return int(answer["pid"])


def kill_qemu(qemu_pid: int) -> float:
    """SIGKILL the domain's QEMU (bed.qemu_pid(name)); returns time.time() of the kill."""
    t = time.time()
    os.kill(qemu_pid, signal.SIGKILL)
    return t


def panic(dom: Any) -> float:
    """Panic the guest's kernel (magic SysRq 'c' through the agent); time.time() of it."""
    guest_exec(dom, PANIC_COMMAND)
    return time.time()


def hang(dom: Any) -> float:
    """Hang the guest for good (RT busy loop on its only vCPU); time.time() of it."""
    guest_exec(dom, HANG_COMMAND)
    return time.time()
