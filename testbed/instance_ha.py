"""The instance monitor against real libvirt, QEMU and Nova: the process and what a user
checks about it (tests/test_instance_e2e.py, benchmarks/instance_ha.py).

``MonitorProcess`` runs ``python -m nova_ha.instance serve ALIVE_FILE`` as NovaInstanceHA
does (parameters as one JSON line on stdin, ``NOVA_HA_NODE``), with a file-backed CIB
(``CIB_file``: the store the monitor records its outcomes in, shared with the test), its
journal in a directory of its own, and ``notify_command`` writing every event to a file
(testbed/event_sink.py). Its log is one file across restarts.

``NovaView`` reads what a user sees in Nova (testbed.observe, python-novaclient): a server's
status, task and instance actions.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from testbed.cib import write_cib
from testbed.observe import Observer
from testbed.util import wait_for

ROOT = Path(__file__).resolve().parent.parent
EVENT_SINK = ROOT / "testbed" / "event_sink.py"
JOURNAL = "instance-journal.json"  # nova_ha.instance.monitor.JOURNAL_NAME


def box_params(box: Any) -> dict[str, str]:
    """The os_* parameters that reach a NovaBox (or a NovaProd) as its admin."""
    return {
        "os_auth_url": box.auth_url,
        "os_username": box.username,
        "os_password": box.password,
        "os_project_name": box.project_name,
        "os_user_domain_name": box.user_domain_name,
        "os_project_domain_name": box.project_domain_name,
        "os_region_name": box.region_name,
        "os_interface": "public",
    }


class MonitorProcess:
    """One node's instance monitor, started and stopped by PID."""

    def __init__(self, workdir: Path, node: str, params: Mapping[str, str]) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.node = node
        self.cib_file = write_cib(self.workdir / "cib.xml", [node])
        self.events_file = self.workdir / "events.jsonl"
        self.log_file = self.workdir / "monitor.log"
        self.state_dir = self.workdir / "state"
        self.alive_file = self.workdir / "alive"
        self.params = {
            "state_dir": str(self.state_dir),
            "notify_command": f"{sys.executable} {EVENT_SINK} {self.events_file}",
            **params,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    # -- the process --

    def start(self, timeout: float = 30.0) -> float:
        """Start it; seconds until it is connected to libvirt (its scan done)."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        began, mark = time.monotonic(), self.log_size()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(ROOT),
            "NOVA_HA_NODE": self.node,
            "CIB_file": self.cib_file,
        }
        if "NOVA_HA_TOKEN_DIR" in os.environ:
            env["NOVA_HA_TOKEN_DIR"] = os.environ["NOVA_HA_TOKEN_DIR"]
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "nova_ha.instance", "serve", str(self.alive_file)],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd="/",
            )
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(self.params).encode() + b"\n")
        self.proc.stdin.close()
        wait_for(
            lambda: "connected to" in self.log(since=mark) or self.proc.poll() is not None,
            timeout,
            what="the monitor connected to libvirt",
        )
        assert self.proc.poll() is None, f"the monitor exited:\n{self.log(since=mark)}"
        return time.monotonic() - began

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would end it."""
        self._end(signal.SIGKILL, 10)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (SIGKILL after `timeout`); its exit code."""
        return self._end(signal.SIGTERM, timeout)

    def _end(self, sig: int, timeout: float) -> int | None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return None if proc is None else proc.returncode
        os.kill(proc.pid, sig)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            return proc.wait(10)

    # -- what it leaves --

    def log_size(self) -> int:
        return self.log_file.stat().st_size if self.log_file.exists() else 0

    def log(self, since: int = 0) -> str:
        if not self.log_file.exists():
            return ""
        with open(self.log_file, "rb") as log:
            log.seek(since)
            return log.read().decode(errors="replace")

    def events(
        self, kind: str | None = None, server: str | None = None, after: float = 0.0
    ) -> list[dict]:
        """The events notify_command received, oldest first: of a kind, of a server, sent
        after an epoch, when asked."""
        if not self.events_file.exists():
            return []
        found = [json.loads(line) for line in self.events_file.read_text().splitlines()]
        return [
            e
            for e in found
            if (kind is None or e["event"] == kind)
            and (server is None or e.get("server") == server)
            and e["epoch"] >= after
        ]

    def wait_event(self, kind: str, server: str, after: float, timeout: float) -> dict:
        """The first `kind` event of `server` sent after `after` (epoch)."""
        return wait_for(
            lambda: (self.events(kind, server, after) or [None])[0],
            timeout,
            what=f"event {kind} for server {server}",
        )

    def store(self) -> Any:
        from nova_ha.lib.state import CibStateStore

        return CibStateStore(self.cib_file)

    def history(self, server: str | None = None) -> list[Any]:
        """This node's history entries (those naming `server`)."""
        entries = self.store().get(self.node).history
        return [e for e in entries if server is None or e.detail.startswith(server)]

    def journal(self) -> dict:
        path = self.state_dir / JOURNAL
        return json.loads(path.read_text()) if path.exists() else {"pending": [], "restarts": {}}

    def pending(self) -> list[str]:
        return [p["server_id"] for p in self.journal()["pending"]]

    def rss_kb(self) -> int:
        with open(f"/proc/{self.pid}/status") as status:
            line = next(line for line in status if line.startswith("VmRSS:"))
        return int(line.split()[1])

    def cpu_seconds(self) -> float:
        """User + system CPU time of the monitor (threads included) so far."""
        with open(f"/proc/{self.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class NovaView(Observer):
    """What a user sees in Nova (python-novaclient, as the box's admin): `nova` is the
    client, for the user's own actions."""

    def __init__(self, box: Any) -> None:
        super().__init__(box)
        self.user_id = box.user_id

    def status(self, server_id: str) -> str:
        return self.server(server_id)["status"]

    def wait_status(self, server_id: str, status: str, timeout: float) -> None:
        def reached() -> bool:
            server = self.server(server_id)
            return server["status"] == status and not server["task"]

        wait_for(reached, timeout, interval=0.5, what=f"server {server_id} {status}")

    def actions(self, server_id: str, since: float = 0.0) -> list[tuple[str, str | None]]:
        """(action, user_id) of the server's instance actions started after `since` (epoch),
        oldest first: user_id None for Nova's own (its power-state sync)."""
        found = []
        for action in self.nova.instance_action.list(server_id):
            started = datetime.fromisoformat(action.start_time).replace(tzinfo=UTC)
            # Nova keeps whole seconds: an action in the second of `since` counts.
            if started.timestamp() >= int(since):
                found.append((started.timestamp(), action.action, action.user_id))
        return [(name, user) for _, name, user in sorted(found)]
