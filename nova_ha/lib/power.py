"""IPMI chassis power control for fencing, on pyghmi's IPMI 2.0 (lanplus) client.

Only three IPMI requests are used: Get Chassis Status (netfn 0, cmd 1) and Chassis
Control off/on (netfn 0, cmd 2). They go through ``Command.raw_command`` rather than
``get_power``/``set_power``, because those first identify the vendor and may switch to
vendor-specific (even HTTPS) code paths that a fence action must not depend on.

pyghmi is imported lazily: stonith agents import this module on paths (metadata,
validate-all) that must stay fast and must work even where pyghmi is slow to import.

Bounds: pyghmi's own retry timers can keep a call going for about 30 s when a BMC stops
answering mid-session, and its login gives up after about 5 s. Every pyghmi call made
here therefore runs in a daemon worker thread that the caller waits on with a deadline:
the caller gets a PowerError in time, the abandoned worker finishes (or is dropped at
interpreter exit) on its own, and nothing can keep the process from exiting.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from nova_ha.errors import NovaHaError

__all__ = ["Bmc", "BmcConfig", "PowerError"]

_T = TypeVar("_T")

# IPMI privilege levels by the names fence_ipmilan uses for its privlvl option.
_PRIVLEVELS = {"callback": 1, "user": 2, "operator": 3, "administrator": 4}
# pyghmi cannot be told which cipher suite to use: it proposes 17 (SHA-256) and falls
# back to 3 (SHA-1) when the BMC refuses. Any other requested suite cannot be honoured.
_CIPHERS = (3, 17)

_NETFN_CHASSIS = 0x00
_CMD_CHASSIS_STATUS = 0x01
_CMD_CHASSIS_CONTROL = 0x02
_CONTROL = {"off": 0x00, "on": 0x01}
_PYGHMI_TIMEOUT = 0xFFFF  # "code" pyghmi puts in the reply it makes up when retries ran out

_ATTEMPTS = 2  # per request: the first try, then one more on a fresh session
# Status polls while confirming a change: quick at first (most BMCs switch within a
# fraction of a second), then every half second so a slow one isn't flooded.
_POLL_FIRST = 0.05
_POLL_MAX = 0.5
_MIN_LOGIN = 1.0  # don't start another login attempt with less time than this left
_CLOSE_TIMEOUT = 1.0  # logout is a courtesy to the BMC; never wait long for it
# A session idle longer than this is replaced rather than reused: BMCs drop idle
# sessions (often after 60 s) and pyghmi sends keepalives only while someone waits in
# its event loop; a request on a dropped session would burn most of its deadline.
_MAX_IDLE = 25.0


class PowerError(NovaHaError):
    """A power operation failed or its outcome is unknown. Never contains the password."""


@dataclass(frozen=True)
class BmcConfig:
    """How to reach one BMC. ``timeout`` bounds confirming a state change (power_timeout),
    ``wait`` is extra settle time after a confirmed change (power_wait), ``connect_timeout``
    bounds session setup plus one request."""

    address: str
    port: int = 623
    username: str = ""
    password: str = field(default="", repr=False)
    lanplus: bool = True
    # None, 3 or 17. pyghmi cannot be told a suite (it offers 17, then 3), so this only
    # turns away suites it cannot speak.
    cipher: int | None = None
    privlvl: str = "administrator"
    timeout: float = 20.0
    wait: float = 0.0
    connect_timeout: float = 10.0


class _Timeout(NovaHaError):
    pass


class _SilentBmc(PowerError):
    """No answer at all to session setup (as opposed to a refusal)."""


class _OwnKey(bytes):
    """The password passed to pyghmi as IPMI Kg, which is what pyghmi (and IPMI) use
    anyway when no Kg is set, but equal only to itself. pyghmi hands an existing live
    session to any new Command with equal address, user, password and Kg, process-wide;
    a fresh key per login means each login gets its own session (and, while another
    session to that BMC lives, its own socket), never an old, possibly stuck one."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return self is other

    def __ne__(self, other: object) -> bool:
        return self is not other

    __hash__ = object.__hash__


def _bounded(fn: Callable[[], _T], timeout: float, name: str) -> _T:
    """Run fn in a daemon thread and wait at most timeout seconds for it.

    A daemon thread (not a ThreadPoolExecutor, whose workers are joined at exit) so a
    call stuck in pyghmi's retry loop can neither block the caller nor the exit."""
    box: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller below
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, name=name, daemon=True).start()
    if not done.wait(max(timeout, 0.0)):
        raise _Timeout
    if "error" in box:
        raise box["error"]
    return box["value"]


