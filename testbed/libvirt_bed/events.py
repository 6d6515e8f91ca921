"""Lifecycle events from the bed's libvirtd, received the way a monitor receives them: the
default event loop implementation running in a thread, a read-only connection and a
``domainEventRegisterAny(VIR_DOMAIN_EVENT_ID_LIFECYCLE)`` callback."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

_LOOP_LOCK = threading.Lock()
_LOOP: threading.Thread | None = None


def ensure_event_loop() -> None:
    """Register libvirt's default event loop and run it in a daemon thread (once per
    process; it must be registered before the connections that want events are opened)."""
    global _LOOP
    import libvirt

    with _LOOP_LOCK:
        if _LOOP is not None:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        _LOOP = threading.Thread(target=run, daemon=True, name="libvirt-event-loop")
        _LOOP.start()


def event_name(event: int, detail: int | None = None) -> str:
    """'STOPPED/FAILED' for (5, 5): the names of libvirt's VIR_DOMAIN_EVENT_* constants."""
    import libvirt

    prefix = "VIR_DOMAIN_EVENT_"
    names = {
        value: key[len(prefix) :]
        for key, value in vars(libvirt).items()
        if key.startswith(prefix) and key[len(prefix) :].isalpha() and isinstance(value, int)
    }
    name = names.get(event, str(event))
    if detail is None:
        return name
    for key, value in vars(libvirt).items():
        if key.startswith(f"{prefix}{name}_") and value == detail:
            return f"{name}/{key[len(prefix) + len(name) + 1 :]}"
    return f"{name}/{detail}"


@dataclass(frozen=True)
class LifecycleEvent:
    t: float  # time.time() when the callback ran
    uuid: str
    name: str  # the domain's name
    event: int
    detail: int

    @property
    def label(self) -> str:
        return event_name(self.event, self.detail)


class EventRecorder:
    """Records every lifecycle event of the bed's domains. ``with EventRecorder(uri) as r:``"""

    def __init__(self, uri: str) -> None:
        import libvirt

        ensure_event_loop()
        self.events: list[LifecycleEvent] = []
        self._cond = threading.Condition()
        self.conn = libvirt.openReadOnly(uri)
        self._callback = self.conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_event, None
        )

    def _on_event(self, conn: Any, dom: Any, event: int, detail: int, opaque: Any) -> None:
        record = LifecycleEvent(time.time(), dom.UUIDString(), dom.name(), event, detail)
        with self._cond:
            self.events.append(record)
            self._cond.notify_all()

    def of(self, uuid: str, after: float = 0.0) -> list[LifecycleEvent]:
        with self._cond:
            return [e for e in self.events if e.uuid == uuid and e.t >= after]

    def wait_for(
        self, uuid: str, label: str, after: float = 0.0, timeout: float = 30.0
    ) -> LifecycleEvent:
        """The first event of domain `uuid` at or after `after` whose label is `label`
        ('STOPPED/FAILED') or starts with it ('CRASHED'); TimeoutError with what came."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for e in self.events:
                    if e.uuid == uuid and e.t >= after and (e.label + "/").startswith(label + "/"):
                        return e
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [e.label for e in self.events if e.uuid == uuid and e.t >= after]
                    raise TimeoutError(f"no {label} event of {uuid} in {timeout}s; saw {seen}")
                self._cond.wait(left)

    def close(self) -> None:
        import libvirt

        try:
            self.conn.domainEventDeregisterAny(self._callback)
            self.conn.close()
        except libvirt.libvirtError:
            pass  # libvirtd already gone

    def __enter__(self) -> EventRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
