"""A fake of the part of libvirt-python the instance monitor uses: a connection whose
domains, events and failures a test drives. Also the monitor's module in the agent's tests
(NOVA_HA_INSTANCE_LIBVIRT=tests.fake_libvirt): its event loop just idles there."""

from __future__ import annotations

import threading
import time
from typing import Any


class libvirtError(Exception):  # noqa: N801 (libvirt's name)
    def get_error_message(self) -> str:
        return str(self)


registered = threading.Event()
connections: list[FakeConnection] = []
refuse = 0  # connection attempts to refuse before one succeeds


error_handler: Any = None


def registerErrorHandler(handler: Any, context: Any) -> None:  # noqa: N802
    global error_handler
    error_handler = handler


def virEventRegisterDefaultImpl() -> None:  # noqa: N802
    registered.set()


def virEventRunDefaultImpl() -> None:  # noqa: N802
    time.sleep(3600)  # a real loop blocks in poll(); nothing to deliver here


class FakeDomain:
    def __init__(self, uuid: str, state: int = 1, reason: int = 1, agent: bool = True) -> None:
        self.uuid, self.st, self.reason, self.agent = uuid, state, reason, agent
        self.answers = True
        self.id = 1

    def UUIDString(self) -> str:  # noqa: N802
        return self.uuid

    def state(self) -> list[int]:
        return [self.st, self.reason]

    def ID(self) -> int:  # noqa: N802
        return self.id

    def XMLDesc(self, flags: int) -> str:  # noqa: N802
        channel = (
            "<channel type='unix'><source mode='bind'/>"
            "<target type='virtio' name='org.qemu.guest_agent.0'/></channel>"
            if self.agent
            else ""
        )
        return f"<domain type='kvm'><uuid>{self.uuid}</uuid><devices>{channel}</devices></domain>"


class FakeConnection:
    def __init__(self, uri: str, readonly: bool) -> None:
        self.uri, self.readonly = uri, readonly
        self.domains: dict[str, FakeDomain] = {}
        self.alive = True
        self.callbacks: dict[int, Any] = {}
        self.close_callback: Any = None
        self.keepalive: tuple[int, int] | None = None

    def isAlive(self) -> int:  # noqa: N802
        return 1 if self.alive else 0

    def setKeepAlive(self, interval: int, count: int) -> None:  # noqa: N802
        self.keepalive = (interval, count)

    def registerCloseCallback(self, callback: Any, opaque: Any) -> None:  # noqa: N802
        self.close_callback = callback

    def domainEventRegisterAny(self, dom: Any, event_id: int, cb: Any, opaque: Any) -> int:  # noqa: N802
        self.callbacks[event_id] = cb
        return event_id

    def listAllDomains(self, flags: int = 0) -> list[FakeDomain]:  # noqa: N802
        if not self.alive:
            raise libvirtError("connection closed")
        return [d for d in self.domains.values() if not flags or d.st in (1, 2, 3)]

    def lookupByUUIDString(self, uuid: str) -> FakeDomain:  # noqa: N802
        if uuid not in self.domains:
            raise libvirtError(f"no domain {uuid}")
        return self.domains[uuid]

    def close(self) -> int:
        self.alive = False
        return 0

    # what libvirtd does
    def lifecycle(self, uuid: str, event: int, detail: int) -> None:
        self.callbacks[0](self, self.domains[uuid], event, detail, None)

    def lose(self, reason: int = 1) -> None:
        self.alive = False
        if self.close_callback:
            self.close_callback(self, reason, None)


def _open(uri: str, readonly: bool) -> FakeConnection:
    global refuse
    if refuse > 0:
        refuse -= 1
        raise libvirtError(f"Failed to connect socket to {uri}: Connection refused")
    conn = FakeConnection(uri, readonly)
    connections.append(conn)
    return conn


def openReadOnly(uri: str) -> FakeConnection:  # noqa: N802
    return _open(uri, True)


def open(uri: str) -> FakeConnection:  # noqa: A001
    return _open(uri, False)


def qemuAgentCommand(dom: FakeDomain, command: str, timeout: int, flags: int) -> str:  # noqa: N802
    if not dom.agent or not dom.answers:
        raise libvirtError("Guest agent is not responding: QEMU guest agent is not connected")
    return '{"return":{}}'
