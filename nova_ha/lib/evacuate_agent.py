"""The NovaEvacuate OCF agent: starts, monitors and stops the evacuation service.

The evacuations themselves run in the service (nova_ha.lib.evacuation_service), beside
Pacemaker: an action of this agent never waits for one, so it never holds up a transition
(a second failed host is fenced at once). The service runs in a process group of its own:
stop ends the whole group, workers included, so nothing outlives the resource.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from nova_ha.lib import log, ocf_proto, params
from nova_ha.lib.ocf_proto import OcfError, OcfRequest

LOG = log.get("evacuate-agent")
SERVICE_MODULE = "nova_ha.lib.evacuation_service"
DEFAULT_LOG_DIR = "/var/log/nova-ha"


def validate(request: OcfRequest) -> list[tuple[int, str]]:
    parsed = request.params
    found = [
        (ocf_proto.OCF_ERR_CONFIGURED, p)
        for p in params.check_openstack(parsed)
        + params.check_evacuation(parsed)
        + params.check_notify(parsed)
    ]
    if parsed.settings.evacuation.mode not in ("all", "tagged"):
        found.append(
            (
                ocf_proto.OCF_ERR_CONFIGURED,
                "parameter 'evacuate': NovaEvacuate "
                "evacuates 'all' or 'tagged' servers of hosts recorded with "
                "evacuate=record",
            )
        )
    return found


@dataclass(frozen=True)
class Paths:
    """Where one NovaEvacuate resource keeps its pid, liveness and log files."""

    pid: str
    alive: str
    log: str

    @classmethod
    def of(cls, request: OcfRequest) -> Paths:
        directory = request.env.get("HA_RSCTMP") or "/run/resource-agents"
        name = (request.resource or params.EVACUATE).replace("/", "_")
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


def start(request: OcfRequest) -> int:
    paths = Paths.of(request)
    if running_pid(paths) is not None:
        return ocf_proto.OCF_SUCCESS
    recorded = _recorded(paths)
    if recorded is not None and _leftovers(paths):
        _end_group(recorded[0], grace=5.0)  # never two workers on one host
    for directory in (os.path.dirname(paths.pid), os.path.dirname(paths.log)):
        os.makedirs(directory, mode=0o700, exist_ok=True)
    raw = {
        k[len("OCF_RESKEY_") :]: v
        for k, v in request.env.items()
        if k.startswith("OCF_RESKEY_") and not k.startswith("OCF_RESKEY_CRM_meta")
    }
    with contextlib.suppress(FileNotFoundError):
        os.unlink(paths.alive)
    process = _spawn_service(paths, raw)
    with open(paths.pid, "w") as pid_file:
        pid_file.write(f"{process.pid} {_start_time(process.pid)}\n")
    end = time.monotonic() + max(request.timeout - 3.0, 2.0)
    while time.monotonic() < end:
        if os.path.exists(paths.alive):
            LOG.info("evacuation service started (pid %d, log %s)", process.pid, paths.log)
            return ocf_proto.OCF_SUCCESS
        if process.poll() is not None:
            raise OcfError(
                ocf_proto.OCF_ERR_GENERIC,
                f"the evacuation service exited {process.returncode} at start; see {paths.log}",
            )
        time.sleep(0.05)
    raise OcfError(
        ocf_proto.OCF_ERR_GENERIC,
        f"the evacuation service did not come up in time; see {paths.log}",
    )


def _spawn_service(paths: Paths, raw: dict[str, str]) -> subprocess.Popen[bytes]:
    """The evacuation service, started with the resource's parameters `raw` on its stdin
    (never on its command line or in its environment) and its output in its log file."""
    from nova_ha.lib import evacuation_service

    fd = os.open(paths.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        # A session of its own: the executor's process group ends with this action, and
        # stop ends the service's group (its workers) as one.
        process = subprocess.Popen(
            [sys.executable, "-m", SERVICE_MODULE, "serve", paths.alive],
            stdin=subprocess.PIPE,
            stdout=fd,
            stderr=fd,
            close_fds=True,
            cwd="/",
            start_new_session=True,
            env=evacuation_service._worker_env(),
        )
    finally:
        os.close(fd)
    assert process.stdin is not None  # stdin=PIPE
    process.stdin.write(json.dumps(raw).encode() + b"\n")
    process.stdin.close()
    return process


def stop(request: OcfRequest) -> int:
    paths = Paths.of(request)
    recorded = _recorded(paths)
    if recorded is not None and (running_pid(paths) is not None or _leftovers(paths)):
        _end_group(recorded[0], grace=max(request.timeout - 5.0, 2.0))
    for path in (paths.pid, paths.alive):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    return ocf_proto.OCF_SUCCESS


def _end_group(pgid: int, grace: float) -> None:
    """SIGTERM to the service's group (it ends its workers), SIGKILL to what remains."""
    found = _group_members(pgid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    end = time.monotonic() + grace
    while time.monotonic() < end and _group_members(pgid):
        time.sleep(0.1)
    left = _group_members(pgid)
    if left:
        LOG.warning("evacuation service did not end in %.0f s: killing %s", grace, left)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        while _group_members(pgid):
            time.sleep(0.05)
    LOG.info(
        "evacuation service stopped (process group %d: %s)",
        pgid,
        " ".join(map(str, found)) or "already gone",
    )


def monitor(request: OcfRequest) -> int:
    paths = Paths.of(request)
    if running_pid(paths) is None:
        if _leftovers(paths):
            # Dead service, live workers: 'failed', so that Pacemaker's stop ends them.
            raise OcfError(
                ocf_proto.OCF_ERR_GENERIC, "the evacuation service died; its workers still run"
            )
        if os.path.exists(paths.pid) and not request.is_probe:
            ocf_proto.exit_reason("the evacuation service is not running")
        return ocf_proto.OCF_NOT_RUNNING
    interval = request.params.settings.evacuation.watch_interval
    try:
        age = time.time() - os.stat(paths.alive).st_mtime
    except OSError:
        age = float("inf")
    stale = max(30.0, 10 * interval)
    if age > stale:
        raise OcfError(
            ocf_proto.OCF_ERR_GENERIC,
            f"the evacuation service has not looked at "
            f"the records for {age:.0f} s (more than {stale:.0f} s)",
        )
    return ocf_proto.OCF_SUCCESS


SPEC = ocf_proto.service_agent_spec(params.EVACUATE, (20, 30, 20), start, stop, monitor, validate)
