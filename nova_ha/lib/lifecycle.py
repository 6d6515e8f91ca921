"""The failed host's lifecycle, and every decision about it: one place decides.

A compute host's record (stored by ``state``) moves through the ``HostState`` values along
``TRANSITIONS``; each step adds an ``Event`` to its history, and the same event goes out to
the operators (``notify``). The decisions the agents and the CLI take about a failed host
are the pure functions below (after Patroni's ``ha.py``): each takes plain facts, the
record, the time, whether a lease holder's process is gone, what Nova says, and returns a
``Decision``: what to do, and why in one sentence, which the caller logs. The callers gather
the facts and act on the answer; none decides on its own.

=====================  ====================================  ==========================
decision               asked by                              actions
=====================  ====================================  ==========================
``service_decision``   the evacuation service, every record  ``ServiceAction``
``after_fence``        the fence action, once the host is    ``FenceAction``
                       off and forced down
``evacuation_start``   every runner, before its first        ``StartAction``
                       request (recovery.Lease)
``evacuation_outcome`` every runner, at its end              the record's next state
``operator_evacuate``  ``nova-ha evacuate``                  ``OperatorAction``
``operator_reset``     ``nova-ha reset``                     ``OperatorAction``
``compute_start``      NovaCompute's start                   ``RejoinAction``
``rejoin_step``        NovaCompute's start, after it         ``RejoinStep``
                       started nova-compute
=====================  ====================================  ==========================
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from nova_ha.lib import clock

if TYPE_CHECKING:
    from nova_ha.lib.state import HostRecord


class HostState(enum.StrEnum):
    """A host's state in its record (the values are what the CIB holds)."""

    OK = "ok"  # nothing to do (the default when unset)
    FENCED = "fenced"  # power-off confirmed and nova-compute forced down: evacuation needed
    EVACUATING = "evacuating"  # a runner is evacuating (written by earlier versions)
    EVACUATED = "evacuated"  # every server found was evacuated
    FAILED = "failed"  # evacuation gave up on at least one server


class Event(enum.StrEnum):
    """What happened to a host: its history's entries and the operators' notifications."""

    FENCED = "fenced"
    EVACUATION_STARTED = "evacuation_started"
    EVACUATION_FINISHED = "evacuation_finished"
    EVACUATION_FAILED = "evacuation_failed"
    EVACUATION_BLOCKED = "evacuation_blocked"  # the mass-failure guard
    REJOINED = "rejoined"
    RESET = "reset"
    # A guest of a healthy host (instance HA): recorded in the host's history without
    # changing the host's state (StateStore.note).
    INSTANCE_FAILED = "instance_failed"
    INSTANCE_RECOVERED = "instance_recovered"
    INSTANCE_RECOVERY_FAILED = "instance_recovery_failed"


TRANSITIONS: dict[HostState, frozenset[HostState]] = {
    HostState.OK: frozenset({HostState.FENCED}),
    # evacuated: nothing to move (no server, mode none or record); failed: could not start
    HostState.FENCED: frozenset({HostState.EVACUATING, HostState.EVACUATED, HostState.FAILED}),
    # fenced: fenced again, the evacuation to be resumed
    HostState.EVACUATING: frozenset({HostState.EVACUATED, HostState.FAILED, HostState.FENCED}),
    HostState.EVACUATED: frozenset({HostState.OK, HostState.FENCED}),
    HostState.FAILED: frozenset(
        {HostState.EVACUATING, HostState.EVACUATED, HostState.OK, HostState.FENCED}
    ),
}

# Every state but ok: only a fence action leaves ok, after the power-off was confirmed.
POWERED_OFF = frozenset(HostState) - {HostState.OK}
# Servers of the host may still be moving: nova-compute must not start there.
UNFINISHED = frozenset({HostState.FENCED, HostState.EVACUATING})
# Work is left: an incident an operator or NovaEvacuate still has to finish.
INCIDENT = frozenset({HostState.FENCED, HostState.EVACUATING, HostState.FAILED})
# Where an automatic runner would *start* evacuating, so where the mass-failure guard holds
# (a host 'evacuating' under a dead lease was started before the wave was seen: resumed).
AUTOMATIC_STARTS = frozenset({HostState.FENCED, HostState.FAILED})
WARNING_EVENTS = frozenset(
    {
        Event.EVACUATION_FAILED,
        Event.EVACUATION_BLOCKED,
        Event.INSTANCE_FAILED,
        Event.INSTANCE_RECOVERY_FAILED,
    }
)

