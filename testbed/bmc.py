"""A BMC simulator for tests, built on pyghmi's ``pyghmi.ipmi.bmc.Bmc``.

It runs in a daemon thread of the test process, with its own UDP socket and receive
loop. It deliberately does not use pyghmi's process-wide IO thread: that thread and its
socket list are shared with the pyghmi *client* under test in the same process, and a
server socket in it would let the client's thread run server code (and vice versa) and,
once the server socket is closed, can kill the IO thread. pyghmi is used only for the
protocol: channel capabilities, RAKP, session crypto and command handling.

Power changes are modelled as on real hardware: the chassis control request is
acknowledged at once, and the state flips later, after ``off_delay``/``on_delay`` and
after the ``on_power_off``/``on_power_on`` callback has returned (so a test bed whose
callback kills a node's processes never shows "off" while they still run).
"""

from __future__ import annotations

import collections
import logging
import os
import select
import socket
import struct
import threading
import time
import traceback
import uuid
from collections.abc import Callable

from pyghmi.ipmi import bmc as pyghmi_bmc
from pyghmi.ipmi.private import serversession
from pyghmi.ipmi.private import session as pyghmi_session

__all__ = ["BmcSim", "PowerModel"]

log = logging.getLogger(__name__)

# IPMI completion code sent for power commands while ``refuse`` is set:
# 0xD5 "command not supported in present state".
REFUSE_CODE = 0xD5

# RMCP+ payload types (IPMI 2.0 table 13-16) and status codes (table 13-15).
_PT_IPMI = 0x00
_PT_OPEN_REQ = 0x10
_PT_OPEN_RSP = 0x11
_PT_RAKP1 = 0x12
_PT_RAKP2 = 0x13
_PT_RAKP3 = 0x14
_RMCP_NO_CIPHER_MATCH = 0x11
_RMCP_UNAUTHORIZED_NAME = 0x0D

_IDLE_SESSION = 300.0  # forget sessions a client never closed after this long


