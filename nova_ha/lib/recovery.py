"""One host's recovery in Nova, under the host's lease: force down, record, evacuate.

The stonith agent, NovaEvacuate and `nova-ha evacuate` all go through here, so the lease and
the record are handled the same way whoever does the work. The precondition, the host's
confirmed power-off, is an argument: every Nova write here takes the PowerOffConfirmed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from nova_ha.lib import clock, evacuation, lifecycle, log, state
from nova_ha.lib.lifecycle import Event, StartAction
from nova_ha.openstack.exceptions import NovaError

if TYPE_CHECKING:
    from nova_ha.lib import params
    from nova_ha.lib.proof import PowerOffConfirmed
    from nova_ha.openstack.compute import Nova
    from nova_ha.openstack.transport import Deadline
    from nova_ha.openstack.views import Service

LOG = log.get("recovery")
LEASE_MARGIN = 30.0  # the lease outlives the work by this much, so a slow write is not lost


@dataclass
class Options:
    policy: evacuation.Policy
    notifier: Any = None  # notify.Notifier: the outcome event of each evacuation

    @classmethod
    def from_settings(
        cls, settings: params.EvacuationSettings, mode: str, notifier: Any = None
    ) -> Options:
        """One evacuation's options: `mode` as decided for the host, the rest as set."""
        policy = evacuation.Policy(
            mode=mode,
            tag=settings.tag,
            max_parallel=settings.max_parallel,
            retries=settings.retries,
            target_hosts=settings.target_hosts,
            target_policy=settings.target_policy,
        )
        return cls(policy, notifier)


def force_down(
    nova: Nova, deadline: Deadline, proof: PowerOffConfirmed, known: Service | None = None
) -> Service:
    """Force the powered-off host's nova-compute down (what evacuation needs). Returns the
    service as it was, for disable(). `known`: the service as read moments ago (saves a
    round trip; forcing down and disabling are idempotent, so a stale copy does no harm)."""
    svc = known if known is not None else nova.service(deadline, proof.host)
    if not svc.forced_down:
        nova.force_down(deadline, svc, proof)
        LOG.info("nova-compute on %s forced down", proof.host)
    return svc


def disable(nova: Nova, deadline: Deadline, svc: Service) -> None:
    """Disable after forcing down, never before: disabling a service whose compute still
    looks up can block on a trait sync (a known failure of fence_compute on Train). Not
    needed to evacuate, so it runs alongside the evacuation; the reason names nova-ha, so
    NovaCompute re-enables only what nova-ha disabled."""
    if svc.status != "disabled":
        nova.update_service(
            deadline, svc, disabled_reason=f"nova-ha: fenced at {clock.iso_utc(time.time())}"
        )
        LOG.info("nova-compute on %s disabled", svc.host)


def record(
    store: state.StateStore | None, call: Callable[[state.StateStore], object], what: str
) -> bool:
    """Write to the cluster record; a failure is logged, never fatal for fencing."""
    if store is None:
        return False
    try:
        call(store)
        return True
    except state.StateError as err:
        LOG.error("cannot record %s: %s", what, err)
        return False


def incident_start(
    store: state.StateStore | None, node: str, known: state.HostRecord | None = None
) -> float:
    """When the host was last fenced (epoch, from its history: `known`, or read), less a
    margin for clock skew between this node and Nova; without a record, a window as long as
    any evacuation."""
    at = last_fenced(store, node, known)
    return at - 60.0 if at is not None else time.time() - 3600.0


def last_fenced(
    store: state.StateStore | None, node: str, known: state.HostRecord | None = None
) -> float | None:
    """When the host was last fenced (epoch), from its history (`known`, or read); None
    without a record."""
    if store is None and known is None:
        return None
    try:
        current = known if known is not None else store.get(node)  # type: ignore[union-attr]
    except state.StateError:
        return None
    events = [e for e in current.history if e.name == Event.FENCED]
    return clock.epoch(events[-1].time) if events else None


