"""An OCF agent that runs a long-lived service of nova-ha: start, stop and monitor it.

NovaEvacuate (the evacuation service) and NovaInstanceHA (the instance monitor) are such
agents: start spawns the service detached, in a process group of its own, with the
resource's parameters on its stdin (never in its argv or environment), and returns once the
service says it is alive; stop ends the whole group (workers included) by PID, SIGTERM then
SIGKILL; monitor checks that the recorded process (not a reused PID) runs and that its
liveness file is fresh. A ``Daemon`` says which service and how fresh is fresh.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from nova_ha.lib import log, ocf_proto
from nova_ha.lib.ocf_proto import OcfError, OcfRequest

LOG = log.get("daemon-agent")
DEFAULT_LOG_DIR = "/var/log/nova-ha"


@dataclass(frozen=True)
class Daemon:
    """One kind of service: its agent's name (the default resource name), what it is called
    in messages, the module run as ``python -m MODULE serve ALIVE_FILE``, the environment it
    gets for a request, and how old its liveness file may grow (seconds) for a request."""

    agent: str
    label: str
    module: str
    env: Callable[[OcfRequest], dict[str, str]]
    stale_after: Callable[[OcfRequest], float]


@dataclass(frozen=True)
class Paths:
    """Where one resource keeps its pid, liveness and log files."""

    pid: str
    alive: str
    log: str

    @classmethod
    def of(cls, daemon: Daemon, request: OcfRequest) -> Paths:
        directory = request.env.get("HA_RSCTMP") or "/run/resource-agents"
        name = (request.resource or daemon.agent).replace("/", "_")
        logs = os.environ.get("NOVA_HA_LOG_DIR") or DEFAULT_LOG_DIR
        return cls(
            pid=os.path.join(directory, f"nova-ha-{name}.pid"),
            alive=os.path.join(directory, f"nova-ha-{name}.alive"),
            log=os.path.join(logs, f"{name}.log"),
        )


def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot), which tells a reused PID apart;
    None when it does not run (a zombie waiting to be reaped does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[19] if len(fields) > 19 and fields[0] != "Z" else None


def _recorded(paths: Paths) -> tuple[int, int] | None:
    """(PID, start time) of the service as its pid file records them."""
    try:
        with open(paths.pid) as f:
            pid_text, _, started = f.read(64).strip().partition(" ")
        return int(pid_text), int(started)
    except (OSError, ValueError):
        return None


def running_pid(paths: Paths) -> int | None:
    """The service's PID if the process the pid file names still runs (not a reused PID)."""
    recorded = _recorded(paths)
    if recorded is None:
        return None
    pid, started = recorded
    return pid if _start_time(pid) == str(started) else None


def _leftovers(paths: Paths) -> list[int]:
    """Processes of the service's group, the service itself dead or not: workers outlive a
    service killed with -9, and must not work beside the next one. Only processes started
    after the service count (its group id could be reused by then)."""
    recorded = _recorded(paths)
    if recorded is None:
        return []
    pid, started = recorded
    return [p for p in _group_members(pid) if int(_start_time(p) or 0) >= started]


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and (fields[0] != "Z" or _live_threads(int(entry))):
            members.append(int(entry))
    return members


def _live_threads(pid: int) -> bool:
    """A process whose main thread ended ("Z") may still run other threads."""
    try:
        return len(os.listdir(f"/proc/{pid}/task")) > 1
    except OSError:
        return False


def start(daemon: Daemon, request: OcfRequest) -> int:
    paths = Paths.of(daemon, request)
    if running_pid(paths) is not None:
        return ocf_proto.OCF_SUCCESS
    recorded = _recorded(paths)
    if recorded is not None and _leftovers(paths):
        _end_group(daemon, recorded[0], grace=5.0)  # never two workers on one host
    for directory in (os.path.dirname(paths.pid), os.path.dirname(paths.log)):
        os.makedirs(directory, mode=0o700, exist_ok=True)
    raw = {
        k[len("OCF_RESKEY_") :]: v
        for k, v in request.env.items()
        if k.startswith("OCF_RESKEY_") and not k.startswith("OCF_RESKEY_CRM_meta")
    }
    with contextlib.suppress(FileNotFoundError):
        os.unlink(paths.alive)
    process = _spawn_service(daemon, request, paths, raw)
    with open(paths.pid, "w") as pid_file:
        pid_file.write(f"{process.pid} {_start_time(process.pid)}\n")
    end = time.monotonic() + max(request.timeout - 3.0, 2.0)
    while time.monotonic() < end:
        if os.path.exists(paths.alive):
            LOG.info("%s started (pid %d, log %s)", daemon.label, process.pid, paths.log)
            return ocf_proto.OCF_SUCCESS
        if process.poll() is not None:
            raise OcfError(
                ocf_proto.OCF_ERR_GENERIC,
                f"the {daemon.label} exited {process.returncode} at start; see {paths.log}",
            )
        time.sleep(0.05)
    raise OcfError(
        ocf_proto.OCF_ERR_GENERIC,
        f"the {daemon.label} did not come up in time; see {paths.log}",
    )


