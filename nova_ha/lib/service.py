"""Running nova-compute on a compute node: a systemd unit, or explicit commands.

Commands run without a shell (split like a shell would), always with a timeout, with a bounded
amount of their output kept and without any secret in their environment (run_capped and
clean_env, also used for notify_command).
"""

from __future__ import annotations

import os
import re
import selectors
import shlex
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Protocol, cast

from nova_ha.errors import NovaHaError
from nova_ha.lib import log

DEFAULT_UNITS = ("nova-compute.service", "openstack-nova-compute.service")
_UNIT_DIRS = (
    "/etc/systemd/system",
    "/run/systemd/system",
    "/lib/systemd/system",
    "/usr/lib/systemd/system",
)
LOG = log.get("service")


class ServiceError(NovaHaError):
    pass


class Service(Protocol):
    description: str

    def running(self) -> bool: ...
    def start(self, timeout: float) -> None: ...
    def stop(self, timeout: float) -> None: ...


# ---- children: no secret in their environment, bounded output, a deadline ---------------------

OUTPUT_LIMIT = 64 * 1024  # bytes kept of each output stream of a child; the rest is discarded
_EXIT_GRACE = 1.0  # reading on after the child exited (a daemon it left may hold the pipes)
# Environment variables that hold a secret whatever their prefix (OS_PASSWORD, OS_TOKEN,
# OS_APPLICATION_CREDENTIAL_SECRET, ...), and URLs with a password in them (notify_url).
_SECRET_VARIABLE = re.compile(r"(?i)passw(or)?d|secret|(^|_)(auth_)?token$")
_URL_PASSWORD = re.compile(r"://[^/@\s]*:[^/@\s]*@")


def _secret_parameters() -> frozenset[str]:
    from nova_ha.lib import params

    return frozenset(name.lower().replace("-", "_") for name in params.secret_names())


def clean_env(
    base: Mapping[str, str] | None = None, keep: Sequence[str] | None = None
) -> dict[str, str]:
    """The environment for a child: `base` (os.environ) without any secret.

    Removed: OCF_RESKEY_<name> of every secret parameter (params.secret_names(), aliases
    included), variables whose name marks a secret (OS_PASSWORD, OS_TOKEN, ..._SECRET) and
    any variable holding a URL with a password. With `keep`, only those names (and LC_*)
    are kept at all (the notification child)."""
    secrets = _secret_parameters()
    out = {}
    for name, value in (os.environ if base is None else base).items():
        if keep is not None and name not in keep and not name.startswith("LC_"):
            continue
        if (
            name.startswith("OCF_RESKEY_")
            and name[len("OCF_RESKEY_") :].lower().replace("-", "_") in secrets
        ):
            continue
        if _SECRET_VARIABLE.search(name) or _URL_PASSWORD.search(value):
            continue
        out[name] = value
    return out


@dataclass
class Finished:
    """What a child did: its exit status and at most OUTPUT_LIMIT bytes of each stream."""

    returncode: int
    stdout: bytes
    stderr: bytes
    discarded: int = 0  # bytes read past the limit and thrown away


def run_capped(
    argv: Sequence[str],
    timeout: float,
    *,
    stdin: bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    keep_stdout: bool = True,
    limit: int = OUTPUT_LIMIT,
) -> Finished:
    """Run argv (no shell) with `stdin` as its input and clean_env(env) as its environment.

    Keeps at most `limit` bytes of stdout and of stderr, reading and discarding the rest so
    the child never blocks on a full pipe; killed at `timeout` (subprocess.TimeoutExpired).
    OSError when it cannot be started."""
    deadline = time.monotonic() + max(timeout, 0.0)
    child = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
        stdout=subprocess.PIPE if keep_stdout else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=clean_env(env),
        cwd=cwd,
        close_fds=True,
    )
    with selectors.DefaultSelector() as selector:
        pipes = _Pipes(child, selector, stdin or b"", limit)
        try:
            if not pipes.pump_until_done(deadline):
                raise subprocess.TimeoutExpired(list(argv), timeout)
            returncode = child.wait(max(deadline - time.monotonic(), 0.01))
        except BaseException:
            child.kill()
            child.wait()
            raise
        finally:
            pipes.close()
    return pipes.finished(returncode)