def _retire(session: Any) -> None:
    """Stop a pyghmi session that an abandoned worker is still driving.

    Left alone, pyghmi goes on retrying and re-logging in with it for up to ~30 s:
    that opens sessions on a BMC that has few to give, and its timers wake pyghmi's
    shared IO thread late for sockets opened meanwhile (a new session's replies then
    wait up to a second). So mark it broken the way pyghmi does itself, minus the
    logout packet: with ``logged`` cleared first, that cannot block behind the stuck
    request. pyghmi internals, so best effort: at worst recovery is slower."""
    try:
        session.logged = 0
        session._mark_broken("given up after a timeout")
    except Exception:
        try:
            session.broken = True
        except Exception:
            pass


_WAIT_SLICE = 0.05  # longest wait for a reply between looks at the session's queue


def _bound_pyghmi_stalls() -> None:
    """pyghmi 1.6 can sit on a reply: a session waiting for its answer registers with the
    I/O thread only after sending; when the answer comes first, the I/O thread queues it for
    the session but finds nobody to wake, and the session sleeps out its retry timer
    (0.5-1 s) before it looks at its queue and sends the request again. Against the test
    bed's BMC, which answers within a millisecond, about one login in five stalled so.
    Waiting in slices lets the session look at its queue between them (its wait loop does,
    after every wake-up), bounding the stall to a slice. Only the session's reply wait
    (directed at its BMC, no event queue) is sliced; applied once per process and only
    where pyghmi's internals are as expected."""
    from pyghmi.ipmi.private import session as ipmi_session

    io_wait = getattr(ipmi_session, "_io_wait", None)
    if getattr(ipmi_session, "_nova_ha_sliced", False) or not callable(io_wait):
        return

    def sliced(timeout: float, myaddr: Any = None, evq: Any = None) -> Any:
        if myaddr is not None and evq is None:
            timeout = min(timeout, _WAIT_SLICE)
        return io_wait(timeout, myaddr, evq)

    ipmi_session._io_wait = sliced
    ipmi_session._nova_ha_sliced = True


def _sessions_keyed(key: _OwnKey) -> list[Any]:
    """pyghmi sessions made with our Kg object (a login we stopped waiting for)."""
    from pyghmi.ipmi.private import session as ipmi_session

    found = []
    try:
        for ports in list(ipmi_session.Session.bmc_handlers.values()):
            for candidate in list(ports.values()):
                if getattr(candidate, "kgo", None) is key:
                    found.append(candidate)
    except Exception:  # internals changed: nothing to retire then
        pass
    return found


def _endpoint(cfg: BmcConfig) -> str:
    host = f"[{cfg.address}]" if ":" in cfg.address else cfg.address
    return f"{host}:{cfg.port}"


def _power_state(data: bytes | bytearray) -> str | None:
    """Power state from a Get Chassis Status reply body, None if it cannot tell."""
    if len(data) < 1:
        return None
    return "on" if data[0] & 0x01 else "off"