FAILED_RETRY_AFTER = 120.0  # a host whose evacuation failed is tried again after this


def may_move(current: HostState, target: HostState) -> bool:
    """Whether a record may go from `current` to `target`. Marking the current state again
    is always allowed (counts, an event), so is fenced (a second fencing of the host)."""
    return target == current or target == HostState.FENCED or target in TRANSITIONS[current]


Action = TypeVar("Action", bound=enum.Enum)


@dataclass(frozen=True)
class Decision(Generic[Action]):
    """What to do, and why: the reason is a sentence for the log."""

    action: Action
    reason: str


def _live_holder(
    record: HostRecord, now: float, owner_gone: bool, me: str | None, skew: float | None = None
) -> str | None:
    """Who else works the host now: another owner whose lease is live and whose process is
    not known to be gone; None when nobody does."""
    live = record.lease_live(now) if skew is None else record.lease_live(now, skew)
    if not live or owner_gone or record.lease_owner == me:
        return None
    return record.lease_owner


# -- the evacuation service ----------------------------------------------------------------


class ServiceAction(enum.StrEnum):
    EVACUATE = "evacuate"  # give the host to a worker now
    LEAVE = "leave"  # another runner holds the lease
    WAIT = "wait"  # not yet: a pause after a failure
    HOLD = "hold"  # the mass-failure guard holds this incident until a person decides
    NOTHING = "nothing"  # no work for the service


def service_decision(
    record: HostRecord,
    now: float,
    *,
    me: str,
    owner_gone: bool = False,
    not_before: float = 0.0,
    held: bool = False,
) -> Decision[ServiceAction]:
    """What the evacuation service (lease owner `me`) does with a host's record now.

    `owner_gone`: the lease holder's process is known to be gone; `not_before`: the end of
    the pause after a failure; `held`: the mass-failure guard holds this incident."""
    state, act = record.state, ServiceAction
    if state in (HostState.OK, HostState.EVACUATED):
        return Decision(act.NOTHING, f"recorded {state}: nothing to do")
    if state == HostState.FENCED and record.mode == "none":
        return Decision(act.NOTHING, "recorded fenced with evacuate=none: nothing to move")
    if held:
        return Decision(act.HOLD, "held by the mass-failure guard until an operator decides")
    other = _live_holder(record, now, owner_gone, me)
    if other:
        return Decision(act.LEAVE, f"{other} holds the lease: left to it")
    if now < not_before:
        return Decision(act.WAIT, f"paused after a failure for {not_before - now:.0f} s more")
    return _service_free_host(record, now, me)


def _service_free_host(record: HostRecord, now: float, me: str) -> Decision[ServiceAction]:
    """service_decision() for a host in an incident that nobody else works, not held, not
    paused: evacuate it, unless a failed evacuation is too recent to try again."""
    state, act = record.state, ServiceAction
    if state == HostState.FENCED:
        if record.lease_owner == me and record.lease_live(now):
            return Decision(act.EVACUATE, "recorded fenced and handed over")
        if record.lease_owner:
            return Decision(
                act.EVACUATE, f"recorded fenced; the lease of {record.lease_owner} has ended"
            )
        return Decision(act.EVACUATE, "recorded fenced, nobody working it")
    if state == HostState.EVACUATING:  # written by an earlier version or another runner
        return Decision(act.EVACUATE, "evacuation left unfinished by its runner")
    ago = now - (clock.epoch(record.since) or 0.0)
    if ago >= FAILED_RETRY_AFTER:
        return Decision(act.EVACUATE, f"evacuation failed {ago:.0f} s ago; trying again")
    return Decision(
        act.WAIT, f"evacuation failed {ago:.0f} s ago; tried again {FAILED_RETRY_AFTER:g} s after"
    )


# -- the fence action ------------------------------------------------------------------------


class FenceAction(enum.StrEnum):
    FINISH = "finish"  # evacuate=none: record the host evacuated, nothing moved
    EVACUATE_HERE = "evacuate here"  # no record carries the hand-over: this action evacuates
    HAND_OVER = "hand over"  # the record handed the lease to the evacuation service
    LEAVE = "leave"  # another runner's live lease was kept: it goes on


