"""The libvirt side of the instance monitor, kept thin: everything here is a libvirt call or
hands its answer on. Deciding is ``decide``'s, counting heartbeats ``heartbeat``'s.

- libvirt's default event loop runs in a thread of its own (``virEventRegisterDefaultImpl``
  before the first connection, then ``virEventRunDefaultImpl`` forever): it delivers the
  domain events and the keepalive pings;
- one connection (read-only unless the heartbeat needs the agent: ``qemuAgentCommand`` is
  not allowed read-only), with a keepalive and a close callback: when libvirtd goes away the
  monitor connects again with a growing pause, then scans;
- the scan, at start and at each reconnect, finds the domains that crashed while nobody
  listened (``virDomain.state()``: shut off with reason crashed, or kept crashed);
- the ping: one guest-ping through libvirt's own agent connection (libvirtd holds the
  host side of the agent channel, org.qemu.guest_agent.0; QEMU's socket takes one client).

Domain UUID = Nova server UUID (Nova's libvirt driver names domains so). libvirt is imported
in the monitor process only (``load``), never by the OCF agent.
"""

from __future__ import annotations

import importlib
import os
import threading
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

from nova_ha.instance import decide
from nova_ha.instance.decide import GuestEvent
from nova_ha.lib import log

LOG = log.get("instance-watch")

AGENT_CHANNEL = "org.qemu.guest_agent.0"
PING = '{"execute":"guest-ping"}'
KEEPALIVE = (5, 3)  # seconds between probes, probes missed: a dead libvirtd found in ~20 s
BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0)  # pauses between connection attempts
XML_MAX = 1024 * 1024
# Test hook: the module to use instead of libvirt (a fake of its API, for the agent's tests).
MODULE_ENV = "NOVA_HA_INSTANCE_LIBVIRT"
_STARTED = 2  # VIR_DOMAIN_EVENT_STARTED
_STOPPED = 5  # VIR_DOMAIN_EVENT_STOPPED
_EVENT_ID_LIFECYCLE, _EVENT_ID_WATCHDOG = 0, 3
_RUNNING = 1  # VIR_DOMAIN_RUNNING
_ERR_UNSUPPORTED = 74  # VIR_ERR_ARGUMENT_UNSUPPORTED: no agent configured


def load() -> ModuleType:
    """The libvirt binding (ImportError with the package to install when missing)."""
    return importlib.import_module(os.environ.get(MODULE_ENV) or "libvirt")


class Sink(Protocol):
    """Where the watcher's news go; called from libvirt's event thread: must not block."""

    def guest_event(self, uuid: str, event: GuestEvent, detail: str) -> None: ...

    def guest_started(self, uuid: str) -> None: ...

    def guest_stopped(self, uuid: str) -> None: ...

    def wake(self) -> None: ...


@dataclass(frozen=True)
class Guest:
    """A domain the heartbeat looks at: running (neither paused nor migrating), agent."""

    uuid: str
    running: bool
    has_agent: bool


