"""Mass-failure guard: when many hosts are fenced at once, evacuate none of them by itself.

More hosts fenced within ``fenced_window`` seconds of each other than ``max_fenced_hosts``
(a count, or a percentage of the compute hosts rounded down and at least 1) is the signature
of a shared cause, a switch, the controllers' network or a power feed, rather than of that
many independent deaths. Fencing goes on (Pacemaker decides it, and a fenced host is safe),
but no evacuation of the hosts of that wave starts automatically: neither the stonith agent
nor NovaEvacuate start one, an ``evacuation_blocked`` event is raised once per host, and the
hosts stay recorded ``fenced`` until an administrator decides: ``nova-ha evacuate HOST`` (a
real failure: move the servers) or ``nova-ha reset HOST`` (let the host rejoin with them).

The wave is read from the records in the CIB, not from memory: each host's latest ``fenced``
event (its ``since`` when the history lost it). A host belongs to a blocked wave when some
interval of ``fenced_window`` seconds holds its fencing and more than the limit of fencings.
So the decision is the same whoever asks and whenever: it does not lapse when the window has
passed (NovaEvacuate must not evacuate the wave ten minutes later), and a host fenced alone
long after a wave is not held.

A host fenced before the wave was visible (the first ones of it) had its evacuation started
already: that is not undone; the guard only stops new starts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nova_ha.lib import clock, log, params
from nova_ha.lib.lifecycle import AUTOMATIC_STARTS, UNFINISHED, Event, HostState

if TYPE_CHECKING:
    from nova_ha.lib.notify import Notifier
    from nova_ha.lib.state import HostRecord, StateStore

LOG = log.get("guard")


@dataclass
class Verdict:
    node: str
    blocked: bool
    window: float  # fenced_window
    setting: str  # max_fenced_hosts
    wave: list[str] = field(default_factory=list)  # hosts fenced in the busiest window
    limit: int | None = None  # most hosts allowed in a window; None: guard off
    total: int | None = None  # compute hosts the percentage was taken of

    def message(self) -> str:
        if self.limit is None:
            return "mass-failure guard off (max_fenced_hosts=0)"
        of = f" of {self.total} compute hosts" if self.total is not None else ""
        verdict = "holds" if self.blocked else "lets through"
        return (
            f"{len(self.wave)} hosts fenced within {self.window:g} s "
            f"({', '.join(self.wave)}); limit {self.limit}{of} "
            f"(max_fenced_hosts={self.setting}): the guard {verdict} {self.node}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "blocked": self.blocked,
            "wave": self.wave,
            "limit": self.limit,
            "total": self.total,
            "window": self.window,
            "setting": self.setting,
        }


def fenced_at(record: HostRecord) -> float | None:
    """When the host was last fenced: its latest 'fenced' event, else (history overflowed
    or hand-edited) its 'since' while it is still in an incident."""
    for event in reversed(record.history):
        if event.name == Event.FENCED:
            return clock.epoch(event.time)
    if record.state in UNFINISHED:
        return clock.epoch(record.since)
    return None


def limit_for(setting: str, total: Callable[[], int]) -> tuple[int | None, int | None]:
    """(most hosts allowed, total used) for max_fenced_hosts; (None, None) when off."""
    number, percent = params.parse_host_limit(setting)
    if not number:
        return None, None
    if not percent:
        return int(number), None
    hosts = total()
    return max(1, int(hosts * number / 100.0 + 1e-9)), hosts


def busiest_wave(times: Mapping[str, float], node: str, window: float) -> list[str]:
    """Most hosts whose fencing lies in one interval of `window` seconds that holds `node`'s."""
    mine = times[node]
    best: list[str] = [node]
    for start in sorted(t for t in times.values() if mine - window <= t <= mine):
        inside = sorted(
            (h for h, t in times.items() if start <= t <= start + window),
            key=lambda h: (times[h], h),
        )
        if len(inside) > len(best):
            best = inside
    return best


def check(
    records: Mapping[str, HostRecord],
    settings: params.EvacuationSettings,
    node: str,
    *,
    total_hosts: int | Callable[[], int] | None = None,
) -> Verdict:
    """The guard's verdict on evacuating `node` automatically, from records read already.

    `total_hosts`: the compute hosts a percentage is of (a number, or a function asked only
    when the answer matters, e.g. one Nova services listing); default: the records' count.
    """
    setting = settings.max_fenced_hosts
    window = settings.fenced_window
    times = {h: t for h, t in ((h, fenced_at(r)) for h, r in records.items()) if t is not None}
    verdict = Verdict(node=node, blocked=False, window=window, setting=setting)
    if node not in times:
        return verdict  # not fenced by nova-ha: nothing for the guard to hold
    verdict.wave = busiest_wave(times, node, window)

    def total() -> int:
        if callable(total_hosts):
            try:
                return max(int(total_hosts()), len(records))
            except Exception as err:  # fall back on what the CIB knows
                LOG.warning(
                    "cannot count the compute hosts (%s): using the CIB's %d", err, len(records)
                )
                return len(records)
        return len(records) if total_hosts is None else int(total_hosts)

    if len(verdict.wave) <= 1:  # a limit is at least 1: one host alone is never held
        verdict.limit = limit_for(setting, lambda: len(records))[0]
        return verdict
    verdict.limit, verdict.total = limit_for(setting, total)
    verdict.blocked = verdict.limit is not None and len(verdict.wave) > verdict.limit
    return verdict