def after_fence(mode: str, recorded: HostRecord | None, service: str) -> Decision[FenceAction]:
    """What the fence action does once the host is off and forced down, given its evacuation
    `mode` and the record it wrote (None when it could not write one) granting the lease to
    the evacuation service `service`."""
    if mode == "none":
        return Decision(FenceAction.FINISH, "evacuate=none: nothing evacuated")
    if recorded is None:  # run by hand, or the CIB out of reach
        return Decision(
            FenceAction.EVACUATE_HERE,
            "no cluster record to hand over with: evacuating in this action",
        )
    if recorded.lease_owner != service:
        return Decision(
            FenceAction.LEAVE, f"left to {recorded.lease_owner}, who holds the host's lease"
        )
    return Decision(FenceAction.HAND_OVER, f"handed over to {service}")


# -- every runner: its start and its end --------------------------------------------------------


class StartAction(enum.StrEnum):
    KEEP = "keep"  # the lease came with the record (handed over): ours, no write
    TAKE = "take"  # ask the store for the lease (one compare-and-swap)
    TAKEN = "taken"  # the store gave it: evacuate
    LEAVE = "leave"  # another runner holds it
    NOTHING = "nothing"  # nothing to evacuate any more
    UNLEASED = "unleased"  # the record cannot be read: evacuate without the lease


def evacuation_start(
    record: HostRecord | None,
    owner: str,
    now: float,
    renew_before: float,
    taken: bool | None = None,
) -> Decision[StartAction]:
    """What a runner (lease owner `owner`) does before its first request, from the host's
    record as just read (None: it cannot be read). `taken`: the store's answer, once asked
    (TAKE); `renew_before`: a lease with less left than this is asked for anew."""
    act = StartAction
    if record is None:
        # Nobody can coordinate through the record, and Nova itself refuses a second
        # evacuation of a server being rebuilt (409): the servers matter more than the lease.
        return Decision(act.UNLEASED, "evacuating without the lease")
    if record.state == HostState.OK:
        return Decision(act.NOTHING, "recorded ok (reset, or never fenced): nothing to evacuate")
    if record.state == HostState.EVACUATED:
        return Decision(act.NOTHING, f"already evacuated (since {record.since}); nothing to do")
    if taken is not None:
        return (
            Decision(act.TAKEN, f"lease taken by {owner}")
            if taken
            else Decision(act.LEAVE, "being evacuated by another runner: leaving it to them")
        )
    left = (record.lease_expires or 0.0) - now
    if record.lease_owner == owner and left > renew_before:
        return Decision(
            act.KEEP, f"handed over with the record: the lease is ours for {left:.0f} s"
        )
    return Decision(act.TAKE, f"taking the lease for {owner}")


@dataclass(frozen=True)
class Outcome:
    """The record's next state at the end of an evacuation, and its event."""

    state: HostState
    event: Event
    reason: str


INTERRUPTED = Outcome(HostState.FENCED, Event.EVACUATION_FAILED, "Nova unreachable, will resume")


def evacuation_outcome(failed: int, unfinished: int) -> Outcome:
    """The end of an evacuation that ran (Nova unreachable: ``INTERRUPTED``)."""
    if unfinished:
        # Back to fenced: NovaEvacuate resumes what is left (nothing finished is redone:
        # evacuated servers are no longer on the host).
        return Outcome(
            HostState.FENCED, Event.EVACUATION_FAILED, f"{unfinished} unfinished: resumed"
        )
    if failed:
        return Outcome(HostState.FAILED, Event.EVACUATION_FAILED, f"{failed} failed")
    return Outcome(HostState.EVACUATED, Event.EVACUATION_FINISHED, "every server evacuated")


# -- the operator ------------------------------------------------------------------------------


class OperatorAction(enum.StrEnum):
    GO = "go"  # do what was asked
    REFUSE = "refuse"
    NOTHING = "nothing"  # nothing to do: said so, success


def operator_evacuate(
    record: HostRecord, now: float, *, owner_gone: bool, service: str
) -> Decision[OperatorAction]:
    """Whether ``nova-ha evacuate`` may evacuate the host now. `owner_gone`: the lease
    holder's process is known to be gone; `service`: the evacuation service's owner name
    (its lease can be taken over)."""
    node = record.host
    holder = _live_holder(record, now, owner_gone, None)
    if record.state == HostState.OK:
        why = (
            f"{node} is recorded 'ok': nova-ha did not fence it, so its power-off is not "
            f"confirmed. Fence it first (stonith_admin --fence {node})."
        )
    elif record.state == HostState.EVACUATED:
        why = f"{node} is already evacuated (since {record.since}); nothing to do."
    elif holder:
        why = (
            f"{node} is being evacuated by {holder} (lease until "
            f"{clock.time_of_day(record.lease_expires or now)}); leaving it to them. If "
            "NovaEvacuate is not running, the lease ends then."
        )
    else:
        return Decision(
            OperatorAction.GO,
            f"{node} is recorded '{record.state}' and nobody works it: evacuating by hand",
        )
    if record.lease_owner == service:
        why += " Use --take-over if NovaEvacuate is stopped."
    return Decision(OperatorAction.REFUSE, why)


