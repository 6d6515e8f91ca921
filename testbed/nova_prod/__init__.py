"""Drive the production-shaped Nova bed (``bed.py``) from the test suite and benchmarks.

Imported by the suite's own venv (stdlib only here). The same surface as ``NovaBox`` where
it makes sense, so that a benchmark or a contract test can take either::

    from testbed.nova_prod import NovaProd

    with NovaProd(hosts=("host1", "host2", "host3", "host4")) as cloud:
        ids = cloud.create_servers("host1", 20)   # ACTIVE on host1
        cloud.set_rebuild_delay(2.0, host="host2")  # per-compute work, emulated
        cloud.crash("host1")                       # kill -9 of host1's nova-compute
        ...                                        # evacuate through the real API
        cloud.start("host1")
        print(cloud.rss_kb())                      # every process of the bed

Not here (the box has them): the compute API request log and "API down" (nova-api is a
real gunicorn; use its log, ``logs/nova-api.log``).
"""

from __future__ import annotations

import os
import signal
import tempfile
from typing import Any

from testbed.nova_box import REPO_ROOT, NovaBox, NovaBoxError, venv_python

DEBIAN_BINARIES = (
    "/usr/sbin/mariadbd",
    "/usr/bin/mariadb-install-db",
    "/usr/bin/epmd",
    "/usr/lib/rabbitmq/bin/rabbitmq-server",
)


def missing_debian_packages() -> list[str]:
    """The Debian packages the bed needs and this machine lacks."""
    missing = []
    if not all(os.access(p, os.X_OK) for p in DEBIAN_BINARIES[:2]):
        missing.append("mariadb-server")
    if not all(os.access(p, os.X_OK) for p in DEBIAN_BINARIES[2:]):
        missing.append("rabbitmq-server")
    return missing


class NovaProd(NovaBox):
    """Nova 34 as deployed in production: separate services, MariaDB, RabbitMQ."""

    def __init__(
        self,
        hosts=("host1", "host2", "host3"),
        state_dir=None,
        venv=None,
        boot_timeout: float = 300,
        report_interval: int = 1,
        service_down_time: int = 6,
        api_workers: int = 2,
        placement_workers: int = 2,
        service_workers: int = 2,
        debug: bool = False,
        keep_state_dir=None,
    ) -> None:
        own = state_dir is None
        if own:
            state_dir = tempfile.mkdtemp(prefix="nova-prod-")
        if keep_state_dir is None:
            keep_state_dir = os.environ.get("NOVA_PROD_KEEP") == "1"
        super().__init__(
            hosts=hosts,
            state_dir=state_dir,
            venv=venv,
            boot_timeout=boot_timeout,
            report_interval=report_interval,
            service_down_time=service_down_time,
            debug=debug,
            keep_state_dir=keep_state_dir,
        )
        self._own_state_dir = own
        self.workers = {"api": api_workers, "placement": placement_workers}
        self.service_workers = service_workers
        self.log_path = os.path.join(self.state_dir, "logs")
        self.stderr_path = os.path.join(self.state_dir, "bed.stderr")

    def _command(self):
        cmd = [
            venv_python(self.venv),
            "-m",
            "testbed.nova_prod.bed",
            *self._shared_args(),
            "--api-workers",
            str(self.workers["api"]),
            "--placement-workers",
            str(self.workers["placement"]),
            "--service-workers",
            str(self.service_workers),
        ]
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "VIRTUAL_ENV")}
        env["PYTHONPATH"] = REPO_ROOT
        return cmd, env

    def _cwd(self):
        return REPO_ROOT

    def boot(self):
        missing = missing_debian_packages()
        if missing:
            raise NovaBoxError(f"Debian packages missing: {' '.join(missing)}")
        super().boot()
        self.phases = self.ready.get("phases", {})
        self.control_url = f"http://127.0.0.1:{self.port}/_testbed"
        return self

    def stop(self, timeout=60):
        """SIGTERM the control process (it stops every service by PID), then SIGKILL the
        process group of any service it left behind (its PID files)."""
        pids = self._service_pids()
        super().stop(timeout=timeout)
        for pid in pids:
            if self._ours(pid):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def _service_pids(self) -> list[int]:
        folder = os.path.join(self.state_dir, "pids")
        pids = []
        for name in os.listdir(folder) if os.path.isdir(folder) else ():
            try:
                with open(os.path.join(folder, name)) as f:
                    pids.append(int(f.read().strip()))
            except (OSError, ValueError):
                continue
        return pids

    def _ours(self, pid: int) -> bool:
        """The process is one the bed started: its HOME is in the bed's state dir."""
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            return False
        return any(v.startswith(b"HOME=" + self.state_dir.encode()) for v in env)

    # -- what differs from the box -------------------------------------------
    def set_rebuild_delay(self, seconds: float, host: str | None = None) -> dict:
        """Every spawn (build, rebuild, evacuation) on ``host`` (None: every host without
        a delay of its own; that also clears the per-host ones) waits ``seconds`` first."""
        return self._set_delay("rebuild_delay", seconds, host)

    def set_power_on_delay(self, seconds: float, host: str | None = None) -> dict:
        """Every power-on (server start) on ``host`` (None: all) waits ``seconds`` first."""
        return self._set_delay("power_on_delay", seconds, host)

    def _set_delay(self, what: str, seconds: float, host: str | None) -> dict:
        seconds = float(seconds)
        if not 0 <= seconds <= 3600:
            raise ValueError(f"{what} must be in [0, 3600] s, not {seconds}")
        return self.control("POST", f"/{what}", {"seconds": seconds, "host": host})

    def rebuild_delay(self, host: str | None = None) -> float:
        return self.control("GET", "/rebuild_delay", {"host": host})["seconds"]

    def reset_faults(self) -> None:
        self.set_rebuild_delay(0)
        self.set_power_on_delay(0)

    def request_log(self) -> Any:
        raise NotImplementedError("the production-shaped bed has no request log")

    def set_api_down(self, down: bool = True, mode: str = "503") -> Any:
        raise NotImplementedError("the production-shaped bed cannot take nova-api down")

    def processes(self) -> set[int]:
        """Every process of the bed: the control process and its descendants."""
        return _descendants(self.pid) | {self.pid}

    def rss_kb(self) -> int:
        """Resident memory of every process of the bed."""
        total = 0
        for pid in self.processes():
            try:
                with open(f"/proc/{pid}/status") as f:
                    total += next(
                        (int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0
                    )
            except OSError:
                continue
        return total


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found
