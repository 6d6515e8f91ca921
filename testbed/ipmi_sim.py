"""OpenIPMI's ``ipmi_sim`` as a second, independent BMC implementation for tests.

``IpmiSim`` writes a lan.conf, a one-BMC .emu file and a chassis-control script into a
temporary directory and runs ``ipmi_sim`` as a subprocess on ``address``:``port``.
Its public surface follows ``testbed.bmc.BmcSim``.

How power works here: ipmi_sim runs the chassis-control script for every Get Chassis
Status ("get power") and Chassis Control ("set power 0|1"). The script answers "get"
from a state file and, for "set", only appends the request to a requests file. A
watcher thread in this process reads that file and feeds a ``PowerModel`` (the same one
BmcSim uses), which applies the delay and callback and then writes the state file. So,
as with BmcSim, the BMC reports "off" only once the callback (e.g. killing a node's
processes) has returned. Every change is also appended to ``power.log`` in the directory.

``unreachable`` stops the process with SIGSTOP (SIGCONT to revive): packets then queue
unanswered in the kernel, like a hung BMC; they are answered late after SIGCONT.
``refuse`` makes the script fail "set" requests, which ipmi_sim reports as completion
code 0xFF. Note ipmitool needs ``-C 3`` against ipmi_sim; pyghmi needs nothing.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from testbed.bmc import OnPowerModel, PowerModel

__all__ = ["IpmiSim", "ipmi_sim_binary"]

_WATCH_INTERVAL = 0.01  # how often the requests file is read
_START_TIMEOUT = 10.0


def _checksum(data: bytes) -> int:
    return -sum(data) & 0xFF


def _caps_probe() -> bytes:
    """Get Channel Authentication Capabilities in sessionless IPMI 1.5 framing: used only
    to see that ipmi_sim answers on its port before start() returns."""
    header = bytes([0x20, 0x06 << 2])  # rsAddr BMC, netfn App
    body = bytes([0x81, 0x00, 0x38, 0x8E, 0x04])  # rqAddr, seq, cmd, channel e (+2.0), admin
    msg = header + bytes([_checksum(header)]) + body + bytes([_checksum(body)])
    # RMCP header, auth type none, sequence 0, session 0, length
    return b"\x06\x00\xff\x07" + bytes(9) + bytes([len(msg)]) + msg


_SCRIPT = """#!/bin/sh
# ipmi_sim chassis_control program, written by testbed/ipmi_sim.py.
# Called as: <script> <device> get power ...   or   <script> <device> set power 0|1 ...
dir='{dir}'
shift  # the device (MC address): there is only one
op="$1"; shift
case "$op" in
get)
    for parm in "$@"; do
        case "$parm" in
        power)
            echo "$(date +%s.%N) status" >> "$dir/requests"
            read -r v < "$dir/state"; echo "power:$v" ;;
        boot) echo "boot:default" ;;
        *) echo "no get for $parm"; exit 1 ;;
        esac
    done ;;
set)
    if [ -e "$dir/refuse" ]; then echo "refused (test flag)"; exit 1; fi
    while [ $# -ge 2 ]; do
        parm="$1"; val="$2"; shift 2
        case "$parm" in
        power) if [ "$val" = 1 ]; then what=on; else what=off; fi ;;
        reset) what=reset ;;
        shutdown) what=soft ;;
        *) continue ;;  # boot device, identify: accepted, not modelled
        esac
        echo "$(date +%s.%N) $what" >> "$dir/requests"
    done ;;
*) exit 1 ;;
esac
exit 0
"""

_EMU = """# One BMC (IPMB 0x20) and nothing else.
mc_setbmc 0x20
mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02
mc_enable 0x20
"""

_LAN_CONF = """# lan.conf written by testbed/ipmi_sim.py
name "{name}"
set_working_mc 0x20
  startlan 1
    addr {address} {port}
    priv_limit admin
    allowed_auths_callback md5
    allowed_auths_user md5
    allowed_auths_operator md5
    allowed_auths_admin md5
    guid {guid}
  endlan
  chassis_control "{script} 0x20"
  user 2 true "{username}" "{password}" admin 10 md5
