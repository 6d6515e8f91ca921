"""Child processes of the production-shaped bed: started in their own process group,
logged to a file, recorded by PID (``pids/NAME``) and stopped by PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def wait_for(what: str, check: Callable[[], bool], timeout: float, child: Child | None = None):
    """Poll ``check`` until true; fail naming ``what`` (and the child's log) otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if child is not None and child.proc.poll() is not None:
            raise RuntimeError(
                f"{what}: {child.name} exited ({child.proc.returncode})\n{child.tail()}"
            )
        time.sleep(0.1)
    raise RuntimeError(
        f"{what}: not ready after {timeout:.0f}s" + (f"\n{child.tail()}" if child else "")
    )


class Child:
    """One process of the bed."""

    def __init__(
        self,
        name: str,
        cmd: Sequence[str],
        state_dir: str,
        env: Mapping[str, str] | None = None,
        stop_signal: int = signal.SIGTERM,
    ) -> None:
        self.name = name
        self.stop_signal = stop_signal
        self.log_path = os.path.join(state_dir, "logs", f"{name}.out")
        self.pid_path = os.path.join(state_dir, "pids", name)
        os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
        os.makedirs(os.path.dirname(self.pid_path), exist_ok=True)
        with open(self.log_path, "ab") as log:
            # Own session: a signal to its group reaches what it forked (workers, helpers).
            self.proc = subprocess.Popen(
                list(cmd),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env if env is not None else os.environ),
                cwd=state_dir,
                start_new_session=True,
            )
        self.pid = self.proc.pid
        with open(self.pid_path, "w") as f:
            f.write(f"{self.pid}\n")

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def tail(self, size: int = 3000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, os.path.getsize(self.log_path) - size))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def kill(self) -> None:
        """kill -9 of the process group, as a power loss would do it."""
        self._signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._forget()

    def stop(self, timeout: float = 20) -> None:
        """Its stop signal, then SIGKILL after ``timeout`` seconds."""
        if self.running:
            self._signal(self.stop_signal)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.proc.wait(timeout=30)
        self._signal(signal.SIGKILL)  # whatever of its group outlived it
        self._forget()

    def _signal(self, signum: int) -> None:
        try:
            os.killpg(self.pid, signum)
        except ProcessLookupError:
            pass

    def _forget(self) -> None:
        try:
            os.unlink(self.pid_path)
        except FileNotFoundError:
            pass