class _Pipes:
    """A child's pipes, none of them blocking: stdin is fed `data`, each output stream is kept
    up to `limit` bytes and read on (and discarded) past that, so the child never blocks."""

    CHUNK = 65536

    def __init__(
        self,
        child: subprocess.Popen[bytes],
        selector: selectors.BaseSelector,
        data: bytes,
        limit: int,
    ) -> None:
        self.child, self.selector, self.limit = child, selector, limit
        self.pending = memoryview(data)
        self.kept: dict[IO[bytes], bytearray] = {}
        self.discarded = 0  # bytes read past the limit and thrown away
        for stream in (child.stdout, child.stderr):
            if stream is not None:
                os.set_blocking(stream.fileno(), False)
                self.kept[stream] = bytearray()
                selector.register(stream, selectors.EVENT_READ)
        if child.stdin is not None:
            os.set_blocking(child.stdin.fileno(), False)
            selector.register(child.stdin, selectors.EVENT_WRITE)

    def pump_until_done(self, deadline: float) -> bool:
        """Until every pipe is done, or _EXIT_GRACE after the child exited; False when
        `deadline` came first."""
        exited_at: float | None = None
        while self.selector.get_map():
            now = time.monotonic()
            if now >= deadline:
                return False
            if exited_at is None and self.child.poll() is not None:
                exited_at = now
            if exited_at is not None and now - exited_at > _EXIT_GRACE:
                break  # something the child started keeps its pipes open: not ours
            for key, _ in self.selector.select(min(deadline - now, 0.2)):
                stream = cast(IO[bytes], key.fileobj)
                if stream is self.child.stdin:
                    self._feed(stream)
                else:
                    self._drain(stream)
        return True

    def finished(self, returncode: int) -> Finished:
        """What the child did, with what was kept of its output."""
        out, err = self.child.stdout, self.child.stderr
        return Finished(
            returncode,
            bytes(self.kept[out]) if out is not None else b"",
            bytes(self.kept[err]) if err is not None else b"",
            self.discarded,
        )

    def close(self) -> None:
        for stream in (self.child.stdin, self.child.stdout, self.child.stderr):
            if stream is not None and not stream.closed:
                stream.close()

    def _feed(self, stream: IO[bytes]) -> None:
        try:
            written = os.write(stream.fileno(), self.pending[: self.CHUNK])
        except BlockingIOError:
            return
        except OSError:  # it does not read (EPIPE): nothing more to give
            written = len(self.pending)
        self.pending = self.pending[written:]
        if not self.pending:
            self.selector.unregister(stream)
            stream.close()

    def _drain(self, stream: IO[bytes]) -> None:
        try:
            chunk = os.read(stream.fileno(), self.CHUNK)
        except BlockingIOError:
            return
        if not chunk:
            self.selector.unregister(stream)
            return
        buffer = self.kept[stream]
        room = max(self.limit - len(buffer), 0)
        buffer += chunk[:room]
        self.discarded += max(len(chunk) - room, 0)


