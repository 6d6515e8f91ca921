"""Per-host nova-ha record, shared by every nova-ha component.

The fence agent ``fence_nova_evacuate``, the OCF agents ``NovaEvacuate`` and ``NovaCompute``
and the ``nova-ha`` CLI all read and write one record per compute host through this module.
In a cluster the record lives in the CIB as *persistent node attributes* of the host's node
(``<nodes><node uname=HOST><instance_attributes><nvpair .../>``), the same place
``crm_attribute --type nodes --node HOST --lifetime forever`` writes: they survive a full
cluster restart and work for Pacemaker Remote nodes.

Attributes (an absent attribute and an empty value both mean "unset"):

=========================  ================================================================
attribute                  value
=========================  ================================================================
``nova-ha-state``          ``ok`` (default when unset): nothing to do;
                           ``fenced``: power-off confirmed and nova-compute forced down,
                           evacuation needed; ``evacuating``: a runner is evacuating;
                           ``evacuated``: every server found was evacuated;
                           ``failed``: evacuation gave up on at least one server
``nova-ha-since``          UTC time of the last state change, ISO 8601
                           (``2026-11-22T14:03:00Z``)
``nova-ha-lease-owner``    who works the host now, e.g. ``fence_nova_evacuate@c1:4242`` or
                           ``NovaEvacuate@c2``; unset when nobody does
``nova-ha-lease-expires``  end of the lease, absolute epoch seconds by the owner's clock
                           (``1795874580.250``)
``nova-ha-found``          servers found on the host for this incident (integer >= 0)
``nova-ha-evacuated``      servers evacuated so far (integer >= 0)
``nova-ha-failed``         servers whose evacuation failed (integer >= 0)
``nova-ha-mode``           evacuation mode asked: ``all``, ``tagged``, ``none`` or ``record``
``nova-ha-service-host``   Nova service host name, set only when it differs from the node name
``nova-ha-instance-recoveries``  guests of the host restarted by the instance monitor
                           (integer >= 0; kept across incidents and resets)
``nova-ha-history``        last 20 events, oldest first, as compact JSON:
                           ``[["2026-11-22T14:03:00Z","fenced","by c1"], ...]``; event names:
                           ``lifecycle.Event``
=========================  ================================================================

States and events are ``lifecycle.HostState`` and ``lifecycle.Event``; a record moves only
along ``lifecycle.TRANSITIONS`` (anything else raises StateError). Marking the current state
again is always allowed (it updates counts or adds an event), so is marking ``fenced`` (a
second fencing of the same host); ``reset()`` (administrator) goes to ``ok`` from any state.
Entering ``fenced`` from another state starts a new incident: the counts restart at 0.

Lease: at most one runner works a host. ``acquire_lease`` succeeds when the lease is unset,
expired, or already held by the caller. The expiry is written by the owner with its own clock;
another host considers the lease expired only once its clock is past expiry + ``skew``
(default 10 s). This is safe as long as the clocks of the cluster nodes differ by less than
``skew`` and an owner stops working the host when its lease ends by its own clock (renew well
before, e.g. every ttl/3).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from nova_ha.errors import NovaHaError
from nova_ha.lib import clock
from nova_ha.lib.lifecycle import Event, HostState, may_move

PREFIX = "nova-ha-"
ATTR_STATE = PREFIX + "state"
ATTR_SINCE = PREFIX + "since"
ATTR_LEASE_OWNER = PREFIX + "lease-owner"
ATTR_LEASE_EXPIRES = PREFIX + "lease-expires"
ATTR_FOUND = PREFIX + "found"
ATTR_EVACUATED = PREFIX + "evacuated"
ATTR_FAILED = PREFIX + "failed"
ATTR_MODE = PREFIX + "mode"
ATTR_SERVICE_HOST = PREFIX + "service-host"
ATTR_HISTORY = PREFIX + "history"
ATTR_INSTANCE_RECOVERIES = PREFIX + "instance-recoveries"

# Attributes of the record proper; the lease is kept apart so that renewing a lease never
# conflicts with a record update.
RECORD_ATTRS = (
    ATTR_STATE,
    ATTR_SINCE,
    ATTR_FOUND,
    ATTR_EVACUATED,
    ATTR_FAILED,
    ATTR_MODE,
    ATTR_SERVICE_HOST,
    ATTR_HISTORY,
    ATTR_INSTANCE_RECOVERIES,
)
LEASE_ATTRS = (ATTR_LEASE_OWNER, ATTR_LEASE_EXPIRES)
ALL_ATTRS = RECORD_ATTRS + LEASE_ATTRS
LEASE_CLEARED = {ATTR_LEASE_OWNER: "", ATTR_LEASE_EXPIRES: ""}  # an update that clears it

MODES = ("all", "tagged", "none", "record")
HISTORY_MAX = 20
DETAIL_MAX = 120  # keeps a host's record around 2 KiB: the CIB is copied to every node
DEFAULT_SKEW = 10.0
# Bound on optimistic-concurrency rounds: each lost round means someone else wrote the record.
CAS_ROUNDS = 8

_OWNER_RE = re.compile(r"^[A-Za-z0-9_.@:/+=-]{1,128}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,253}$")


class StateError(NovaHaError):
    """A record could not be read or written; the message is meant for the operator."""

    def __init__(self, message: str, host: str | None = None, attribute: str | None = None):
        where = ""
        if host is not None:
            where = f"host {host}"
            if attribute is not None:
                where += f", attribute {attribute}"
            where += ": "
        super().__init__(where + message)
        self.host = host
        self.attribute = attribute


@dataclass(frozen=True)
class HistoryEntry:
    """One event of a host's history. The force-down has none of its own: it is part of
    'fenced' (a record is written only once the host is forced down), since each write is a
    scheduler run."""

    time: str  # ISO 8601 UTC
    name: str  # an Event (a name written by a newer version is kept as it is)
    detail: str = ""


@dataclass
class HostRecord:
    host: str
    state: HostState = HostState.OK
    since: str | None = None
    lease_owner: str | None = None
    lease_expires: float | None = None
    found: int = 0
    evacuated: int = 0
    failed: int = 0
    mode: str | None = None
    service_host: str | None = None
    history: list[HistoryEntry] = field(default_factory=list)
    instance_recoveries: int = 0

    def lease_live(self, now: float | None = None, skew: float = DEFAULT_SKEW) -> bool:
        """True while the lease may still be in use, seen from a host whose clock says `now`."""
        if self.lease_owner is None or self.lease_expires is None:
            return False
        return _now(now) <= self.lease_expires + skew


def _now(now: float | None) -> float:
    return time.time() if now is None else now


def _unset(value: str | None) -> bool:
    return value is None or value == ""


# --- encoding: HostRecord <-> attribute strings, identical for every store ----------------


def _decode(host: str, raw: Mapping[str, str]) -> HostRecord:
    def text(name: str) -> str | None:
        value = raw.get(name)
        return None if _unset(value) else value

    def count(name: str) -> int:
        value = text(name)
        if value is None:
            return 0
        if not value.isdigit():
            raise StateError(f"not a count: {value!r}", host, name)
        return int(value)

    try:
        state = HostState(text(ATTR_STATE) or HostState.OK)
    except ValueError:
        raise StateError(f"unknown state {text(ATTR_STATE)!r}", host, ATTR_STATE) from None
    mode = text(ATTR_MODE)
    if mode is not None and mode not in MODES:
        raise StateError(f"unknown mode {mode!r}", host, ATTR_MODE)
    owner, expires = _decode_lease(host, raw)
    return HostRecord(
        host=host,
        state=state,
        since=text(ATTR_SINCE),
        lease_owner=owner,
        lease_expires=expires,
        found=count(ATTR_FOUND),
        evacuated=count(ATTR_EVACUATED),
        failed=count(ATTR_FAILED),
        mode=mode,
        service_host=text(ATTR_SERVICE_HOST),
        history=_decode_history(host, text(ATTR_HISTORY)),
        instance_recoveries=count(ATTR_INSTANCE_RECOVERIES),
    )


def _decode_lease(host: str, raw: Mapping[str, str]) -> tuple[str | None, float | None]:
    owner = raw.get(ATTR_LEASE_OWNER) or None
    if owner is None:
        return None, None
    expires_raw = raw.get(ATTR_LEASE_EXPIRES) or ""
    try:
        return owner, float(expires_raw)
    except ValueError:
        # A lease with no usable end would block the host forever: the operator decides.
        raise StateError(
            f"lease of {owner} has no valid expiry {expires_raw!r} (use reset)",
            host,
            ATTR_LEASE_EXPIRES,
        ) from None


def _decode_history(host: str, value: str | None) -> list[HistoryEntry]:
    if value is None:
        return []
    try:
        items = json.loads(value)
    except ValueError:
        items = None
    if not isinstance(items, list) or not all(
        isinstance(i, list) and 2 <= len(i) <= 3 and all(isinstance(f, str) for f in i)
        for i in items
    ):
        raise StateError("history is not a JSON list of [time, event, detail]", host, ATTR_HISTORY)
    return [HistoryEntry(*item) for item in items]


def _decode_each(
    raws: Mapping[str, Mapping[str, str]],
) -> tuple[dict[str, HostRecord], dict[str, str]]:
    records, bad = {}, {}
    for host, raw in sorted(raws.items()):
        try:
            records[host] = _decode(host, raw)
        except StateError as err:
            bad[host] = str(err)
    return records, bad


def _encode(record: HostRecord) -> dict[str, str]:
    """Record attributes as strings; "" clears an attribute. The lease is not included."""
    history = [[e.time, e.name, e.detail] if e.detail else [e.time, e.name] for e in record.history]
    return {
        ATTR_STATE: str(record.state),
        ATTR_SINCE: record.since or "",
        ATTR_FOUND: str(record.found) if record.found else "",
        ATTR_EVACUATED: str(record.evacuated) if record.evacuated else "",
        ATTR_FAILED: str(record.failed) if record.failed else "",
        ATTR_MODE: record.mode or "",
        ATTR_SERVICE_HOST: record.service_host or "",
        # ASCII-only JSON: safe on any command line and in an XPath literal.
        ATTR_HISTORY: json.dumps(history, separators=(",", ":")) if history else "",
        ATTR_INSTANCE_RECOVERIES: str(record.instance_recoveries)
        if record.instance_recoveries
        else "",
    }


def _changes(raw: Mapping[str, str], wanted: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in wanted.items() if (raw.get(k) or "") != v}


def _check_host(host: str) -> None:
    if not isinstance(host, str) or not _NAME_RE.match(host):
        raise StateError(f"invalid host name {host!r}")


def _check_owner(owner: str) -> None:
    if not isinstance(owner, str) or not _OWNER_RE.match(owner):
        raise StateError(f"invalid lease owner {owner!r} (letters, digits, _.@:/+=- only)")


def _check_count(host: str, name: str, value: int | None) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise StateError(f"count must be an integer >= 0, got {value!r}", host, PREFIX + name)


def _check_lease_args(
    host: str, owner: str | None, grant: tuple[str, float] | None, release: bool
) -> None:
    if owner is not None:
        _check_owner(owner)
    if grant is not None:
        _check_owner(grant[0])
    if release and owner is None:
        raise StateError("releasing the lease needs its owner", host, ATTR_LEASE_OWNER)


@dataclass(frozen=True)
class _Change:
    """What one StateStore.mark() call asks, checked once, applied at each compare-and-swap
    round to the record as it then is."""

    state: HostState
    event: Event | None
    detail: str
    found: int | None
    evacuated: int | None
    failed: int | None
    mode: str | None
    service_host: str | None
    stamp: str  # ISO 8601 UTC: the time of the change and of its event

    @classmethod
    def checked(
        cls,
        host: str,
        state: HostState,
        event: Event | None,
        detail: str,
        found: int | None,
        evacuated: int | None,
        failed: int | None,
        mode: str | None,
        service_host: str | None,
        now: float | None,
    ) -> _Change:
        _check_host(host)
        if not isinstance(state, HostState):
            raise StateError(f"unknown state {state!r} (not a HostState)", host, ATTR_STATE)
        if event is not None and not isinstance(event, Event):
            raise StateError(f"unknown event {event!r} (not an Event)", host, ATTR_HISTORY)
        if mode is not None and mode not in MODES:
            raise StateError(f"unknown mode {mode!r}", host, ATTR_MODE)
        if service_host is not None and service_host != "" and not _NAME_RE.match(service_host):
            raise StateError(f"invalid service host {service_host!r}", host, ATTR_SERVICE_HOST)
        for name, value in (("found", found), ("evacuated", evacuated), ("failed", failed)):
            _check_count(host, name, value)
        if event == Event.EVACUATION_FINISHED and not detail:
            detail = f"found={found or 0} evacuated={evacuated or 0} failed={failed or 0}"
        return cls(
            state,
            event,
            detail[:DETAIL_MAX],
            found,
            evacuated,
            failed,
            mode,
            service_host,
            clock.iso_utc(_now(now)),
        )

    def check_allowed(self, current: HostRecord, owner: str | None) -> None:
        """StateError unless `owner` (if any) holds the lease and the move is a transition."""
        if owner is not None and current.lease_owner != owner:
            raise StateError(
                f"lease not held by {owner} (held by {current.lease_owner})",
                current.host,
                ATTR_LEASE_OWNER,
            )
        if not may_move(current.state, self.state):
            raise StateError(
                f"invalid transition {current.state} -> {self.state}", current.host, ATTR_STATE
            )

    def applied(self, current: HostRecord, history_max: int) -> HostRecord:
        """`current` with this change made; entering fenced starts a new incident (counts
        at 0); the event is not added again when it repeats the last one and changes nothing."""
        new = replace(current, history=list(current.history))
        if self.state != current.state:
            new.state, new.since = self.state, self.stamp
            if self.state == HostState.FENCED:
                new.found = new.evacuated = new.failed = 0
        new.found = new.found if self.found is None else self.found
        new.evacuated = new.evacuated if self.evacuated is None else self.evacuated
        new.failed = new.failed if self.failed is None else self.failed
        new.mode = new.mode if self.mode is None else self.mode
        if self.service_host is not None:
            new.service_host = (
                self.service_host if self.service_host not in ("", current.host) else None
            )
        last = current.history[-1] if current.history else None
        duplicate = (
            last is not None
            and last.name == self.event
            and last.detail == self.detail
            and new == current
        )
        if self.event is not None and not duplicate:
            new.history.append(HistoryEntry(self.stamp, self.event, self.detail))
            del new.history[:-history_max]
        return new


@dataclass(frozen=True)
class Swap:
    """One compare-and-swap of a host's attributes: write `update` only if every `expect`
    attribute still holds that value. `tidy`: drop the attributes the update clears."""

    host: str
    expect: Mapping[str, str | None]
    update: Mapping[str, str]
    tidy: bool = True


class StateStore(ABC):
    """Reads and writes host records; subclasses supply three storage primitives.

    All writes are compare-and-swap: read the attributes, compute the new ones, and write them
    only if the attributes read are still unchanged; otherwise start again. So two writers never
    lose each other's history events, and lease acquisition has exactly one winner.
    """

    def __init__(self, skew: float = DEFAULT_SKEW, history_max: int = HISTORY_MAX):
        self.skew = skew
        self.history_max = history_max

    # -- storage primitives ----------------------------------------------------------------

    @abstractmethod
    def _read(self, host: str) -> tuple[dict[str, str], Any]:
        """The host's nova-ha attributes, and a handle that _swap may use."""

    @abstractmethod
    def _read_all(self) -> dict[str, dict[str, str]]:
        """nova-ha attributes of every known compute host, in one read."""

    @abstractmethod
    def _swap(self, change: Swap, handle: Any) -> bool:
        """Atomically apply the change's `update` if every `expect` attribute still has that
        value. An expected None or "" means unset. An update value "" clears the attribute.
        Returns False, writing nothing, if an expectation no longer holds.
        """

    # -- public API --------------------------------------------------------------------------

    def get(self, host: str) -> HostRecord:
        _check_host(host)
        return _decode(host, self._read(host)[0])

    def all(self) -> dict[str, HostRecord]:
        return {host: _decode(host, raw) for host, raw in sorted(self._read_all().items())}

    def readable(self) -> tuple[dict[str, HostRecord], dict[str, str]]:
        """Every host's record that decodes, and {host: why} for those that do not."""
        return _decode_each(self._read_all())

    def incidents(self) -> tuple[dict[str, HostRecord], dict[str, str]]:
        """Hosts in an incident (state other than ok), for a watcher that reads often: the
        records, and {host: why} for records that do not decode (reported and skipped, so
        one bad record never stops the others)."""
        return _decode_each(
            {
                h: raw
                for h, raw in self._read_all().items()
                if (raw.get(ATTR_STATE) or HostState.OK) != HostState.OK
            }
        )

    def mark(
        self,
        host: str,
        state: HostState,
        event: Event | None = None,
        detail: str = "",
        *,
        found: int | None = None,
        evacuated: int | None = None,
        failed: int | None = None,
        mode: str | None = None,
        service_host: str | None = None,
        owner: str | None = None,
        grant: tuple[str, float] | None = None,
        release: bool = False,
        now: float | None = None,
    ) -> HostRecord:
        """Move `host` to `state`, update the given counts and append `event` to the history.

        Idempotent: a call that would change nothing (same state and values, and `event` and
        `detail` equal to the last event) writes nothing, so a retried call adds no duplicate.
        With `owner`, the write happens only while `owner` still holds the lease.

        Every write is a scheduler run, so the lease can travel with the record in the same
        write: `grant=(owner, ttl)` hands the lease to `owner` unless another owner's lease
        is live (the returned record tells who holds it); `release` (with `owner`) clears it.
        """
        change = _Change.checked(
            host, state, event, detail, found, evacuated, failed, mode, service_host, now
        )
        _check_lease_args(host, owner, grant, release)
        return self._until_swapped(
            host, ATTR_STATE, lambda: self._mark_once(host, change, owner, grant, release, now)
        )

    def _mark_once(
        self,
        host: str,
        change: _Change,
        owner: str | None,
        grant: tuple[str, float] | None,
        release: bool,
        now: float | None,
    ) -> HostRecord | None:
        """One compare-and-swap round of mark(): the record as written (or as found, when
        it is already as asked), None when someone else wrote it meanwhile."""
        raw, handle = self._read(host)
        current = _decode(host, raw)
        change.check_allowed(current, owner)
        new = change.applied(current, self.history_max)
        wanted = _encode(new)
        expect: dict[str, str | None] = {k: raw.get(k) for k in RECORD_ATTRS}
        if grant is not None and not (
            current.lease_owner not in (None, grant[0]) and current.lease_live(_now(now), self.skew)
        ):
            new.lease_owner, new.lease_expires = grant[0], _now(now) + grant[1]
            wanted[ATTR_LEASE_OWNER] = grant[0]
            wanted[ATTR_LEASE_EXPIRES] = f"{new.lease_expires:.3f}"
            expect.update({k: raw.get(k) for k in LEASE_ATTRS})
        if release:
            new.lease_owner = new.lease_expires = None
            wanted.update(LEASE_CLEARED)
        update = _changes(raw, wanted)
        if not update:
            return current
        if owner is not None:
            expect[ATTR_LEASE_OWNER] = owner
        # Cleared attributes stay as empty values (documented as unset): tidying them
        # away would cost a second write, and so a second scheduler run.
        return new if self._swap(Swap(host, expect, update, tidy=False), handle) else None

    def acquire_lease(self, host: str, owner: str, ttl: float, now: float | None = None) -> bool:
        """Take or renew the lease; False while another owner's lease is live."""
        return self._set_lease(host, owner, ttl, now, take=True)

    def renew_lease(self, host: str, owner: str, ttl: float, now: float | None = None) -> bool:
        """Extend our lease; False if it is not ours (any more)."""
        return self._set_lease(host, owner, ttl, now, take=False)

    def release_lease(self, host: str, owner: str) -> bool:
        """Give the lease up; False (nothing written) if it is not ours."""
        _check_host(host)
        _check_owner(owner)
        for _ in range(CAS_ROUNDS):
            raw, handle = self._read(host)
            if raw.get(ATTR_LEASE_OWNER) != owner:
                return False
            expect = {k: raw.get(k) for k in LEASE_ATTRS}
            if self._swap(Swap(host, expect, LEASE_CLEARED), handle):
                return True
        raise StateError("lease kept changing under us", host, ATTR_LEASE_OWNER)

    def reset(self, host: str, note: str = "", now: float | None = None) -> HostRecord:
        """Administrator's reset: state ok, counts, mode and lease cleared, history kept.

        Works on a record that no longer decodes (hand-edited CIB): that is what it is for.
        """
        _check_host(host)
        stamp = clock.iso_utc(_now(now))
        return self._until_swapped(host, ATTR_STATE, lambda: self._reset_once(host, note, stamp))

    def _reset_once(self, host: str, note: str, stamp: str) -> HostRecord | None:
        raw, handle = self._read(host)
        try:
            history = _decode_history(host, raw.get(ATTR_HISTORY) or None)
        except StateError:
            history = [HistoryEntry(stamp, Event.RESET, "unreadable history discarded")]
        service_host = raw.get(ATTR_SERVICE_HOST) or None
        if service_host is not None and not _NAME_RE.match(service_host):
            service_host = None
        recoveries = raw.get(ATTR_INSTANCE_RECOVERIES) or ""
        new = HostRecord(
            host=host,
            state=HostState.OK,
            since=stamp,
            service_host=service_host,
            history=history,
            instance_recoveries=int(recoveries) if recoveries.isdigit() else 0,
        )
        new.history.append(HistoryEntry(stamp, Event.RESET, note[:DETAIL_MAX]))
        del new.history[: -self.history_max]
        wanted = _encode(new)
        wanted.update(LEASE_CLEARED)
        expect = {k: raw.get(k) for k in ALL_ATTRS}
        return new if self._swap(Swap(host, expect, _changes(raw, wanted)), handle) else None

    def note(
        self,
        host: str,
        event: Event,
        detail: str = "",
        *,
        recovered: bool = False,
        now: float | None = None,
    ) -> HostRecord:
        """Add `event` to the host's history without changing its state or lease (a
        guest's outcome on a healthy host); `recovered`: one more instance recovery. One
        write, compare-and-swap like every other."""
        _check_host(host)
        if not isinstance(event, Event):
            raise StateError(f"unknown event {event!r} (not an Event)", host, ATTR_HISTORY)
        entry = HistoryEntry(clock.iso_utc(_now(now)), event, detail[:DETAIL_MAX])
        return self._until_swapped(
            host, ATTR_HISTORY, lambda: self._note_once(host, entry, recovered)
        )

    def _note_once(self, host: str, entry: HistoryEntry, recovered: bool) -> HostRecord | None:
        raw, handle = self._read(host)
        new = _decode(host, raw)
        new.history.append(entry)
        del new.history[: -self.history_max]
        new.instance_recoveries += 1 if recovered else 0
        expect = {k: raw.get(k) for k in RECORD_ATTRS}
        update = _changes(raw, _encode(new))
        return new if self._swap(Swap(host, expect, update, tidy=False), handle) else None

    # -- helpers -----------------------------------------------------------------------------

    def _until_swapped(
        self, host: str, attr: str, attempt: Callable[[], HostRecord | None]
    ) -> HostRecord:
        """One compare-and-swap `attempt` after another (a lost race reads anew), until one
        lands: at most CAS_ROUNDS."""
        for _ in range(CAS_ROUNDS):
            written = attempt()
            if written is not None:
                return written
        raise StateError("record kept changing under us; try again", host, attr)

    def _set_lease(self, host: str, owner: str, ttl: float, now: float | None, take: bool) -> bool:
        _check_host(host)
        _check_owner(owner)
        if not ttl > 0:
            raise StateError(f"lease ttl must be > 0, got {ttl!r}", host, ATTR_LEASE_EXPIRES)
        for _ in range(CAS_ROUNDS):
            t = _now(now)
            raw, handle = self._read(host)
            # Only the lease is decoded: a damaged history must not stop an evacuation.
            holder, expires = _decode_lease(host, raw)
            if holder != owner:
                lease = HostRecord(host, lease_owner=holder, lease_expires=expires)
                if not take or lease.lease_live(t, self.skew):
                    return False
            expect = {k: raw.get(k) for k in LEASE_ATTRS}
            update = {ATTR_LEASE_OWNER: owner, ATTR_LEASE_EXPIRES: f"{t + ttl:.3f}"}
            if self._swap(Swap(host, expect, update), handle):
                return True
            # Lost a race (or our own earlier attempt landed after a timeout): look again.
        return False