def check_store(
    store: StateStore | None,
    settings: params.EvacuationSettings,
    node: str,
    *,
    nova: Any = None,
    deadline: Any = None,
    records: Mapping[str, HostRecord] | None = None,
) -> Verdict | None:
    """check() after one read of every record (or on `records`, read already, with this
    host's 'fenced' mark); None (not held) when there is no readable record: without the
    CIB nobody can count a wave, and a lone host must be evacuated."""
    from nova_ha.lib import state

    if store is None:
        return None
    try:
        # A record that does not decode is left out (reported where it is read), so one
        # hand-edited record cannot stop the guard for every host.
        records = store.readable()[0] if records is None else records
    except state.StateError as err:
        LOG.error(
            "mass-failure guard: cannot read the host records (%s): not holding %s", err, node
        )
        return None
    count: Callable[[], int] | None = None
    if nova is not None and deadline is not None:

        def count() -> int:
            return len(nova.services(deadline))

    return check(records, settings, node, total_hosts=count)


def hold(
    store: StateStore | None,
    verdict: Verdict,
    notifier: Notifier | None = None,
    record: HostRecord | None = None,
    host: str | None = None,
    release: str | None = None,
) -> bool:
    """Record and raise the block, once per incident: the event goes into the host's history
    and out through the notifier. Returns True when this call raised it. `release`: a lease
    owner whose lease on the host goes in the same write (the evacuation service's, granted
    by the fence action), so that an operator's 'nova-ha evacuate' is not kept waiting for
    it."""
    from nova_ha.lib import state

    LOG.warning(
        "not evacuating %s automatically: %s; run 'nova-ha evacuate %s' to evacuate "
        "it by hand or 'nova-ha reset %s' to let it rejoin",
        verdict.node,
        verdict.message(),
        verdict.node,
        verdict.node,
    )
    try:
        if record is None and store is not None:
            record = store.get(verdict.node)
    except state.StateError as err:
        LOG.error("cannot read the record of %s: %s", verdict.node, err)
    if (
        record is not None
        and record.history
        and record.history[-1].name == Event.EVACUATION_BLOCKED
    ):
        return False  # raised already, and nothing happened to the host since
    if store is not None:
        _record_block(store, verdict, record, release)
    if notifier is not None:
        _announce_block(notifier, verdict, host)
    return True


def _announce_block(notifier: Notifier, verdict: Verdict, host: str | None) -> None:
    notifier.send(
        Event.EVACUATION_BLOCKED,
        verdict.node,
        host=host,
        detail=verdict.message(),
        wave=verdict.wave,
        limit=verdict.limit,
        total_hosts=verdict.total,
        window=verdict.window,
        max_fenced_hosts=verdict.setting,
    )


def _record_block(
    store: StateStore, verdict: Verdict, record: HostRecord | None, release: str | None
) -> None:
    """The block as an event in the host's history (and `release`'s lease given up, in the
    same write); an error is logged: the block holds whether it is recorded or not."""
    from nova_ha.lib import state

    detail = (
        f"{len(verdict.wave)} fenced within {verdict.window:g}s, limit "
        f"{verdict.limit}: {' '.join(verdict.wave)}"
    )[: state.DETAIL_MAX]
    current = record.state if record is not None else HostState.FENCED
    ours = release is not None and record is not None and record.lease_owner == release
    try:
        store.mark(
            verdict.node,
            current,
            Event.EVACUATION_BLOCKED,
            detail,
            owner=release if ours else None,
            release=ours,
        )
    except state.StateError as err:
        LOG.error("cannot record the block of %s: %s", verdict.node, err)


def screen(
    store: StateStore | None,
    records: Mapping[str, HostRecord],
    settings: params.EvacuationSettings,
    nodes: Any,
    notifier: Notifier | None = None,
    *,
    total_hosts: int | Callable[[], int] | None = None,
    release: str | None = None,
) -> dict[str, Verdict]:
    """For a runner about to evacuate `nodes` (NovaEvacuate's monitor): the ones the guard
    holds, each held (recorded and raised once). The others may go ahead. `total_hosts` is
    asked at most once, and only if a wave of more than one host is seen."""
    cached: list[int] = []

    def count() -> int:
        if not cached:
            cached.append(total_hosts() if callable(total_hosts) else int(total_hosts or 0))
        return cached[0]

    held: dict[str, Verdict] = {}
    for node in nodes:
        record = records.get(node)
        if record is None or record.state not in AUTOMATIC_STARTS:
            continue
        verdict = check(
            records, settings, node, total_hosts=count if total_hosts is not None else None
        )
        if verdict.blocked:
            hold(
                store,
                verdict,
                notifier,
                record=record,
                host=record.service_host or None,
                release=release,
            )
            held[node] = verdict
    return held