"""


def ipmi_sim_binary() -> str | None:
    return shutil.which("ipmi_sim")


class IpmiSim(OnPowerModel):
    """ipmi_sim on ``address``:``port`` (port 0: a free port is picked at start())."""

    def __init__(
        self,
        name: str,
        address: str = "127.0.0.1",
        port: int = 0,
        username: str = "admin",
        password: str = "bmcpass",
        on_power_off: Callable[[], object] | None = None,
        on_power_on: Callable[[], object] | None = None,
        power_state: str = "on",
    ) -> None:
        for label, value in (("name", name), ("username", username), ("password", password)):
            # They are written into lan.conf between double quotes: keep them plain.
            if any(c in value for c in "\"'\\\n $`"):
                raise ValueError(f"{label} must not contain quotes, spaces or shell syntax")
        if len(password) > 20 or len(username) > 16:
            raise ValueError("IPMI allows 16-byte user names and 20-byte passwords")
        self.name = name
        self.address = address
        self._port = port
        self.username = username
        self.password = password
        self._model = PowerModel(
            name, power_state, on_power_off, on_power_on, on_state=self._write_state
        )
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._watcher: threading.Thread | None = None
        self._stopping = threading.Event()
        self._unreachable = False
        self._read_lock = threading.Lock()
        self._offset = 0
        self._pending = b""

    # -- public surface shared with BmcSim -----------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def directory(self) -> Path | None:
        return self._dir

    @property
    def requests(self) -> list[tuple[float, str]]:
        self._read_requests()
        return self._model.requests

    @property
    def refuse(self) -> bool:
        return self._dir is not None and (self._dir / "refuse").exists()

    @refuse.setter
    def refuse(self, value: bool) -> None:
        if self._dir is None:
            raise RuntimeError("start() first")
        flag = self._dir / "refuse"
        if value:
            flag.touch()
        else:
            flag.unlink(missing_ok=True)

    @property
    def unreachable(self) -> bool:
        return self._unreachable

    @unreachable.setter
    def unreachable(self, value: bool) -> None:
        if self._proc is None:
            raise RuntimeError("start() first")
        os.kill(self._proc.pid, signal.SIGSTOP if value else signal.SIGCONT)
        self._unreachable = value

    def count(self, what: str) -> int:
        self._read_requests()
        return self._model.count(what)

    def wait_for(self, state: str, timeout: float = 5.0) -> bool:
        self._read_requests()
        return self._model.wait_for(state, timeout)

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> IpmiSim:
        if self._proc is not None:
            raise RuntimeError(f"{self.name}: already started")
        binary = ipmi_sim_binary()
        if binary is None:
            raise FileNotFoundError("ipmi_sim not found (Debian package openipmi)")
        self._dir = Path(tempfile.mkdtemp(prefix=f"ipmisim-{self.name}-"))
        try:
            self._start(binary)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, binary: str) -> None:
        d = self._dir
        assert d is not None
        if self._port == 0:
            self._port = _free_udp_port(self.address)
        (d / "state-dir").mkdir()
        (d / "requests").touch()
        self._write_state(self._model.power_state)
        script = d / "chassis-control"
        script.write_text(_SCRIPT.format(dir=d))
        script.chmod(0o755)
        (d / "bmc.emu").write_text(_EMU)
        (d / "lan.conf").write_text(
            _LAN_CONF.format(
                name=self.name,
                address=self.address,
                port=self._port,
                guid=os.urandom(16).hex(),
                script=script,
                username=self.username,
                password=self.password,
            )
        )
        # setpriv (util-linux) execs ipmi_sim with a parent-death signal, so a test run
        # that dies without stop() leaves no BMC behind.
        setpriv = shutil.which("setpriv")
        prefix = [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []
        out = open(d / "ipmi_sim.out", "wb")  # closed below; the child keeps its copy
        try:
            self._proc = subprocess.Popen(
                # -n: no console on stdio; -p: no persistence (users, SEL... stay in
                # lan.conf); -s: state dir inside our temp dir, never /var/lib.
                [
                    *prefix,
                    binary,
                    "-c",
                    str(d / "lan.conf"),
                    "-f",
                    str(d / "bmc.emu"),
                    "-s",
                    str(d / "state-dir"),
                    "-n",
                    "-p",
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=d,
                start_new_session=True,
            )
        finally:
            out.close()
        self._model.start_worker()
        self._stopping.clear()
        self._watcher = threading.Thread(
            target=self._watch, name=f"ipmisim-watch-{self.name}", daemon=True
        )
        self._watcher.start()
        self._wait_ready()

    def _wait_ready(self) -> None:
        assert self._proc is not None and self._dir is not None
        family = socket.AF_INET6 if ":" in self.address else socket.AF_INET
        target = "127.0.0.1" if self.address == "0.0.0.0" else self.address
        deadline = time.monotonic() + _START_TIMEOUT
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    out = (self._dir / "ipmi_sim.out").read_text(errors="replace")
                    raise RuntimeError(f"ipmi_sim exited with {self._proc.returncode}: {out}")
                try:
                    probe.sendto(_caps_probe(), (target, self._port))
                    if select.select([probe], [], [], 0.1)[0]:
                        probe.recvfrom(512)
                        return
                except OSError:  # ICMP port unreachable before ipmi_sim binds
                    time.sleep(0.05)
        raise RuntimeError(f"ipmi_sim did not answer on {target}:{self._port}")

    def stop(self) -> None:
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
            self._watcher = None
        self._model.stop_worker()
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                if self._unreachable:
                    os.kill(proc.pid, signal.SIGCONT)  # a stopped process can't die of TERM
                try:
                    proc.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=3)
        self._unreachable = False
        with self._read_lock:
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None
            self._offset, self._pending = 0, b""

    def __enter__(self) -> IpmiSim:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals ----------------------------------------------------------------

    def _write_state(self, state: str) -> None:
        if self._dir is None:
            return
        tmp = self._dir / "state.tmp"
        tmp.write_text("1\n" if state == "on" else "0\n")
        tmp.replace(self._dir / "state")  # atomic: the script never reads half a file
        with open(self._dir / "power.log", "a") as f:
            f.write(f"{time.time():.6f} {state}\n")

    def _watch(self) -> None:
        while not self._stopping.wait(_WATCH_INTERVAL):
            self._read_requests()

    def _read_requests(self) -> None:
        """Take in what the script appended since the last read (watcher, and callers
        of count()/requests, who must not see a list lagging behind the BMC)."""
        with self._read_lock:
            if self._dir is None:
                return
            try:
                with open(self._dir / "requests", "rb") as f:
                    f.seek(self._offset)
                    chunk = f.read()
            except OSError:
                return
            self._offset += len(chunk)
            self._pending += chunk
            *lines, self._pending = self._pending.split(b"\n")
            for line in lines:
                self._handle(line.decode(errors="replace"))

    def _handle(self, line: str) -> None:
        parts = line.split()
        if len(parts) != 2:
            return
        stamp, what = float(parts[0]), parts[1]
        self._model.record(what, at=stamp)
        targets = {"off": ("off",), "on": ("on",), "soft": ("off",), "reset": ("off", "on")}
        if what in targets:
            self._model.request(*targets[what])

    def __repr__(self) -> str:
        return f"IpmiSim({self.name!r}, {self.address}:{self._port}, pid={self.pid})"


def _free_udp_port(address: str) -> int:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind((address, 0))
        return s.getsockname()[1]