class OnModel:
    """An attribute of a simulator that lives on its PowerModel (`self._model`): BmcSim and
    IpmiSim expose the same power state, logs, callbacks and delays."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: object, owner: type | None = None) -> object:
        return self if obj is None else getattr(obj._model, self.name)

    def __set__(self, obj: object, value: object) -> None:
        setattr(obj._model, self.name, value)


class OnPowerModel:
    """What a simulator keeps on its PowerModel (`self._model`): power state, power log,
    callbacks and delays (BmcSim and IpmiSim alike)."""

    power_state = OnModel()
    power_log = OnModel()
    callback_errors = OnModel()
    on_power_off = OnModel()
    on_power_on = OnModel()
    off_delay = OnModel()
    on_delay = OnModel()


class PowerModel:
    """Chassis power state shared by the simulators: state, logs, delays, callbacks.

    ``request(target)`` queues a change; a worker thread applies queued changes in order:
    wait the delay, run the callback, then flip the state and append to ``power_log``.
    """

    def __init__(
        self,
        name: str,
        power_state: str = "on",
        on_power_off: Callable[[], object] | None = None,
        on_power_on: Callable[[], object] | None = None,
        on_state: Callable[[str], object] | None = None,
    ) -> None:
        if power_state not in ("on", "off"):
            raise ValueError(f"power_state must be 'on' or 'off', not {power_state!r}")
        self.name = name
        self.on_power_off = on_power_off
        self.on_power_on = on_power_on
        self.off_delay = 0.0
        self.on_delay = 0.0
        # (time.time(), "off"|"on") appended when the state *became* off/on.
        self.power_log: list[tuple[float, str]] = []
        # (time.time(), what) for every request seen: "status", "off", "on", ...
        self.requests: list[tuple[float, str]] = []
        self.callback_errors: list[BaseException] = []
        self._state = power_state
        self._on_state = on_state  # lets a subclass mirror the state elsewhere
        self._cond = threading.Condition()
        self._queue: collections.deque[str] = collections.deque()
        self._busy = False
        self._stopping = threading.Event()
        self._worker: threading.Thread | None = None

    @property
    def power_state(self) -> str:
        return self._state

    @power_state.setter
    def power_state(self, value: str) -> None:
        """Set the state directly: no callback, no power_log entry (test set-up)."""
        if value not in ("on", "off"):
            raise ValueError(f"power_state must be 'on' or 'off', not {value!r}")
        with self._cond:
            self._set(value)

    def record(self, what: str, at: float | None = None) -> None:
        with self._cond:
            self.requests.append((time.time() if at is None else at, what))

    def count(self, what: str) -> int:
        """How many requests named ``what`` were seen."""
        with self._cond:
            return sum(1 for _, w in self.requests if w == what)

    def request(self, *targets: str) -> None:
        with self._cond:
            self._queue.extend(targets)
            self._cond.notify_all()

    def wait_for(self, state: str, timeout: float = 5.0) -> bool:
        """Wait until the state is ``state`` and no change is pending."""
        end = time.monotonic() + timeout
        with self._cond:
            while self._state != state or self._queue or self._busy:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def _set(self, value: str) -> None:
        self._state = value
        if self._on_state is not None:
            self._on_state(value)
        self._cond.notify_all()

    def start_worker(self) -> None:
        self._stopping.clear()
        self._worker = threading.Thread(
            target=self._work, name=f"bmcsim-power-{self.name}", daemon=True
        )
        self._worker.start()

    def stop_worker(self) -> None:
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=5)
            self._worker = None

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping.is_set():
                    self._cond.wait()
                if self._stopping.is_set():
                    return
                target = self._queue.popleft()
                self._busy = True
            try:
                delay = self.off_delay if target == "off" else self.on_delay
                if delay > 0 and self._stopping.wait(delay):
                    return
                if self._state == target:
                    continue  # e.g. off while already off: nothing changes
                callback = self.on_power_off if target == "off" else self.on_power_on
                if callback is not None:
                    try:
                        callback()
                    except BaseException as exc:  # the power still changes
                        self.callback_errors.append(exc)
                        log.error(
                            "%s: power %s callback failed:\n%s",
                            self.name,
                            target,
                            traceback.format_exc(),
                        )
                with self._cond:
                    self._set(target)
                    self.power_log.append((time.time(), target))
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()


class _SimSession(serversession.ServerSession):
    """pyghmi's server session with two gaps closed: an unknown user gets an RAKP2 error
    (pyghmi stays silent, so clients time out instead of learning the name is wrong),
    and a refused privilege level gets an answer instead of an AttributeError."""

    def _got_rakp1(self, data: bytearray) -> None:
        namelen = data[27] if len(data) > 27 else 0
        name = bytes(data[28 : 28 + namelen]).decode("utf-8", "replace")
        if namelen == 0 or self.authdata.get(name) is None:
            reply = bytes([data[0], _RMCP_UNAUTHORIZED_NAME, 0, 0]) + bytes(self.clientsessionid)
            self.socket.sendto(_rmcpplus_packet(_PT_RAKP2, reply), self.sockaddr)
            return
        # pyghmi's Set Session Privilege handler reads clientpriv even when it refuses a
        # level; give it a value so a refusal answers instead of raising.
        self.clientpriv = data[24] & 0x0F
        super()._got_rakp1(data)

    def close_server_session(self) -> None:
        self.bmc.sim._forget(bytes(self.managedsessionid))


class _SimBmc(pyghmi_bmc.Bmc):
    """pyghmi's Bmc wired to a BmcSim. IpmiServer.__init__ is not called: it would put
    the socket into pyghmi's shared client IO loop (see module docstring)."""

    def __init__(self, sim: BmcSim, sock: socket.socket) -> None:
        self.sim = sim
        self.authdata = {sim.username: sim.password}
        self.serversocket = sock
        self.port = sock.getsockname()[1]
        self.uuid = uuid.uuid4()
        self.kg = None
        self.timeout = 60
        self.pktqueue: collections.deque = collections.deque()
        # Get Device ID answers (send_device_id).
        self.deviceid = 0x20
        self.revision = 1
        self.firmwaremajor = 1
        self.firmwareminor = 0
        self.ipmiversion = 2
        self.additionaldevices = 0
        self.mfgid = 0
        self.prodid = 0
        # Get Channel Authentication Capabilities answer: completion code 0, channel 1,
        # "IPMI 2.0 extended data", non-null user names enabled, IPMI 2.0 supported,
        # no OEM data.
        self.authcap = bytes([0x00, 0x01, 0x80, 0x04, 0x02, 0x00, 0x00, 0x00, 0x00])

    def get_power_state(self) -> str:
        self.sim._model.record("status")
        return self.sim.power_state

    def get_chassis_status(self, session: _SimSession) -> None:
        if self.sim.status_error is not None:
            self.sim._model.record("status")
            session.send_ipmi_response(code=self.sim.status_error)
            return
        super().get_chassis_status(session)

    def _control(self, what: str, *targets: str) -> int:
        model = self.sim._model
        model.record(what)
        if self.sim.refuse:
            return REFUSE_CODE
        model.request(*targets)
        return 0

    def power_off(self) -> int:
        return self._control("off", "off")

    def power_on(self) -> int:
        return self._control("on", "on")

    def power_cycle(self) -> int:
        return self._control("cycle", "off", "on")

    def power_reset(self) -> int:
        return self._control("reset", "off", "on")

    def power_shutdown(self) -> int:
        return self._control("soft", "off")

    def get_system_guid(self) -> uuid.UUID:
        return self.uuid