class LibvirtWatch:
    """The connection to libvirtd at `uri`, kept up; events go to `sink`."""

    def __init__(
        self,
        uri: str,
        sink: Sink,
        *,
        readonly: bool = True,
        module: ModuleType | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.uri, self.sink, self.readonly, self.clock = uri, sink, readonly, clock
        self.libvirt = module if module is not None else load()
        self.conn: Any = None
        self.failures = 0  # connection attempts failed in a row
        self.next_try = 0.0
        self._agents: dict[tuple[str, int], bool] = {}  # (uuid, domain id): has an agent

    # -- the event loop --

    def start_loop(self) -> threading.Thread:
        """libvirt's default event loop, in a daemon thread: before any connection."""
        # libvirt prints every error to stderr by default, besides raising it: that would be
        # a log line per ping of each guest without an agent. The monitor logs what matters.
        self.libvirt.registerErrorHandler(_ignore_error, None)
        self.libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                self.libvirt.virEventRunDefaultImpl()

        thread = threading.Thread(target=run, name="libvirt-events", daemon=True)
        thread.start()
        return thread

    # -- the connection --

    def connected(self) -> bool:
        try:
            return self.conn is not None and self.conn.isAlive() == 1
        except self.libvirt.libvirtError:
            return False

    def ensure(self) -> bool:
        """Connected, or try now if the pause after the last failure is over. A new
        connection is scanned at once (crashes while nobody listened)."""
        if self.connected():
            return True
        if self.conn is not None:
            self._drop("the connection to libvirtd is gone")
        if self.clock() < self.next_try:
            return False
        try:
            self._connect()
        except self.libvirt.libvirtError as err:
            pause = BACKOFF[min(self.failures, len(BACKOFF) - 1)]
            self.failures += 1
            self.next_try = self.clock() + pause
            self._drop(f"cannot connect to {self.uri} ({_error(err)}); again in {pause:.0f} s")
            return False
        LOG.info("connected to %s%s", self.uri, " (read-only)" if self.readonly else "")
        self.failures = 0
        self.scan()
        return True

    def _connect(self) -> None:
        lv = self.libvirt
        opener = lv.openReadOnly if self.readonly else lv.open
        conn = opener(self.uri)
        if conn is None:  # old bindings returned None instead of raising
            raise lv.libvirtError(f"cannot connect to {self.uri}")
        self.conn = conn
        conn.setKeepAlive(*KEEPALIVE)
        conn.registerCloseCallback(self._closed, None)
        conn.domainEventRegisterAny(None, _EVENT_ID_LIFECYCLE, self._lifecycle, None)
        conn.domainEventRegisterAny(None, _EVENT_ID_WATCHDOG, self._watchdog, None)

    def _drop(self, why: str) -> None:
        LOG.warning("%s", why)
        conn, self.conn = self.conn, None
        self._agents.clear()
        if conn is not None:
            try:
                conn.close()
            except self.libvirt.libvirtError:
                pass

    def _closed(self, conn: Any, reason: int, opaque: Any) -> None:
        LOG.warning("libvirtd closed the connection (reason %d)", reason)
        self.sink.wake()  # the main loop connects again at once

    # -- events (libvirt's thread) --

    def _lifecycle(self, conn: Any, dom: Any, event: int, detail: int, opaque: Any) -> None:
        uuid = dom.UUIDString()
        if event == _STARTED:
            self.sink.guest_started(uuid)
            return
        if event == _STOPPED:
            self.sink.guest_stopped(uuid)
        kind = decide.from_lifecycle(event, detail)
        if kind is not None:
            self.sink.guest_event(uuid, kind, f"libvirt event {event}/{detail}")

    def _watchdog(self, conn: Any, dom: Any, action: int, opaque: Any) -> None:
        kind = decide.from_watchdog(action)
        if kind is not None:
            self.sink.guest_event(dom.UUIDString(), kind, f"watchdog action {action}")

    # -- the scan and the heartbeat's view --

    def scan(self) -> int:
        """Report every domain found crashed; how many were."""
        found = 0
        for dom in self._domains():
            try:
                state, reason = dom.state()[:2]
            except self.libvirt.libvirtError:
                continue  # gone meanwhile
            kind = decide.from_state(state, reason)
            if kind is not None:
                found += 1
                self.sink.guest_event(dom.UUIDString(), kind, f"found state {state}/{reason}")
        return found

    def guests(self) -> list[Guest]:
        """The active domains, each running or not and with an agent channel or not."""
        guests = []
        for dom in self._domains(active_only=True):
            try:
                uuid, state = dom.UUIDString(), dom.state()[0]
                guests.append(Guest(uuid, state == _RUNNING, self._has_agent(uuid, dom)))
            except self.libvirt.libvirtError:
                continue
        return guests

    def _domains(self, active_only: bool = False) -> list[Any]:
        if self.conn is None:
            return []
        flags = 1 if active_only else 0  # VIR_CONNECT_LIST_DOMAINS_ACTIVE
        try:
            return list(self.conn.listAllDomains(flags))
        except self.libvirt.libvirtError as err:
            LOG.warning("cannot list the domains: %s", _error(err))
            return []

    def _has_agent(self, uuid: str, dom: Any) -> bool:
        key = (uuid, dom.ID())
        if key not in self._agents:
            if len(self._agents) > 4096:
                self._agents.clear()
            self._agents[key] = agent_channel(dom.XMLDesc(0))
        return self._agents[key]

    def ping(self, uuid: str, timeout: float) -> bool:
        """One guest-ping through libvirtd; False for no answer in `timeout` seconds (or
        no agent connected, or no such domain any more)."""
        try:
            dom = self.conn.lookupByUUIDString(uuid)
            command = getattr(self.libvirt, "qemuAgentCommand", None)
            if command is None:
                command = importlib.import_module("libvirt_qemu").qemuAgentCommand
            command(dom, PING, max(1, int(round(timeout))), 0)
            return True
        except (self.libvirt.libvirtError, AttributeError) as err:
            LOG.debug("guest %s: no answer to guest-ping (%s)", uuid, _error(err))
            return False


def agent_channel(xml: str) -> bool:
    """Whether a domain's XML has the guest agent's channel."""
    try:
        root = ElementTree.fromstring(xml[:XML_MAX])
    except ElementTree.ParseError:
        return False
    return any(
        target.get("name") == AGENT_CHANNEL for target in root.iterfind("./devices/channel/target")
    )


def _ignore_error(context: Any, error: Any) -> None:
    """libvirt's error callback: errors reach the monitor as exceptions, not on stderr."""


def _error(err: Exception) -> str:
    message = getattr(err, "get_error_message", None)
    text = message() if callable(message) else str(err)
    return " ".join(str(text).split())[:200]