def _spawn_service(
    daemon: Daemon, request: OcfRequest, paths: Paths, raw: dict[str, str]
) -> subprocess.Popen[bytes]:
    """The service, started with the resource's parameters `raw` on its stdin
    (never on its command line or in its environment) and its output in its log file."""
    fd = os.open(paths.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        # A session of its own: the executor's process group ends with this action, and
        # stop ends the service's group (its workers) as one.
        process = subprocess.Popen(
            [sys.executable, "-m", daemon.module, "serve", paths.alive],
            stdin=subprocess.PIPE,
            stdout=fd,
            stderr=fd,
            close_fds=True,
            cwd="/",
            start_new_session=True,
            env=daemon.env(request),
        )
    finally:
        os.close(fd)
    assert process.stdin is not None  # stdin=PIPE
    process.stdin.write(json.dumps(raw).encode() + b"\n")
    process.stdin.close()
    return process


def stop(daemon: Daemon, request: OcfRequest) -> int:
    paths = Paths.of(daemon, request)
    recorded = _recorded(paths)
    if recorded is not None and (running_pid(paths) is not None or _leftovers(paths)):
        _end_group(daemon, recorded[0], grace=max(request.timeout - 5.0, 2.0))
    for path in (paths.pid, paths.alive):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    return ocf_proto.OCF_SUCCESS


def _end_group(daemon: Daemon, pgid: int, grace: float) -> None:
    """SIGTERM to the service's group (it ends its workers), SIGKILL to what remains."""
    found = _group_members(pgid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    end = time.monotonic() + grace
    while time.monotonic() < end and _group_members(pgid):
        time.sleep(0.1)
    left = _group_members(pgid)
    if left:
        LOG.warning("%s did not end in %.0f s: killing %s", daemon.label, grace, left)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        while _group_members(pgid):
            time.sleep(0.05)
    LOG.info(
        "%s stopped (process group %d: %s)",
        daemon.label,
        pgid,
        " ".join(map(str, found)) or "already gone",
    )


def monitor(daemon: Daemon, request: OcfRequest) -> int:
    paths = Paths.of(daemon, request)
    if running_pid(paths) is None:
        if _leftovers(paths):
            # Dead service, live workers: 'failed', so that Pacemaker's stop ends them.
            raise OcfError(
                ocf_proto.OCF_ERR_GENERIC, f"the {daemon.label} died; its workers still run"
            )
        if os.path.exists(paths.pid) and not request.is_probe:
            ocf_proto.exit_reason(f"the {daemon.label} is not running")
        return ocf_proto.OCF_NOT_RUNNING
    try:
        age = time.time() - os.stat(paths.alive).st_mtime
    except OSError:
        age = float("inf")
    stale = daemon.stale_after(request)
    if age > stale:
        raise OcfError(
            ocf_proto.OCF_ERR_GENERIC,
            f"the {daemon.label} has shown no sign of life for {age:.0f} s "
            f"(more than {stale:.0f} s)",
        )
    return ocf_proto.OCF_SUCCESS


def agent_spec(
    daemon: Daemon, timeouts: tuple[int, int, int], validate: ocf_proto.Validator
) -> ocf_proto.OcfAgentSpec:
    """The OCF agent of `daemon`: its start, stop and monitor, with `validate`."""
    return ocf_proto.service_agent_spec(
        daemon.agent,
        timeouts=timeouts,
        start=lambda request: start(daemon, request),
        stop=lambda request: stop(daemon, request),
        monitor=lambda request: monitor(daemon, request),
        validate=validate,
    )