# --- in-memory store ----------------------------------------------------------------------


class MemoryStateStore(StateStore):
    """Dictionary-backed store for unit tests and dry runs; thread-safe."""

    def __init__(self, skew: float = DEFAULT_SKEW, history_max: int = HISTORY_MAX):
        super().__init__(skew, history_max)
        self._lock = threading.Lock()
        self._hosts: dict[str, dict[str, str]] = {}

    def _read(self, host: str) -> tuple[dict[str, str], Any]:
        with self._lock:
            return dict(self._hosts.get(host, {})), None

    def _read_all(self) -> dict[str, dict[str, str]]:
        with self._lock:
            return {h: dict(raw) for h, raw in self._hosts.items()}

    def _swap(self, change: Swap, handle: Any) -> bool:
        with self._lock:
            attrs = self._hosts.setdefault(change.host, {})
            for name, value in change.expect.items():
                if (attrs.get(name) or "") != (value or ""):
                    return False
            for name, value in change.update.items():
                if value == "":
                    attrs.pop(name, None)
                else:
                    attrs[name] = value
            return True


# --- CIB store ----------------------------------------------------------------------------

_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_LOWER = "abcdefghijklmnopqrstuvwxyz"
# cibadmin exit codes worth another try: unavailable, tempfail, busy, timeout.
_RETRY_EXIT = frozenset({69, 75, 113, 124})
_DISCONNECTED = 102  # CRM_EX_DISCONNECT: "Transport endpoint is not connected"
_NO_MATCH_EXIT = 105  # CRM_EX_NOSUCH: "Call failed: No such device or address"


