"""The failed host's lifecycle: every decision from a table of (record, facts) -> (action,
reason), and the transition table. No store, no Nova: the decisions are pure functions."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from nova_ha.lib import clock, lifecycle, owners
from nova_ha.lib.lifecycle import (
    ComputeService,
    Event,
    FenceAction,
    HostState,
    OperatorAction,
    RejoinAction,
    RejoinStep,
    ServiceAction,
    StartAction,
)
from nova_ha.lib.state import HostRecord

NOW = 1_800_000_000.0
LIVE, EXPIRED = NOW + 100, NOW - 100
SERVICE = "NovaEvacuate"
OTHER = "nova-ha@c1:9"
OK, FENCED, EVACUATING, EVACUATED, FAILED = (
    HostState.OK,
    HostState.FENCED,
    HostState.EVACUATING,
    HostState.EVACUATED,
    HostState.FAILED,
)
# The lease as the record shows it: (owner, expires, the owner's process known gone).
LEASES = {
    "none": (None, None, False),
    "ours live": (SERVICE, LIVE, False),
    "ours expired": (SERVICE, EXPIRED, False),
    "other live": (OTHER, LIVE, False),
    "other expired": (OTHER, EXPIRED, False),
    "other dead": (OTHER, LIVE, True),  # live by its clock, but its process is gone
}


def _record(
    state: HostState,
    lease: str = "none",
    *,
    mode: str | None = "all",
    since_ago: float | None = 5.0,
) -> tuple[HostRecord, bool]:
    owner, expires, gone = LEASES[lease]
    since = None if since_ago is None else clock.iso_utc(NOW - since_ago)
    return HostRecord(
        "compute1", state=state, lease_owner=owner, lease_expires=expires, mode=mode, since=since
    ), gone


# -- the transition table -----------------------------------------------------------------------

ALLOWED = {  # besides staying put and (re)entering fenced, always allowed
    (OK, FENCED),
    (FENCED, EVACUATING),
    (FENCED, EVACUATED),
    (FENCED, FAILED),
    (EVACUATING, EVACUATED),
    (EVACUATING, FAILED),
    (EVACUATED, OK),
    (FAILED, EVACUATING),
    (FAILED, EVACUATED),
    (FAILED, OK),
}


@pytest.mark.parametrize("current", list(HostState))
@pytest.mark.parametrize("target", list(HostState))
def test_transition_table(current: HostState, target: HostState) -> None:
    expected = current == target or target == FENCED or (current, target) in ALLOWED
    assert lifecycle.may_move(current, target) == expected


@pytest.mark.parametrize(
    "current, target",
    [
        (OK, EVACUATING),
        (OK, EVACUATED),
        (OK, FAILED),
        (FENCED, OK),
        (EVACUATING, OK),
        (EVACUATED, EVACUATING),
        (EVACUATED, FAILED),
    ],
)
def test_refused_transitions(current: HostState, target: HostState) -> None:
    assert not lifecycle.may_move(current, target)


def test_values_are_what_the_cib_and_the_notifications_hold() -> None:
    assert [s.value for s in HostState] == ["ok", "fenced", "evacuating", "evacuated", "failed"]
    assert [e.value for e in Event] == [
        "fenced",
        "evacuation_started",
        "evacuation_finished",
        "evacuation_failed",
        "evacuation_blocked",
        "rejoined",
        "reset",
        "instance_failed",
        "instance_recovered",
        "instance_recovery_failed",
    ]
    assert lifecycle.POWERED_OFF == {FENCED, EVACUATING, EVACUATED, FAILED}


# -- the evacuation service ----------------------------------------------------------------------

_quiet = [
    (s, lease, {}, ServiceAction.NOTHING, f"recorded {s}: nothing to do")
    for s in (OK, EVACUATED)
    for lease in LEASES
]
SERVICE_TABLE = _quiet + [
    # state, lease, facts, action, reason
    (FENCED, "none", {}, ServiceAction.EVACUATE, "recorded fenced, nobody working it"),
    (FENCED, "ours live", {}, ServiceAction.EVACUATE, "recorded fenced and handed over"),
    (
        FENCED,
        "ours expired",
        {},
        ServiceAction.EVACUATE,
        "recorded fenced; the lease of NovaEvacuate has ended",
    ),
    (FENCED, "other live", {}, ServiceAction.LEAVE, f"{OTHER} holds the lease"),
    (FENCED, "other expired", {}, ServiceAction.EVACUATE, f"the lease of {OTHER} has ended"),
    (FENCED, "other dead", {}, ServiceAction.EVACUATE, f"the lease of {OTHER} has ended"),
    (FENCED, "none", {"mode": "record"}, ServiceAction.EVACUATE, "nobody working it"),
    (FENCED, "none", {"mode": "none"}, ServiceAction.NOTHING, "evacuate=none"),
    (FENCED, "ours live", {"mode": "none"}, ServiceAction.NOTHING, "evacuate=none"),
    (FENCED, "ours live", {"held": True}, ServiceAction.HOLD, "mass-failure guard"),
    (FENCED, "none", {"held": True}, ServiceAction.HOLD, "mass-failure guard"),
    (
        FENCED,
        "ours live",
        {"not_before": NOW + 5},
        ServiceAction.WAIT,
        "paused after a failure for 5 s more",
    ),
    (FENCED, "other live", {"not_before": NOW + 5}, ServiceAction.LEAVE, "holds the lease"),
    (FENCED, "ours live", {"not_before": NOW - 1}, ServiceAction.EVACUATE, "handed over"),
    (EVACUATING, "none", {}, ServiceAction.EVACUATE, "evacuation left unfinished"),
    (EVACUATING, "ours live", {}, ServiceAction.EVACUATE, "evacuation left unfinished"),
    (EVACUATING, "ours expired", {}, ServiceAction.EVACUATE, "evacuation left unfinished"),
    (EVACUATING, "other live", {}, ServiceAction.LEAVE, f"{OTHER} holds the lease"),
    (EVACUATING, "other expired", {}, ServiceAction.EVACUATE, "evacuation left unfinished"),
    (EVACUATING, "other dead", {}, ServiceAction.EVACUATE, "evacuation left unfinished"),
    (EVACUATING, "none", {"held": True}, ServiceAction.HOLD, "mass-failure guard"),
    (EVACUATING, "none", {"not_before": NOW + 60}, ServiceAction.WAIT, "paused"),
    (
        FAILED,
        "none",
        {"since_ago": 999},
        ServiceAction.EVACUATE,
        "evacuation failed 999 s ago; trying again",
    ),
    (FAILED, "none", {"since_ago": 30}, ServiceAction.WAIT, "evacuation failed 30 s ago"),
    (FAILED, "none", {"since_ago": 120}, ServiceAction.EVACUATE, "120 s ago; trying again"),
    (FAILED, "none", {"since_ago": 119}, ServiceAction.WAIT, "tried again 120 s after"),
    (FAILED, "none", {"since_ago": None}, ServiceAction.EVACUATE, "trying again"),
    (FAILED, "ours live", {"since_ago": 999}, ServiceAction.EVACUATE, "trying again"),
    (FAILED, "ours expired", {"since_ago": 999}, ServiceAction.EVACUATE, "trying again"),
    (FAILED, "other live", {"since_ago": 999}, ServiceAction.LEAVE, "holds the lease"),
    (FAILED, "other expired", {"since_ago": 999}, ServiceAction.EVACUATE, "trying again"),
    (FAILED, "other dead", {"since_ago": 999}, ServiceAction.EVACUATE, "trying again"),
    (FAILED, "none", {"since_ago": 999, "held": True}, ServiceAction.HOLD, "guard"),
    (FAILED, "none", {"since_ago": 999, "not_before": NOW + 15}, ServiceAction.WAIT, "paused"),
]


@pytest.mark.parametrize("state, lease, facts, action, reason", SERVICE_TABLE)
def test_service_decision(state, lease, facts, action, reason) -> None:
    facts = dict(facts)
    record, gone = _record(
        state, lease, mode=facts.pop("mode", "all"), since_ago=facts.pop("since_ago", 5.0)
    )
    decision = lifecycle.service_decision(record, NOW, me=SERVICE, owner_gone=gone, **facts)
    assert decision.action is action
    assert reason in decision.reason


# -- the fence action ---------------------------------------------------------------------------

FENCE_TABLE = [
    # mode, the record written (None: none could be), action, reason
    ("none", None, FenceAction.FINISH, "evacuate=none: nothing evacuated"),
    ("none", "ours live", FenceAction.FINISH, "evacuate=none"),
    ("all", None, FenceAction.EVACUATE_HERE, "no cluster record to hand over with"),
    ("tagged", None, FenceAction.EVACUATE_HERE, "evacuating in this action"),
    ("record", None, FenceAction.EVACUATE_HERE, "evacuating in this action"),
    ("all", "ours live", FenceAction.HAND_OVER, "handed over to NovaEvacuate"),
    ("record", "ours live", FenceAction.HAND_OVER, "handed over to NovaEvacuate"),
    ("all", "other live", FenceAction.LEAVE, f"left to {OTHER}, who holds the host's lease"),
]


@pytest.mark.parametrize("mode, lease, action, reason", FENCE_TABLE)
def test_after_fence(mode, lease, action, reason) -> None:
    recorded = None if lease is None else _record(FENCED, lease, mode=mode)[0]
    decision = lifecycle.after_fence(mode, recorded, SERVICE)
    assert decision.action is action
    assert reason in decision.reason


# -- every runner's start and end ---------------------------------------------------------------

RENEW_BEFORE = 30.0
START_TABLE = [
    # state (None: record unreadable), lease, the store's answer, action, reason
    (None, "none", None, StartAction.UNLEASED, "without the lease"),
    (OK, "none", None, StartAction.NOTHING, "recorded ok"),
    (OK, "ours live", None, StartAction.NOTHING, "recorded ok"),
    (EVACUATED, "none", None, StartAction.NOTHING, "already evacuated"),
    (EVACUATED, "ours live", False, StartAction.NOTHING, "already evacuated"),
    (FENCED, "ours live", None, StartAction.KEEP, "the lease is ours for 100 s"),
    (FENCED, "ours expired", None, StartAction.TAKE, "taking the lease"),
    (FENCED, "none", None, StartAction.TAKE, "taking the lease"),
    (FENCED, "other live", None, StartAction.TAKE, "taking the lease"),  # the store decides
    (FENCED, "other dead", None, StartAction.TAKE, "taking the lease"),
    (FENCED, "none", True, StartAction.TAKEN, "lease taken"),
    (FENCED, "other live", False, StartAction.LEAVE, "being evacuated by another runner"),
    (EVACUATING, "none", None, StartAction.TAKE, "taking the lease"),
    (EVACUATING, "ours live", None, StartAction.KEEP, "ours"),
    (FAILED, "other expired", None, StartAction.TAKE, "taking the lease"),
    (FAILED, "other expired", True, StartAction.TAKEN, "lease taken"),
    (FAILED, "other live", False, StartAction.LEAVE, "leaving it to them"),
]


@pytest.mark.parametrize("state, lease, taken, action, reason", START_TABLE)
def test_evacuation_start(state, lease, taken, action, reason) -> None:
    record = None if state is None else _record(state, lease)[0]
    decision = lifecycle.evacuation_start(record, SERVICE, NOW, RENEW_BEFORE, taken)
    assert decision.action is action
    assert reason in decision.reason


def test_a_lease_about_to_end_is_asked_for_anew() -> None:
    record = HostRecord(
        "compute1", state=FENCED, lease_owner=SERVICE, lease_expires=NOW + RENEW_BEFORE - 1
    )
    assert lifecycle.evacuation_start(record, SERVICE, NOW, RENEW_BEFORE).action is StartAction.TAKE


@pytest.mark.parametrize(
    "failed, unfinished, state, event",
    [
        (0, 0, EVACUATED, Event.EVACUATION_FINISHED),
        (2, 0, FAILED, Event.EVACUATION_FAILED),
        (0, 1, FENCED, Event.EVACUATION_FAILED),  # resumed by NovaEvacuate
        (2, 1, FENCED, Event.EVACUATION_FAILED),
    ],
)
def test_evacuation_outcome(failed, unfinished, state, event) -> None:
    outcome = lifecycle.evacuation_outcome(failed, unfinished)
    assert (outcome.state, outcome.event) == (state, event)
    assert (lifecycle.INTERRUPTED.state, lifecycle.INTERRUPTED.event) == (
        FENCED,
        Event.EVACUATION_FAILED,
    )


# -- the operator -------------------------------------------------------------------------------

_go = [
    (s, lease, OperatorAction.GO, "evacuating by hand")
    for s in (FENCED, EVACUATING, FAILED)
    for lease in ("none", "ours expired", "other expired", "other dead")
]
EVACUATE_TABLE = _go + [
    (OK, "none", OperatorAction.REFUSE, "recorded 'ok': nova-ha did not fence it"),
    (OK, "ours live", OperatorAction.REFUSE, "Use --take-over"),
    (EVACUATED, "none", OperatorAction.REFUSE, "already evacuated (since "),
    (
        FENCED,
        "ours live",
        OperatorAction.REFUSE,
        "being evacuated by NovaEvacuate (lease until "
        f"{clock.time_of_day(LIVE)}); leaving it to them. If NovaEvacuate is not running, the "
        "lease ends then. Use --take-over if NovaEvacuate is stopped.",
    ),
    (EVACUATING, "ours live", OperatorAction.REFUSE, "Use --take-over"),
    (FAILED, "ours live", OperatorAction.REFUSE, "Use --take-over"),
    (FENCED, "other live", OperatorAction.REFUSE, f"being evacuated by {OTHER}"),
    (EVACUATING, "other live", OperatorAction.REFUSE, f"being evacuated by {OTHER}"),
    (FAILED, "other live", OperatorAction.REFUSE, f"being evacuated by {OTHER}"),
]


@pytest.mark.parametrize("state, lease, action, reason", EVACUATE_TABLE)
def test_operator_evacuate(state, lease, action, reason) -> None:
    record, gone = _record(state, lease)
    decision = lifecycle.operator_evacuate(record, NOW, owner_gone=gone, service=SERVICE)
    assert decision.action is action
    assert reason in decision.reason
    if lease.startswith("other"):
        assert "--take-over" not in decision.reason  # only the service's lease is taken over


RESET_TABLE = [
    # state (None: unreadable), lease, --force, action, reason
    (None, "none", False, OperatorAction.GO, "does not read"),
    (OK, "none", False, OperatorAction.NOTHING, "nothing to reset (state ok, no lease)"),
    (OK, "other expired", False, OperatorAction.GO, "state ok -> ok"),
    (OK, "other live", False, OperatorAction.REFUSE, "holds the lease"),
    (FENCED, "none", False, OperatorAction.GO, "state fenced -> ok"),
    (
        FENCED,
        "other live",
        False,
        OperatorAction.REFUSE,
        f"refusing: {OTHER} holds the lease for 110 s more",
    ),
    (FENCED, "other live", True, OperatorAction.GO, "state fenced -> ok"),
    (FENCED, "ours live", False, OperatorAction.REFUSE, "use --force if that process is gone"),
    (FENCED, "other expired", False, OperatorAction.GO, "-> ok"),
    (FENCED, "other dead", False, OperatorAction.GO, "-> ok"),
    (EVACUATING, "other live", False, OperatorAction.REFUSE, "holds the lease"),
    (EVACUATING, "other dead", False, OperatorAction.GO, "-> ok"),
    (EVACUATED, "none", False, OperatorAction.GO, "state evacuated -> ok"),
    (FAILED, "none", False, OperatorAction.GO, "state failed -> ok"),
    (FAILED, "other live", True, OperatorAction.GO, "-> ok"),
]


@pytest.mark.parametrize("state, lease, force, action, reason", RESET_TABLE)
def test_operator_reset(state, lease, force, action, reason) -> None:
    record, gone = (None, False) if state is None else _record(state, lease)
    decision = lifecycle.operator_reset(record, NOW, owner_gone=gone, force=force, skew=10.0)
    assert decision.action is action
    assert reason in decision.reason


# -- the rejoin ---------------------------------------------------------------------------------

_finished = [
    (
        s,
        running,
        RejoinAction.START
        if running == 0
        else RejoinAction.ASK_NOVA
        if running is None
        else RejoinAction.WAIT,
        "no evacuation"
        if running == 0
        else "asking Nova"
        if running is None
        else "2 evacuation(s) from compute1.dc still running in Nova",
    )
    for s in (None, OK, EVACUATED, FAILED)
    for running in (None, 0, 2)
]
COMPUTE_TABLE = _finished + [
    (s, running, RejoinAction.WAIT, f"the host is recorded '{s}': its evacuation is not finished")
    for s in (FENCED, EVACUATING)
    for running in (None, 0, 2)
]


@pytest.mark.parametrize("state, running, action, reason", COMPUTE_TABLE)
def test_compute_start(state, running, action, reason) -> None:
    record = None if state is None else _record(state)[0]
    decision = lifecycle.compute_start(record, "compute1.dc", evacuations_running=running)
    assert decision.action is action
    assert reason in decision.reason


def test_compute_start_waits_for_an_unreadable_record() -> None:
    decision = lifecycle.compute_start(
        None, "compute1.dc", unreadable="bad XML", evacuations_running=0
    )
    assert decision == lifecycle.Decision(
        RejoinAction.WAIT, "cannot read the host's cluster record (bad XML)"
    )


REJOIN_TABLE = [
    # up, forced down, disabled, by nova-ha, beating, fenced by nova-ha -> step, reason
    (True, False, False, False, True, True, RejoinStep.DONE, "service up"),
    (True, False, True, True, True, True, RejoinStep.ENABLE, "disabled by nova-ha"),
    (True, False, True, False, True, True, RejoinStep.DONE, "service up"),  # operator's own
    (
        False,
        True,
        True,
        False,
        True,
        False,
        RejoinStep.LEAVE,
        "service forced down by someone else: left as it is",
    ),
    (False, True, True, True, True, True, RejoinStep.LIFT, "heartbeat seen"),
    (False, True, True, True, True, False, RejoinStep.LIFT, "heartbeat seen"),
    (False, True, False, False, True, True, RejoinStep.LIFT, "heartbeat seen"),
    (False, True, True, True, False, True, RejoinStep.WAIT, "heartbeat"),
    (False, False, False, False, False, True, RejoinStep.WAIT, "heartbeat"),
    (False, False, True, True, True, False, RejoinStep.WAIT, "heartbeat"),
]


@pytest.mark.parametrize("up, forced, disabled, ours, beating, fenced, step, reason", REJOIN_TABLE)
def test_rejoin_step(up, forced, disabled, ours, beating, fenced, step, reason) -> None:
    svc = ComputeService(
        up=up, forced_down=forced, disabled=disabled, disabled_by_nova_ha=ours, beating=beating
    )
    decision = lifecycle.rejoin_step(svc, fenced)
    assert decision.action is step
    assert reason in decision.reason


# -- the small helpers: time and lease owners ---------------------------------------------------


def test_clock_round_trip() -> None:
    assert clock.iso_utc(NOW) == "2027-01-15T08:00:00Z"
    assert clock.epoch("2027-01-15T08:00:00Z") == NOW
    assert clock.time_of_day(NOW + 61) == "08:01:01Z"
    assert clock.epoch(None) is None and clock.epoch("") is None
    assert clock.epoch("15 Jan 2027") is None


def test_owner_gone_only_for_a_dead_process_of_this_node() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead = int(done.stdout)
    assert owners.gone(owners.name("fence_nova_evacuate", dead))
    assert not owners.gone(owners.name("fence_nova_evacuate"))  # this process
    assert not owners.gone(f"fence_nova_evacuate@not-{os.uname().nodename}:{dead}")
    assert not owners.gone(SERVICE) and not owners.gone(None)