def host_fenced_at(store: state.StateStore | None, host: str) -> float | None:
    """When the node whose nova-compute is `host` (Nova's name) was last fenced (epoch);
    None without its record."""
    if store is None:
        return None
    try:
        records = store.all()
    except state.StateError:
        return None
    for node, record in records.items():
        if (record.service_host or node) == host:
            return last_fenced(None, node, record)
    return None


# What lets a runner go ahead (the others: leave the host, or nothing left to do).
_GOES_AHEAD = frozenset({StartAction.KEEP, StartAction.TAKEN, StartAction.UNLEASED})


class Lease:
    """Our hold on the host's lease; renewed while the work runs, checked before requests."""

    def __init__(self, store: state.StateStore | None, node: str, owner: str, ttl: float) -> None:
        self.store, self.node, self.owner, self.ttl = store, node, owner, ttl
        self.held = store is None  # without a cluster record there is nobody to share with
        self.ends = 0.0  # monotonic time the lease ends by our clock
        # Why the runner goes ahead or not (lifecycle.evacuation_start), once acquire ran.
        self.start = lifecycle.Decision(StartAction.UNLEASED, "no cluster record to share")

    def acquire(self, known: state.HostRecord | None = None) -> bool:
        """Take the lease as the lifecycle decides; `known`: the record as just read (saves
        a read). False (reason in `start`) when the runner must not go ahead."""
        if self.store is None:
            return True
        current: state.HostRecord | None = None
        try:
            current = known if known is not None else self.store.get(self.node)
            self.start = self._decide(current)
            if self.start.action is StartAction.TAKE:
                taken = self.store.acquire_lease(self.node, self.owner, self.ttl)
                self.start = self._decide(current, taken)
        except state.StateError as err:
            self.start = self._decide(None)
            LOG.error("cannot take the lease of %s (%s): %s", self.node, err, self.start.reason)
        self.held = self.start.action in _GOES_AHEAD
        left = self.ttl
        if self.start.action is StartAction.KEEP and current is not None:
            left = (current.lease_expires or 0.0) - time.time()  # a write saved
        self.ends = time.monotonic() + left
        return self.held

    def _decide(
        self, record: state.HostRecord | None, taken: bool | None = None
    ) -> lifecycle.Decision[StartAction]:
        return lifecycle.evacuation_start(
            record, self.owner, time.time(), self._renew_before(), taken
        )

    def _renew_before(self) -> float:
        # Renewing is a CIB write (a scheduler run): only when the lease is running out,
        # with room for a slow write.
        return max(LEASE_MARGIN, self.ttl / 3)

    def heartbeat(self) -> None:
        if (
            self.store is None
            or not self.held
            or self.ends - time.monotonic() > self._renew_before()
        ):
            return
        try:
            self.held = self.store.renew_lease(self.node, self.owner, self.ttl)
        except state.StateError as err:
            LOG.warning("cannot renew the lease of %s: %s", self.node, err)
        self.ends = time.monotonic() + self.ttl
        if not self.held:
            LOG.error("lost the lease of %s: stopping new requests", self.node)

    def release(self) -> None:
        if self.store is not None and self.held:
            record(self.store, lambda s: s.release_lease(self.node, self.owner), "lease release")
            self.held = False


def _record_outcome(
    store: state.StateStore | None,
    lease: Lease,
    outcome: lifecycle.Outcome,
    detail: str,
    summary: evacuation.Summary | None = None,
) -> None:
    """The outcome (with the summary's counts) and the lease's release, in one write (one
    scheduler run); only while the lease is ours, so a runner that lost it never overwrites
    its successor's outcome."""
    node, owner = lease.node, lease.owner
    found = evacuated = failed = None
    if summary is not None:
        found, evacuated, failed = (
            summary.found,
            summary.count("evacuated"),
            summary.count("failed"),
        )
    if record(
        store,
        lambda s: s.mark(
            node,
            outcome.state,
            outcome.event,
            detail,
            owner=owner,
            release=True,
            found=found,
            evacuated=evacuated,
            failed=failed,
        ),
        "outcome",
    ):
        lease.held = False


