"""Running nova-compute on a compute node: a systemd unit, or explicit commands.

Commands run without a shell (split like a shell would) and always with a timeout.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from typing import Protocol

from nova_ha.lib import log

DEFAULT_UNITS = ("nova-compute.service", "openstack-nova-compute.service")
_UNIT_DIRS = ("/etc/systemd/system", "/run/systemd/system", "/lib/systemd/system",
              "/usr/lib/systemd/system")
LOG = log.get("service")


class ServiceError(RuntimeError):
    pass


class Service(Protocol):
    description: str

    def running(self) -> bool: ...
    def start(self, timeout: float) -> None: ...
    def stop(self, timeout: float) -> None: ...


def _run(argv: list[str], timeout: float, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=max(timeout, 0.5), env=env, check=False)
    except subprocess.TimeoutExpired:
        raise ServiceError(f"{argv[0]} did not finish within {timeout:.0f}s") from None
    except OSError as err:
        raise ServiceError(f"cannot run {argv[0]}: {err.strerror}") from None


def _wait(predicate, deadline: float, interval: float = 0.5) -> bool:
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(min(interval, max(deadline - time.monotonic(), 0.05)))


class CommandService:
    """start_command / stop_command / status_command (non-systemd setups, the test bed)."""

    def __init__(self, start: str, stop: str, status: str) -> None:
        self.start_argv, self.stop_argv = shlex.split(start), shlex.split(stop)
        self.status_argv = shlex.split(status)
        self.description = f"command {self.start_argv[0]}"

    def running(self) -> bool:
        return _run(self.status_argv, 10).returncode == 0

    def start(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        done = _run(self.start_argv, timeout)
        if done.returncode != 0:
            raise ServiceError(f"start_command exited {done.returncode}: "
                               f"{done.stderr.decode(errors='replace').strip()[:200]}")
        if not _wait(self.running, deadline):
            raise ServiceError("status_command does not report nova-compute running")

    def stop(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        graceful_deadline = time.monotonic() + timeout * 0.7
        _run(self.stop_argv, timeout * 0.7)
        if _wait(lambda: not self.running(), graceful_deadline):
            return
        # Forceful: stop_command again, told to kill (documented in the parameter's help).
        LOG.warning("nova-compute still runs after a graceful stop; forcing it")
        _run(self.stop_argv, deadline - time.monotonic(),
             env=dict(os.environ, NOVA_HA_STOP_FORCE="1"))
        if not _wait(lambda: not self.running(), deadline):
            raise ServiceError("nova-compute is still running after stop_command")


class SystemdService:
    def __init__(self, unit: str) -> None:
        self.unit = unit
        self.description = f"systemd unit {unit}"

    def running(self) -> bool:
        return _run(["systemctl", "is-active", "--quiet", self.unit], 10).returncode == 0

    def start(self, timeout: float) -> None:
        done = _run(["systemctl", "start", self.unit], timeout)
        if done.returncode != 0:
            raise ServiceError(f"systemctl start {self.unit} exited {done.returncode}")

    def stop(self, timeout: float) -> None:
        done = _run(["systemctl", "stop", self.unit], timeout * 0.8)
        if done.returncode == 0 and not self.running():
            return
        LOG.warning("%s still active after stop; sending SIGKILL", self.unit)
        _run(["systemctl", "kill", "--signal=SIGKILL", self.unit], timeout * 0.2)
        if self.running():
            raise ServiceError(f"{self.unit} is still active")


def find_unit(preferred: str | None) -> str | None:
    candidates = (preferred,) if preferred else DEFAULT_UNITS
    for unit in candidates:
        name = unit if "." in unit else unit + ".service"
        if any(os.path.exists(os.path.join(d, name)) for d in _UNIT_DIRS):
            return name
    return None


def problems(start: str | None, stop: str | None, status: str | None,
             unit: str | None) -> list[tuple[str, str]]:
    """('configured'|'installed', message) for what makes the service unusable."""
    out: list[tuple[str, str]] = []
    commands = {"start_command": start, "stop_command": stop, "status_command": status}
    if any(commands.values()):
        for name, command in commands.items():
            if not command:
                out.append(("configured", f"parameter '{name}' is required with the other "
                                          "*_command parameters"))
                continue
            try:
                argv = shlex.split(command)
            except ValueError as err:
                out.append(("configured", f"parameter '{name}': {err}"))
                continue
            if not argv or shutil.which(argv[0]) is None:
                out.append(("installed", f"parameter '{name}': {argv[0] if argv else ''!r} "
                                         "is not an executable"))
        return out
    if shutil.which("systemctl") is None:
        return [("installed", "systemctl not found: set start_command, stop_command and "
                              "status_command")]
    if find_unit(unit) is None:
        wanted = unit or " or ".join(DEFAULT_UNITS)
        out.append(("installed", f"systemd unit {wanted} not found (parameter "
                                 "'systemd_unit')"))
    return out


def make(start: str | None, stop: str | None, status: str | None, unit: str | None) -> Service:
    if start and stop and status:
        return CommandService(start, stop, status)
    found = find_unit(unit)
    if found is None:
        raise ServiceError("no nova-compute systemd unit found")
    return SystemdService(found)