def _no_match(err: str) -> bool:
    """cibadmin's "nothing matched": "Call failed: ..." on a CIB file, "Call cib_query
    failed: ..." / "Call cib_modify failed: ..." on a live cluster."""
    return re.search(r"Call (?:\w+ )?failed: No such device or address", err) is not None


def _xpath_literal(value: str) -> str:
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    return "concat(" + ', "\'", '.join(f"'{part}'" for part in value.split("'")) + ")"


def _lower_eq(attribute: str, value: str) -> str:
    # Pacemaker matches node names case-insensitively (ASCII), so do we.
    return f"translate({attribute},'{_UPPER}','{_LOWER}')={_xpath_literal(value.lower())}"


def _sanitize_id(value: str) -> str:
    # What crm_attribute does to the ids it makes, so both tools name nvpairs alike.
    return value.replace(":", ".").replace("#", ".")


@dataclass
class _Layout:
    """Where a host's attributes live in the CIB, learnt when it was read."""

    node_id: str
    default_set: str
    sets: dict[str, str]  # attribute -> id of the instance_attributes holding it
    nvpair_ids: dict[str, str]  # attribute -> nvpair id


class CibStateStore(StateStore):
    """Records as persistent node attributes in the CIB, through ``cibadmin``.

    Race safety: every write is ONE ``cibadmin --modify --xpath`` whose XPath selects the node
    only if the attributes still hold the values read (e.g. ``node[@id='c1'][not(
    instance_attributes/nvpair[@name='nova-ha-lease-owner'][@value!=''])]``). The CIB manager
    evaluates the XPath and applies the change as one operation; every CIB change is delivered
    to all nodes in one total order (CPG), so the test and the set are atomic cluster-wide:
    compare-and-swap. If the XPath no longer matches, cibadmin fails with "No such device or
    address" (exit 105) and nothing is written. Pacemaker 2.1.5 has no other conditional
    write: ``--create`` only refuses duplicate ids among a section's direct children, and
    ``--delete`` succeeds whether or not anything matched.

    With ``CIB_file`` (tests, offline) there is no CIB manager: each cibadmin reads the file,
    changes it in memory and rewrites it in place (not atomically), so two processes would both
    "win". Here every command runs under an flock on ``<file>.lock``, exclusive for writes and
    shared for reads, standing in for the CIB manager's serialisation.

    Limits: a partition without quorum keeps its own CIB copy until it is fenced; writes made
    there are lost when it rejoins. Nodes' clocks must agree within ``skew`` (see the module
    docstring). A remote node missing from <nodes> is added the way crm_attribute adds it.
    """

    def __init__(
        self,
        cib_file: str | None = None,
        *,
        skew: float = DEFAULT_SKEW,
        timeout: float = 15.0,
        retries: int = 3,
        history_max: int = HISTORY_MAX,
        cibadmin: str = "cibadmin",
        fail_fast: bool = False,
    ):
        super().__init__(skew, history_max)
        self.cib_file = cib_file or os.environ.get("CIB_file") or None
        self.timeout = timeout
        self.retries = max(1, retries)
        self.cibadmin = cibadmin
        self.commands_run = 0  # Pacemaker commands started, for tests and measurements
        # fail_fast (a fence action): a CIB manager that cannot be reached is not retried,
        # and this store gives up at once from then on.
        self.fail_fast = fail_fast
        self.unreachable = ""
        from nova_ha.lib import service

        # cibadmin needs no secret: none of the agent's parameters reach it.
        self._env = service.clean_env(os.environ)
        if self.cib_file:
            self._env["CIB_file"] = self.cib_file
        else:
            self._env.pop("CIB_file", None)

    # -- primitives ----------------------------------------------------------------------

    def _read(self, host: str) -> tuple[dict[str, str], Any]:
        node = self._query_node(host)
        if node is None:
            return {}, None
        return _node_attrs(node), _layout(node)

    def _read_all(self) -> dict[str, dict[str, str]]:
        from lxml import etree  # lazy: only the status views parse the whole nodes section

        out = self._cib(["--query", "--scope", "nodes"], host=None, what="read nodes")
        try:
            root = etree.fromstring(out.encode())
        except etree.XMLSyntaxError as exc:
            raise StateError(f"cibadmin returned unreadable XML: {exc}") from None
        hosts: dict[str, dict[str, str]] = {}
        for node in root.iter("node"):
            uname = node.get("uname")
            if not uname:
                continue
            attrs = _node_attrs(node)
            # Controllers carry no nova-ha attribute; remote nodes are computes even before
            # their first incident.
            if attrs or node.get("type") == "remote":
                hosts[uname] = attrs
        return hosts

    def incidents(self) -> tuple[dict[str, HostRecord], dict[str, str]]:
        # Only the nodes in an incident: usually none, so the query answers "nothing" and
        # costs little however many nodes the cluster has.
        xpath = (
            f"/cib/configuration/nodes/node[instance_attributes/nvpair[@name='{ATTR_STATE}']"
            "[@value!='' and @value!='ok']]"
        )
        code, out, err = self._run(
            ["--query", "--xpath", xpath], exclusive=False, host=None, what="read incidents"
        )
        if code == _NO_MATCH_EXIT and _no_match(err):
            return {}, {}
        if code != 0:
            raise StateError(f"cibadmin --query failed {_why(code, err)}")
        from xml.etree import ElementTree as ET

        try:
            root = ET.fromstring(out)
        except ET.ParseError as exc:
            raise StateError(f"cibadmin returned unreadable XML: {exc}") from None
        nodes = list(root) if root.tag == "xpath-query" else [root]
        return _decode_each({n.get("uname") or "": _node_attrs(n) for n in nodes if n.get("uname")})

    def _swap(self, change: Swap, handle: Any) -> bool:
        host, expect, update = change.host, change.expect, change.update
        for name, value in update.items():
            # copy_in_properties() would turn "value++"/"value+=N" into arithmetic.
            if value.startswith("value+"):
                raise StateError(f"refusing value {value!r}", host, name)
        layout: _Layout | None = handle
        if layout is None:
            self._add_node(host)
            node = self._query_node(host)
            if node is None:
                raise StateError("node vanished from the CIB while being added", host)
            layout = _layout(node)
        from xml.etree import ElementTree as ET

        top = _node_update(layout, update)
        xpath = _node_matching(layout.node_id, expect)
        if len(top) == 0:
            # Nothing to write, but the caller still needs to know if expectations hold.
            return self._query_xpath(xpath, host) is not None
        code, _, err = self._run(
            ["--modify", "--xpath", xpath, "--xml-text", ET.tostring(top, encoding="unicode")],
            exclusive=True,
            host=host,
            what="write",
        )
        if code == 0:
            if change.tidy and any(value == "" for value in update.values()):
                self._drop_empty(host, layout.node_id)
            return True
        if code == _NO_MATCH_EXIT and _no_match(err):
            return False
        raise StateError(f"cibadmin --modify failed {_why(code, err)}", host, ", ".join(update))

    # -- helpers -------------------------------------------------------------------------

    def _drop_empty(self, host: str, node_id: str) -> None:
        """Delete our empty nvpairs, so that crm_attribute --query finds unset ones absent.

        cibadmin calls --delete-all "dangerous" and wants --force (which only adds a quorum
        override, harmless here).

        A separate operation is safe: an empty value already means unset to every reader and
        every compare-and-swap, and the XPath only matches nvpairs still empty when it runs.
        """
        xpath = (
            f"/cib/configuration/nodes/node[@id={_xpath_literal(node_id)}]"
            f"/instance_attributes/nvpair[starts-with(@name,'{PREFIX}')][@value='']"
        )
        # Best effort: the write itself has succeeded, and leftover empty values are harmless.
        with contextlib.suppress(StateError):
            self._run(
                ["--delete-all", "--force", "--xpath", xpath],
                exclusive=True,
                host=host,
                what="tidy",
            )

    def _query_node(self, host: str) -> Any:
        xpath = f"/cib/configuration/nodes/node[{_lower_eq('@uname', host)}]"
        return self._query_xpath(xpath, host)

    def _query_xpath(self, xpath: str, host: str | None) -> Any:
        from xml.etree import ElementTree as ET

        code, out, err = self._run(
            ["--query", "--xpath", xpath], exclusive=False, host=host, what="read"
        )
        if code == _NO_MATCH_EXIT and _no_match(err):
            return None
        if code != 0:
            raise StateError(f"cibadmin --query failed {_why(code, err)}", host)
        try:
            root = ET.fromstring(out)
        except ET.ParseError as exc:
            raise StateError(f"cibadmin returned unreadable XML: {exc}", host) from None
        if root.tag == "xpath-query":  # several matches come wrapped; take the first
            children = list(root)
            return children[0] if children else None
        return root

    def _add_node(self, host: str) -> None:
        """Create <node> for a remote or guest node, as crm_attribute does on first write."""
        lc = host.lower()
        # The node-name lookup of Pacemaker's query_node_uuid(), minus the nodes section.
        xpath = (
            "/cib/configuration/resources/primitive[@class='ocf'][@provider='pacemaker']"
            f"[@type='remote'][{_lower_eq('@id', lc)}]"
            "|/cib/configuration/resources/primitive/meta_attributes/nvpair"
            f"[@name='remote-node'][{_lower_eq('@value', lc)}]"
            f"|/cib/status/node_state[@remote_node='true'][{_lower_eq('@id', lc)}]"
        )
        found = self._query_xpath(xpath, host)
        if found is None:
            raise StateError(
                "not a node of this cluster (no <node>, and no remote or guest "
                "node resource of that name in the CIB)",
                host,
            )
        node_id = found.get("value") if found.tag == "nvpair" else found.get("id")
        from xml.etree import ElementTree as ET

        nodes = ET.Element("nodes")
        ET.SubElement(nodes, "node", id=node_id, uname=node_id, type="remote")
        # A merge: racing writers adding the same node produce the same element.
        self._cib(
            ["--modify", "--scope", "nodes", "--xml-text", ET.tostring(nodes, encoding="unicode")],
            host=host,
            what="add node",
            exclusive=True,
        )

    def _cib(self, args: list[str], host: str | None, what: str, exclusive: bool = False) -> str:
        code, out, err = self._run(args, exclusive=exclusive, host=host, what=what)
        if code != 0:
            raise StateError(f"cibadmin {what} failed {_why(code, err)}", host)
        return out

    def _run(
        self, args: list[str], exclusive: bool, host: str | None, what: str
    ) -> tuple[int, str, str]:
        """Run cibadmin with a timeout, retrying transient failures a bounded number of times."""
        if self.unreachable:
            raise StateError(f"the CIB is out of reach ({self.unreachable})", host)
        last = ""
        for attempt in range(self.retries):
            if attempt:
                time.sleep(min(0.25 * 2**attempt, 2.0))
            proc = self._run_once(args, exclusive, host)
            if proc is None:
                last = f"no answer within {self.timeout:g} s"
                continue
            if not self._disconnected(proc, host) and proc.returncode not in _RETRY_EXIT:
                return proc.returncode, proc.stdout, proc.stderr
            last = f"exit {proc.returncode}: {_first_line(proc.stderr)}"
        raise StateError(f"cibadmin {what} failed {self.retries} times, last: {last}", host)

    def _run_once(
        self, args: list[str], exclusive: bool, host: str | None
    ) -> subprocess.CompletedProcess[str] | None:
        """One cibadmin run under the file lock; None when it did not finish in time."""
        try:
            with self._file_lock(exclusive, host):
                self.commands_run += 1
                return subprocess.run(
                    [self.cibadmin, *args],
                    capture_output=True,
                    text=True,
                    timeout=self.timeout,
                    env=self._env,
                    check=False,
                )
        except FileNotFoundError:
            raise StateError(
                f"{self.cibadmin} not found (is pacemaker-cli installed?)", host
            ) from None
        except subprocess.TimeoutExpired:
            return None

    def _disconnected(self, proc: subprocess.CompletedProcess[str], host: str | None) -> bool:
        """True when no CIB manager answered cibadmin (worth another try), or with fail_fast
        StateError, for this call and every later one."""
        disconnected = not self.cib_file and (
            proc.returncode == _DISCONNECTED
            or "Could not connect" in proc.stderr
            or "not connected" in proc.stderr
        )
        if disconnected and self.fail_fast:
            # No CIB manager on this node: no cluster running here. Not a blip worth
            # seconds of backoff in the middle of a fence; and every later call of this
            # store fails at once too.
            self.unreachable = f"exit {proc.returncode}: {_first_line(proc.stderr)}"
            raise StateError(f"the CIB is out of reach ({self.unreachable})", host)
        return disconnected

    @contextlib.contextmanager
    def _file_lock(self, exclusive: bool, host: str | None) -> Iterator[None]:
        if not self.cib_file:
            yield
            return
        fd = os.open(self.cib_file + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
            deadline = time.monotonic() + self.timeout
            while True:
                try:
                    fcntl.flock(fd, mode | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise StateError(
                            f"{self.cib_file}.lock busy for {self.timeout:g} s", host
                        ) from None
                    time.sleep(0.005)
            yield
        finally:
            os.close(fd)  # releases the flock


def _node_update(layout: _Layout, update: Mapping[str, str]) -> Any:
    """The <node> element that sets the `update` attributes where `layout` says they live."""
    from xml.etree import ElementTree as ET

    top = ET.Element("node", id=layout.node_id)
    sets: dict[str, ET.Element] = {}
    for name, value in update.items():
        if value == "" and name not in layout.nvpair_ids:
            continue  # clearing what is not there: keep the CIB free of empty nvpairs
        set_id = layout.sets.get(name, layout.default_set)
        if set_id not in sets:
            sets[set_id] = ET.SubElement(top, "instance_attributes", id=set_id)
        nv_id = layout.nvpair_ids.get(name) or _sanitize_id(f"{set_id}-{name}")
        ET.SubElement(sets[set_id], "nvpair", id=nv_id, name=name, value=value)
    return top


def _node_matching(node_id: str, expect: Mapping[str, str | None]) -> str:
    """XPath of the node, matching only while every `expect` attribute has that value."""
    conditions = []
    for name, value in expect.items():
        if value is None or value == "":
            conditions.append(f"[not(instance_attributes/nvpair[@name='{name}'][@value!=''])]")
        else:
            conditions.append(
                f"[instance_attributes/nvpair[@name='{name}'][@value={_xpath_literal(value)}]]"
            )
    return f"/cib/configuration/nodes/node[@id={_xpath_literal(node_id)}]" + "".join(conditions)


def _why(code: int, err: str) -> str:
    why = f"(exit {code}): {_first_line(err)}"
    if code == 76:
        # EPROTONOSUPPORT on a write: Pacemaker refuses to change a CIB whose
        # crm_feature_set is newer than its own (mixed versions during an upgrade).
        why += " (is the CIB's crm_feature_set newer than this node's Pacemaker?)"
    return why


def _first_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else "(no message)"


def _node_attrs(node: Any) -> dict[str, str]:
    attrs: dict[str, str] = {}
    for nvset in node.findall("instance_attributes"):
        for nv in nvset.findall("nvpair"):
            name = nv.get("name") or ""
            if name.startswith(PREFIX) and name not in attrs:
                attrs[name] = nv.get("value") or ""
    return attrs


def _layout(node: Any) -> _Layout:
    node_id = node.get("id") or node.get("uname")
    sets: dict[str, str] = {}
    nvpair_ids: dict[str, str] = {}
    first_set = None
    for nvset in node.findall("instance_attributes"):
        set_id = nvset.get("id")
        if not set_id:
            continue
        first_set = first_set or set_id
        for nv in nvset.findall("nvpair"):
            name = nv.get("name") or ""
            if name.startswith(PREFIX) and name not in sets and nv.get("id"):
                sets[name] = set_id
                nvpair_ids[name] = nv.get("id")
    # Keep our attributes together; else use the set crm_attribute would create or use.
    default_set = next(iter(sets.values()), None) or first_set or _sanitize_id(f"nodes-{node_id}")
    return _Layout(node_id=node_id, default_set=default_set, sets=sets, nvpair_ids=nvpair_ids)