def _rmcpplus_packet(payload_type: int, payload: bytes) -> bytes:
    """An unauthenticated RMCP+ packet (session id 0, sequence 0)."""
    return (
        b"\x06\x00\xff\x07"  # RMCP: version, reserved, seq (no ack), class IPMI
        + bytes([0x06, payload_type])  # auth type RMCP+, payload type
        + struct.pack("<IIH", 0, 0, len(payload))
        + payload
    )


class BmcSim(OnPowerModel):
    """A BMC on UDP ``address``:``port`` (port 0 picks a free one at start()).

    Flags that tests may flip at any time: ``unreachable`` (drop every packet, a dead
    BMC), ``refuse`` (power commands get IPMI error REFUSE_CODE), ``status_error``
    (completion code for Get Chassis Status, None for normal), ``off_delay`` and
    ``on_delay`` (seconds between the acknowledged command and the state change).
    Callbacks take no arguments and run in the simulator's power thread.
    Bind ``address="0.0.0.0"`` to be reachable on every local address (e.g. a veth
    into a network namespace); ``address`` then stays "0.0.0.0", connect to a real one.
    """

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
        self.name = name
        self.address = address
        self._port = port
        self.username = username
        self.password = password
        self.unreachable = False
        self.refuse = False
        self.status_error: int | None = None
        self._model = PowerModel(name, power_state, on_power_off, on_power_on)
        self._sock: socket.socket | None = None
        self._bmc: _SimBmc | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        # By the BMC-side session id, as real BMCs do: one client address may hold
        # several sessions (pyghmi shares one UDP socket among its sessions).
        self._sessions: dict[bytes, tuple[_SimSession, float]] = {}
        self.dropped = 0  # packets ignored while unreachable

    # -- state shared with PowerModel ---------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    requests = OnModel()

    def count(self, what: str) -> int:
        return self._model.count(what)

    def wait_for(self, state: str, timeout: float = 5.0) -> bool:
        return self._model.wait_for(state, timeout)

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> BmcSim:
        if self._thread is not None:
            raise RuntimeError(f"{self.name}: already started")
        family, kind, proto, _, sockaddr = socket.getaddrinfo(
            self.address, self._port, 0, socket.SOCK_DGRAM
        )[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.bind(sockaddr)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._port = sock.getsockname()[1]
        self._bmc = _SimBmc(self, sock)
        self._stopping.clear()
        self._model.start_worker()
        self._thread = threading.Thread(target=self._serve, name=f"bmcsim-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._model.stop_worker()
        for sid in list(self._sessions):
            self._forget(sid)
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> BmcSim:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- packet handling ----------------------------------------------------------

    def _serve(self) -> None:
        sock = self._sock
        assert sock is not None
        while not self._stopping.is_set():
            try:
                ready, _, _ = select.select([sock], [], [], 0.1)
                if not ready:
                    continue
                data, addr = sock.recvfrom(4096)
            except OSError:
                continue
            if self.unreachable:
                self.dropped += 1
                continue
            try:
                self._dispatch(bytearray(data), addr)
            except Exception:  # one bad packet must not kill the BMC
                log.warning(
                    "%s: packet from %s failed:\n%s", self.name, addr, traceback.format_exc()
                )

    def _dispatch(self, data: bytearray, addr: tuple) -> None:
        assert self._bmc is not None and self._sock is not None
        # RMCP header: version 6, reserved, sequence 0xff, class 7 (IPMI).
        if len(data) < 16 or data[0] != 6 or data[2:4] != b"\xff\x07":
            return
        if data[4] != 0x06:  # IPMI 1.5 framing: only sessionless requests are served
            if bytes(data[9:13]) == bytes(4):
                self._bmc.sessionless_data(data, addr)
            return
        ptype = data[5] & 0x3F
        sid = bytes(data[6:10])
        if ptype == _PT_OPEN_REQ:
            self._open_session(data[16:], addr)
            return
        if ptype == _PT_IPMI and sid == bytes(4):
            self._bmc.sessionless_data(data, addr)
            return
        if ptype in (_PT_RAKP1, _PT_RAKP3):
            # Sent before the session exists: its id is in the payload, not the header.
            sid = bytes(data[20:24])
        entry = self._sessions.get(sid)
        if entry is None:
            return
        session = entry[0]
        self._sessions[sid] = (session, time.monotonic())
        # pyghmi itself drops packets whose source address is not the session's.
        session._handle_ipmi_packet(data, sockaddr=addr, qent=(data, addr, self._sock))

    def _open_session(self, request: bytearray, addr: tuple) -> None:
        """Accept only cipher suite 3 (RAKP-HMAC-SHA1, HMAC-SHA1-96, AES-CBC-128).

        pyghmi's server answers every Open Session Request with suite 3's algorithms
        but success status, so pyghmi's client, which proposes SHA-256 (suite 17)
        first, goes on with SHA-256 and dies with struct.error in RAKP. Refusing what
        we cannot do makes that client fall back to suite 3, as real BMCs make it."""
        assert self._bmc is not None and self._sock is not None
        if len(request) < 32:
            return
        algorithms = (request[12] & 0x3F, request[20] & 0x3F, request[28] & 0x3F)
        if algorithms != (1, 1, 1):
            reply = bytes([request[0], _RMCP_NO_CIPHER_MATCH, 0, 0]) + bytes(request[4:8])
            self._sock.sendto(_rmcpplus_packet(_PT_OPEN_RSP, reply), addr)
            return
        self._prune()
        session = _SimSession(
            self._bmc.authdata,
            self._bmc.kg,
            addr,
            self._sock,
            request,
            self._bmc.uuid,
            bmc=self._bmc,
        )
        # ServerSession registers itself in pyghmi's client routing table; this
        # simulator routes its own packets, so keep that table clean.
        self._unregister(addr)
        self._sessions[bytes(session.managedsessionid)] = (session, time.monotonic())

    def _unregister(self, addr: tuple) -> None:
        handlers = pyghmi_session.Session.bmc_handlers
        ports = handlers.get(addr)
        if ports is not None and ports.get(self._port) is not None:
            if isinstance(ports[self._port], serversession.ServerSession):
                del ports[self._port]
            if not ports:
                handlers.pop(addr, None)

    def _forget(self, sid: bytes) -> None:
        entry = self._sessions.pop(sid, None)
        if entry is not None:
            self._unregister(entry[0].sockaddr)

    def _prune(self) -> None:
        now = time.monotonic()
        for sid, (_, seen) in list(self._sessions.items()):
            if now - seen > _IDLE_SESSION:
                self._forget(sid)

    def __repr__(self) -> str:
        return (
            f"BmcSim({self.name!r}, {self.address}:{self._port}, {self.power_state}, "
            f"pid={os.getpid()})"
        )