class Bmc:
    """One BMC, driven over IPMI 2.0. Not thread-safe: use one instance per thread."""

    def __init__(self, cfg: BmcConfig) -> None:
        if not cfg.address:
            raise PowerError("BMC address is empty")
        if not 0 < cfg.port < 65536:
            raise PowerError(f"BMC port {cfg.port} is out of range")
        if not cfg.lanplus:
            # pyghmi picks IPMI 1.5 only by itself, for BMCs without 2.0; it can't be forced.
            raise PowerError("lanplus=False (IPMI 1.5) is not supported; use lanplus")
        if cfg.cipher is not None and cfg.cipher not in _CIPHERS:
            raise PowerError(
                f"cipher suite {cfg.cipher} is not supported; pyghmi negotiates 17 or 3"
            )
        if cfg.privlvl.lower() not in _PRIVLEVELS:
            raise PowerError(f"privlvl {cfg.privlvl!r} is not one of {', '.join(_PRIVLEVELS)}")
        for name in ("timeout", "connect_timeout"):
            if getattr(cfg, name) <= 0:
                raise PowerError(f"{name} must be positive")
        if cfg.wait < 0:
            raise PowerError("wait must not be negative")
        self._cfg = cfg
        self._privlevel = _PRIVLEVELS[cfg.privlvl.lower()]
        self._ep = _endpoint(cfg)
        self._cmd: Any = None  # pyghmi Command, made on first use
        self._last_ok = 0.0  # monotonic time of the last answered request

    def __enter__(self) -> Bmc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- public API ---------------------------------------------------------------

    def status(self) -> str:
        """The chassis power state, "on" or "off".

        Raises PowerError when the BMC cannot tell; it never guesses "on"."""
        return self._status(time.monotonic() + self._cfg.connect_timeout)

    def off_and_confirm(self) -> float:
        """Chassis power off (skipped if already off), then poll until the BMC reports
        off within cfg.timeout. Returns seconds from the call to the confirmation (the
        cfg.wait settle time, slept afterwards, is not counted)."""
        return self._set_and_confirm("off")

    def on_and_confirm(self) -> float:
        """As off_and_confirm, for on."""
        return self._set_and_confirm("on")

    def close(self) -> None:
        cmd, self._cmd = self._cmd, None
        if cmd is None:
            return
        try:
            _bounded(cmd.ipmi_session.logout, _CLOSE_TIMEOUT, "ipmi-logout")
        except Exception:  # the session may already be gone; nothing to undo
            pass

    # -- internals ----------------------------------------------------------------

    def _error(self, message: str, kind: type[PowerError] = PowerError) -> PowerError:
        # pyghmi's messages don't carry the password; make sure none of ours ever does.
        if self._cfg.password:
            message = message.replace(self._cfg.password, "****")
        return kind(message)

    def _status(self, deadline: float) -> str:
        rsp = self._request(_CMD_CHASSIS_STATUS, (), "chassis status", deadline)
        state = _power_state(rsp.get("data") or b"")
        if state is None:
            raise self._error(f"BMC {self._ep} sent a chassis status without a power state")
        return state

    def _set_and_confirm(self, target: str) -> float:
        cfg = self._cfg
        start = time.monotonic()
        if self._status(start + cfg.connect_timeout) == target:
            # Already there: sending the command again would only add a log entry on
            # the BMC and, for "on", could restart a host someone is working on.
            return time.monotonic() - start
        self._request(
            _CMD_CHASSIS_CONTROL,
            (_CONTROL[target],),
            f"chassis power {target}",
            time.monotonic() + cfg.connect_timeout,
        )
        confirm_by = time.monotonic() + cfg.timeout
        last = "on" if target == "off" else "off"
        pause = _POLL_FIRST
        while True:
            now = time.monotonic()
            if now >= confirm_by:
                break
            try:
                last = self._status(min(confirm_by, now + cfg.connect_timeout))
            except PowerError as exc:
                # A BMC busy with the power change may drop a query: keep polling.
                last = f"unknown ({exc})"
            if last == target:
                taken = time.monotonic() - start
                if cfg.wait > 0:
                    time.sleep(cfg.wait)
                return taken
            time.sleep(max(0.0, min(pause, confirm_by - time.monotonic())))
            pause = min(pause * 2, _POLL_MAX)
        raise self._error(
            f"BMC {self._ep} accepted chassis power {target} but did not report power "
            f"{target} within {cfg.timeout:g} s (last status: {last})"
        )

    def _connect(self, deadline: float, started: float) -> Any:
        """The pyghmi Command, logged in by deadline; started: when the caller's
        request began (for the message)."""
        if self._cmd is not None and time.monotonic() - self._last_ok > _MAX_IDLE:
            self.close()
        if self._cmd is not None:
            return self._cmd
        _bound_pyghmi_stalls()
        key = _OwnKey(self._cfg.password.encode("utf-8"))
        login = self._login(key)
        while True:
            try:
                self._cmd = _bounded(login, deadline - time.monotonic(), "ipmi-login")
                return self._cmd
            except _Timeout:
                for session in _sessions_keyed(key):
                    _retire(session)
                raise self._unreachable(time.monotonic() - started) from None
            except Exception as exc:
                error = self._login_error(exc, time.monotonic() - started)
            # pyghmi gives up a silent BMC after ~5 s; while our budget lasts, try again
            # (a BMC busy rebooting its network stack may answer the next round).
            if not isinstance(error, _SilentBmc) or deadline - time.monotonic() < _MIN_LOGIN:
                raise error from None

    def _login(self, key: _OwnKey) -> Callable[[], Any]:
        """A call that opens one IPMI session with the BMC (pyghmi's Command)."""
        from pyghmi.ipmi import command as ipmi_command  # lazy: see module docstring

        cfg = self._cfg

        def login() -> Any:
            # Bytes, not str: pyghmi 1.6 files a login in Session.initting_sessions under
            # the credentials as given but removes it under their encoded bytes; with str
            # the entry stays, and (without our own Kg) the next Command for this BMC
            # and user would be handed that old, logged-out session.
            return ipmi_command.Command(
                bmc=cfg.address,
                userid=cfg.username.encode("utf-8"),
                password=cfg.password.encode("utf-8"),
                kg=key,
                port=cfg.port,
                privlevel=self._privlevel,
            )

        return login

    def _unreachable(self, elapsed: float) -> PowerError:
        return self._error(
            f"BMC {self._ep} did not answer IPMI session setup (gave up after "
            f"{elapsed:.1f} s): unreachable, wrong address or port, or IPMI over LAN disabled",
            _SilentBmc,
        )

    def _login_error(self, exc: Exception, elapsed: float) -> PowerError:
        detail = str(exc) if exc.args and exc.args[0] else ""
        low = detail.lower()
        user = self._cfg.username
        if not detail or low == "timeout":
            # pyghmi gave up on its own (~5 s) before our deadline.
            return self._unreachable(elapsed)
        if "incorrect password" in low:
            why = "wrong password"
        elif "rakp4" in low:
            why = "integrity check failed (does the BMC require a Kg key?)"
        elif "unauthorized name" in low:
            why = "unknown user"
        elif "privelege" in low or "privilege" in low or "role" in low:
            why = f"user may not use privilege level {self._cfg.privlvl}"
        else:
            why = ""
        if why:
            return self._error(
                f"authentication failed at BMC {self._ep} for user {user!r}: {why} ({detail})"
            )
        if "cipher" in low or "algorithm" in low:
            return self._error(
                f"BMC {self._ep} accepts none of the cipher suites pyghmi offers (17, 3): {detail}"
            )
        return self._error(f"IPMI session setup with BMC {self._ep} failed: {detail}")

    def _abandon(self, cmd: Any) -> None:
        """Give up a session whose request is still running in an abandoned worker."""
        self._cmd = None
        session = getattr(cmd, "ipmi_session", None)
        if session is not None:
            _retire(session)

    def _request(
        self, command: int, data: tuple[int, ...], what: str, deadline: float
    ) -> dict[str, Any]:
        """One chassis request, bounded by deadline; a lost session is re-opened once."""
        started = time.monotonic()
        failure = "no reply"
        for attempt in range(_ATTEMPTS):
            if attempt and time.monotonic() >= deadline:
                break
            reused = self._cmd is not None
            cmd = self._connect(deadline, started)
            budget = deadline - time.monotonic()
            if reused and attempt == 0:
                # Leave time for a fresh session should this one turn out to be dead.
                budget /= 2
            rsp, failure = self._send(cmd, command, data, budget)
            if rsp is None:
                continue
            self._last_ok = time.monotonic()
            if rsp.get("code") or "error" in rsp:
                code = rsp.get("code")
                text = rsp.get("error") or "error"
                cc = f"0x{code:02x}" if isinstance(code, int) else "unknown"
                raise self._error(f"BMC {self._ep} refused {what}: {text} (completion code {cc})")
            return rsp
        raise self._error(
            f"BMC {self._ep} did not answer {what} (gave up after "
            f"{time.monotonic() - started:.1f} s; {failure})"
        )

    def _send(
        self, cmd: Any, command: int, data: tuple[int, ...], budget: float
    ) -> tuple[dict[str, Any] | None, str]:
        """One raw chassis command on the session cmd, bounded by budget: (the reply, "") or,
        the session being dropped, (None, why there is no reply)."""

        def call() -> Any:
            return cmd.raw_command(netfn=_NETFN_CHASSIS, command=command, data=data)

        try:
            rsp = _bounded(call, budget, "ipmi-request")
        except _Timeout:
            self._abandon(cmd)
            return None, "no reply"
        except Exception as exc:  # pyghmi: "Session no longer connected" and kin
            self._cmd = None
            return None, f"session lost: {exc}"
        if not rsp or rsp.get("code") == _PYGHMI_TIMEOUT:
            # pyghmi reports its own retries running out as a fake reply.
            self._cmd = None
            return None, "no reply"
        return rsp, ""