def _run(argv: list[str], timeout: float, env: dict[str, str] | None = None) -> Finished:
    try:
        return run_capped(argv, max(timeout, 0.5), env=env)
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
    """start_command / stop_command / status_command (non-systemd setups, the test bed).

    A command may be missing when the action does not need it (stop and monitor run
    without start_command): running one that is missing is a ServiceError."""

    def __init__(self, start: str | None, stop: str | None, status: str | None) -> None:
        self.start_argv, self.stop_argv = _split(start), _split(stop)
        self.status_argv = _split(status)
        first = (self.start_argv or self.status_argv or self.stop_argv or ["?"])[0]
        self.description = f"command {first}"

    @staticmethod
    def _need(argv: list[str], name: str) -> list[str]:
        if not argv:
            raise ServiceError(f"parameter '{name}' is not set")
        return argv

    def running(self) -> bool:
        return _run(self._need(self.status_argv, "status_command"), 10).returncode == 0

    def start(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        done = _run(self._need(self.start_argv, "start_command"), timeout)
        if done.returncode != 0:
            raise ServiceError(f"start_command exited {done.returncode}: {_last_line(done.stderr)}")
        if not _wait(self.running, deadline):
            raise ServiceError("status_command does not report nova-compute running")

    def stop(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        graceful_deadline = time.monotonic() + timeout * 0.7
        _run(self._need(self.stop_argv, "stop_command"), timeout * 0.7)
        if _wait(lambda: not self.running(), graceful_deadline):
            return
        # Forceful: stop_command again, told to kill (documented in the parameter's help).
        LOG.warning("nova-compute still runs after a graceful stop; forcing it")
        _run(
            self.stop_argv,
            deadline - time.monotonic(),
            env=dict(os.environ, NOVA_HA_STOP_FORCE="1"),
        )
        if not _wait(lambda: not self.running(), deadline):
            raise ServiceError("nova-compute is still running after stop_command")


def _split(command: str | None) -> list[str]:
    try:
        return shlex.split(command or "")
    except ValueError:
        return []


def _last_line(output: bytes) -> str:
    lines = output.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
    return log.REDACTOR.redact(lines[0])[:200]


class SystemdService:
    """nova-compute's unit. Several candidate units (none installed where find_unit looks):
    running while any of them is active, stop stops the active ones, start is refused."""

    def __init__(self, *units: str) -> None:
        self.units = units
        self.unit = units[0]
        self.description = f"systemd unit {' or '.join(units)}"

    def _active(self) -> list[str]:
        return [
            unit
            for unit in self.units
            if _run(["systemctl", "is-active", "--quiet", unit], 10).returncode == 0
        ]

    def running(self) -> bool:
        return bool(self._active())

    def start(self, timeout: float) -> None:
        if len(self.units) != 1:
            raise ServiceError(f"no {self.description} installed")
        done = _run(["systemctl", "start", self.unit], timeout)
        if done.returncode != 0:
            raise ServiceError(f"systemctl start {self.unit} exited {done.returncode}")

    def stop(self, timeout: float) -> None:
        active = self._active()
        if not active:
            return
        done = _run(["systemctl", "stop", *active], timeout * 0.8)
        if done.returncode == 0 and not self.running():
            return
        LOG.warning("%s still active after stop; sending SIGKILL", " ".join(active))
        _run(["systemctl", "kill", "--signal=SIGKILL", *active], timeout * 0.2)
        if self.running():
            raise ServiceError(f"{' '.join(active)} still active")


def _unit_name(unit: str) -> str:
    return unit if "." in unit else unit + ".service"


def find_unit(preferred: str | None) -> str | None:
    candidates = (preferred,) if preferred else DEFAULT_UNITS
    for unit in candidates:
        name = _unit_name(unit)
        if any(os.path.exists(os.path.join(d, name)) for d in _UNIT_DIRS):
            return name
    return None


# What each action needs: start all three commands, stop the stop and status commands (it
# checks the outcome), monitor the status command.
ROLES = ("start", "stop", "status")


def problems(
    start: str | None,
    stop: str | None,
    status: str | None,
    unit: str | None,
    roles: Sequence[str] = ROLES,
) -> list[tuple[str, str]]:
    """('configured'|'installed', message) for what makes the service unusable for `roles`.

    With commands, each role needs its command. With systemd, systemctl is needed for
    everything, an installed unit only to start: systemctl checks and stops a unit by name."""
    commands = {"start": start, "stop": stop, "status": status}
    if any(commands.values()):
        return [
            found
            for role in roles
            if (found := _command_problem(f"{role}_command", commands[role])) is not None
        ]
    if shutil.which("systemctl") is None:
        return [
            ("installed", "systemctl not found: set start_command, stop_command and status_command")
        ]
    if "start" in roles and find_unit(unit) is None:
        wanted = unit or " or ".join(DEFAULT_UNITS)
        return [("installed", f"systemd unit {wanted} not found (parameter 'systemd_unit')")]
    return []


def _command_problem(name: str, command: str | None) -> tuple[str, str] | None:
    """What makes parameter `name`'s command unusable (unset, unparsable, not executable)."""
    if not command:
        return ("configured", f"parameter '{name}' is required with the other *_command parameters")
    try:
        argv = shlex.split(command)
    except ValueError as err:
        return ("configured", f"parameter '{name}': {err}")
    if not argv or shutil.which(argv[0]) is None:
        return (
            "installed",
            f"parameter '{name}': {argv[0] if argv else ''!r} is not an executable",
        )
    return None


def systemd_absent() -> bool:
    """No systemd on this node (sd_booted(3)) and no systemctl: no unit can run here."""
    return shutil.which("systemctl") is None and not os.path.isdir("/run/systemd/system")


def uses_commands(start: str | None, stop: str | None, status: str | None) -> bool:
    return bool(start or stop or status)


def make(start: str | None, stop: str | None, status: str | None, unit: str | None) -> Service:
    """The service as configured. With commands, a missing one fails only when used."""
    if uses_commands(start, stop, status):
        return CommandService(start, stop, status)
    found = find_unit(unit)
    if found is not None:
        return SystemdService(found)
    return SystemdService(*((_unit_name(unit),) if unit else DEFAULT_UNITS))