def operator_reset(
    record: HostRecord | None, now: float, *, owner_gone: bool, force: bool, skew: float
) -> Decision[OperatorAction]:
    """Whether ``nova-ha reset`` resets the record (None: it does not read: replaced)."""
    if record is None:
        return Decision(OperatorAction.GO, "the record does not read: replaced")
    node = record.host
    holder = _live_holder(record, now, owner_gone, None, skew)
    if holder and not force:
        left = (record.lease_expires or now) + skew - now
        return Decision(
            OperatorAction.REFUSE,
            (
                f"{node}: refusing: {holder} holds the lease for {left:.0f} s more (it is working "
                f"on the host now). Wait for it, or use --force if that process is gone."
            ),
        )
    if record.state == HostState.OK and record.lease_owner is None:
        return Decision(OperatorAction.NOTHING, f"{node}: nothing to reset (state ok, no lease)")
    return Decision(OperatorAction.GO, f"{node}: state {record.state} -> ok")


# -- the rejoin (NovaCompute) ----------------------------------------------------------------


class RejoinAction(enum.StrEnum):
    START = "start"  # nova-compute may start
    WAIT = "wait"  # not yet: evacuations may still run
    ASK_NOVA = "ask nova"  # the record allows it: Nova's migrations decide


def compute_start(
    record: HostRecord | None,
    host: str,
    *,
    unreadable: str | None = None,
    evacuations_running: int | None = None,
) -> Decision[RejoinAction]:
    """Whether nova-compute may start on a host (nova-compute deletes the local copies of
    servers it believes evacuated when it starts: starting before the evacuations finished
    would race them). `record`: None without a cluster record; `unreadable`: why it cannot
    be read; `evacuations_running`: Nova's evacuation migrations from the host not yet in a
    terminal state (None: not asked yet, asked only once the record allows a start)."""
    if unreadable is not None:
        return Decision(RejoinAction.WAIT, f"cannot read the host's cluster record ({unreadable})")
    if record is not None and record.state in UNFINISHED:
        return Decision(
            RejoinAction.WAIT,
            f"the host is recorded '{record.state}': its evacuation is not finished",
        )
    if evacuations_running is None:
        return Decision(RejoinAction.ASK_NOVA, "the record allows a start: asking Nova")
    if evacuations_running:
        return Decision(
            RejoinAction.WAIT,
            f"{evacuations_running} evacuation(s) from {host} still running in Nova",
        )
    return Decision(RejoinAction.START, f"no evacuation from {host} left running")


class RejoinStep(enum.StrEnum):
    DONE = "done"  # up: the rejoin is over
    ENABLE = "enable"  # up but disabled by nova-ha: enable it
    LIFT = "lift"  # lift nova-ha's force-down (the heartbeat is seen)
    LEAVE = "leave"  # forced down by someone else: not ours to lift
    WAIT = "wait"  # for the heartbeat


@dataclass(frozen=True)
class ComputeService:
    """Nova's view of the host's nova-compute, as the rejoin reads it."""

    up: bool
    forced_down: bool
    disabled: bool
    disabled_by_nova_ha: bool  # its disabled_reason names nova-ha
    beating: bool  # its heartbeat moved since nova-compute was started


def rejoin_step(svc: ComputeService, fenced_by_nova_ha: bool) -> Decision[RejoinStep]:
    """The next step after nova-compute started: a forced-down service reads 'down' whatever
    it does, so its heartbeat (updated_at moving) is what allows lifting the force-down. The
    reasons of DONE and LEAVE are the rejoin's note in the record."""
    if svc.up and not svc.forced_down:
        if svc.disabled and svc.disabled_by_nova_ha:
            return Decision(RejoinStep.ENABLE, "up, disabled by nova-ha: enabling it")
        return Decision(RejoinStep.DONE, "service up")
    if svc.forced_down and not (fenced_by_nova_ha or svc.disabled_by_nova_ha):
        return Decision(RejoinStep.LEAVE, "service forced down by someone else: left as it is")
    if svc.forced_down and svc.beating:
        return Decision(RejoinStep.LIFT, "heartbeat seen: lifting nova-ha's force-down")
    return Decision(RejoinStep.WAIT, "waiting for the service's heartbeat")