def evacuate_host(
    nova: Nova,
    store: state.StateStore | None,
    proof: PowerOffConfirmed,
    options: Options,
    deadline: Deadline,
    owner: str,
    progress: evacuation.Progress | None = None,
    prefetch: evacuation.Prefetch | None = None,
    lease: Lease | None = None,
    runner: str | None = None,
) -> evacuation.Summary | None:
    """Evacuate a fenced host under its lease. None when another runner holds the lease.

    `prefetch` and `lease`: Nova's reads and the host's lease, if the caller started them
    already. `runner`: who works, for the log and the record (the lease owner may name a
    role, e.g. the evacuation service, rather than one process). The outcome is the one
    record write of the evacuation, and it releases the lease in the same write.
    """
    # Over 40 lines only as formatted: each of its ten parameters has a line of its own.
    node, host = proof.node, proof.host
    if lease is None:
        lease = Lease(store, node, owner, deadline.remaining() + LEASE_MARGIN)
        lease.acquire()
    if prefetch is None:
        prefetch = evacuation.Prefetch(
            nova,
            deadline,
            host,
            lambda: incident_start(store, node),
            options.policy.target_policy,
        )
    if not lease.held:
        LOG.info("%s: %s", node, lease.start.reason)
        return None
    who = runner or owner
    # No record write here: the lease is what keeps other runners away, and every write is
    # a scheduler run. The start goes to the log and the notification channel.
    LOG.info("evacuation of %s started by %s", node, who)
    _notify(options, Event.EVACUATION_STARTED, proof, detail=f"by {who}")
    try:
        summary = _evacuate(nova, deadline, proof, options, lease, prefetch, progress)
    except NovaError as err:
        outcome = lifecycle.INTERRUPTED
        _record_outcome(store, lease, outcome, f"{outcome.reason}; by {who}")
        _notify(
            options,
            outcome.event,
            proof,
            state=outcome.state,
            detail=f"interrupted, will resume: {err}",
        )
        raise
    _finished(store, lease, options, proof, summary, who)
    return summary


def _evacuate(
    nova: Nova,
    deadline: Deadline,
    proof: PowerOffConfirmed,
    options: Options,
    lease: Lease,
    prefetch: evacuation.Prefetch,
    progress: evacuation.Progress | None,
) -> evacuation.Summary:
    """The servers' evacuation, new requests only while the lease is ours."""
    hooks = evacuation.Hooks(
        heartbeat=lease.heartbeat,
        may_request=lambda: lease.held,
        fenced_at=lambda host: host_fenced_at(lease.store, host),
    )
    if progress is not None:
        hooks = replace(hooks, progress=progress)
    return evacuation.evacuate_servers(
        nova,
        deadline,
        proof,
        options.policy,
        hooks,
        servers=prefetch.servers(),
        earlier=prefetch.earlier(),
        early=prefetch.targets,
    )


def _notify(options: Options, event: Event, proof: PowerOffConfirmed, **fields: Any) -> None:
    if options.notifier is not None:
        options.notifier.send(event, proof.node, host=proof.host, **fields)


def _finished(
    store: state.StateStore | None,
    lease: Lease,
    options: Options,
    proof: PowerOffConfirmed,
    summary: evacuation.Summary,
    who: str,
) -> None:
    """The evacuation ran: its outcome recorded (the lease released with it) and sent."""
    outcome = lifecycle.evacuation_outcome(summary.count("failed"), summary.count("unfinished"))
    took = summary.finished_after or time.monotonic() - summary.started
    _record_outcome(
        store,
        lease,
        outcome,
        f"{summary.found} found, {summary.count('evacuated')} evacuated, "
        f"{summary.count('failed')} failed, {summary.count('unfinished')} "
        f"unfinished in {took:.1f}s; by {who}",
        summary,
    )
    _notify(options, outcome.event, proof, summary=summary, state=outcome.state)
