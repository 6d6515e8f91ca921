"""One server's evacuation as a state machine: its states, the events that move it, and the
one pure function that decides each step.

``step(state, event, facts)`` returns the server's next state, what the runner does next
(``ServerAction``) and why in one sentence (the log line), plus what the server's outcome
says from then on. No Nova and no clock here: the runner (``evacuation.Runner``) gathers the
facts, feeds the events and carries out the actions; it decides nothing itself.

==============================  ===========================  ==============================
state                           event                        next state, action
==============================  ===========================  ==============================
found (listed on the host)      listed                       planned, choose a target |
                                                             skipped, report | rebuilding,
                                                             poll | requested, poll (asked
                                                             earlier)
found (no longer on the host)   moved earlier                requested, poll
planned                         target chosen                planned, request
planned                         target dropped               planned, request (no host)
planned                         accepted                     requested, follow
planned                         refused: conflict            requested, follow (rebuilding)
                                                             | retry
planned                         refused: bad request         planned, fall back (a host
                                                             named) | retry
planned                         request failed               retry
planned                         refused: not found           planned, fall back (a host
                                                             named) | gone, report
planned                         lease lost                   unfinished, give up
retrying                        retry due                    planned, request
requested/rebuilding/starting   shows a task                 rebuilding (starting), poll
requested/rebuilding/starting   shows active elsewhere       running, report
requested/rebuilding            landed stopped               stopped, report | starting,
                                                             start | same, read history
starting                        landed stopped               stopped, report
starting                        start accepted               starting, poll
starting                        start refused                failed, report
requested/rebuilding/starting   shows error                  planned, fall back (on the
                                                             source, a host named) | retry
                                                             (on the source) | failed
requested/rebuilding/starting   still on the source          planned, fall back (its
                                                             migration failed, a host
                                                             named) | retry (failed) |
                                                             same, poll
requested/rebuilding/starting   shows another status         same, poll
requested/rebuilding/starting   vanished                     gone, report
every live state                deadline passed              unfinished, give up
==============================  ===========================  ==============================

"retry" is: retrying, retry later while attempts and time remain; failed, report otherwise.
"fall back" is for a request that named a target host (target_policy=spread, target_hosts)
that Nova refused: at once (404 "Compute host ... not found", 400 "The target host can't be
the same one", seen on Nova 34), or after accepting it (202, then its scheduler's filters
refuse the host: the migration errors and the server stays on the source in ERROR, "No valid
host was found", seen on Nova 34 with a disabled host). The host is dropped and the server
asked again at once with no host: the scheduler chooses. At most once per server: the
request after it names no host.
Every other (state, event) pair is refused with a ValueError: a runner that fed one has a
bug (so it is no NovaHaError, which nova-ha's callers survive).

What Nova does, and so what the plan step follows (the task and vm states below):

* rebuilding / rebuild_block_device_mapping / rebuild_spawning: an evacuation is already under
  way (an earlier run asked for it): followed, not asked again. Never a second request: Nova
  does not check the task state of an evacuation (its check_instance_state(task_state=None)
  disables the check) and two rebuilds of one server break it (seen on Nova 34).
* host-local tasks (spawning, networking, block_device_mapping, scheduling, rebooting*,
  powering-on/off, pausing, unpausing, suspending, resuming, rescuing, unrescuing,
  updating_password, image_*): the work ran on the dead host and can never finish; Nova
  evacuates such a server as it is and the rebuild replaces the task.
* vm_state building / paused / suspended / rescued: Nova evacuates only active, stopped and
  error servers; their state lived in the dead host's memory, so they are reset to 'error'
  (which also clears the task) and evacuated; Nova rebuilds them ACTIVE elsewhere.
* From microversion 2.95 Nova lands evacuated servers SHUTOFF (its guard against a source
  that may still run them). nova-ha asks below 2.95 (compute.EVACUATE_BELOW): the source is
  confirmed off, servers land as they were, one action each. Servers an older run asked at
  >= 2.95 and that were running are started again (os-start) and followed until ACTIVE.
* deleting / soft-deleting, migrations and resizes (migrating, resize_*), shelving*,
  unshelving, restoring: these involve another host or the user's intent to remove the
  server; resetting them could lose data, so they are skipped and reported for the operator.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

HOST_LOCAL_TASKS = frozenset(
    {
        "scheduling",
        "block_device_mapping",
        "networking",
        "spawning",
        "rebooting",
        "reboot_pending",
        "reboot_started",
        "rebooting_hard",
        "reboot_pending_hard",
        "reboot_started_hard",
        "powering-off",
        "powering-on",
        "pausing",
        "unpausing",
        "suspending",
        "resuming",
        "rescuing",
        "unrescuing",
        "updating_password",
        "image_snapshot",
        "image_snapshot_pending",
        "image_pending_upload",
        "image_uploading",
        "image_backup",
    }
)
RESET_VM_STATES = frozenset({"paused", "suspended", "rescued", "building"})
EVACUABLE_VM_STATES = frozenset({"active", "stopped", "error"})
MAX_BACKOFF = 10.0


class ServerState(enum.StrEnum):
    """Where one server's evacuation stands."""

    FOUND = "found"  # listed on the powered-off host (or asked earlier), not yet planned
    PLANNED = "planned"  # to be requested in the next batch of requests
    RETRYING = "retrying"  # an attempt failed: requested again after a pause
    REQUESTED = "requested"  # Nova accepted the evacuation (ours, or an earlier runner's)
    REBUILDING = "rebuilding"  # Nova shows a task under way (the rebuild elsewhere)
    STARTING = "starting"  # Nova landed it SHUTOFF (>= 2.95) though it ran: start asked
    RUNNING = "running"  # ACTIVE on another host
    STOPPED = "stopped"  # SHUTOFF on another host: stopped before, or its start did nothing
    FAILED = "failed"  # given up: attempts or time used up, or broken on its new host
    SKIPPED = "skipped"  # not to be evacuated (not tagged, a task involving another host...)
    GONE = "gone"  # deleted meanwhile
    UNFINISHED = "unfinished"  # the deadline passed, or the lease was lost, before its end


class ServerEvent(enum.StrEnum):
    """What the runner saw or was told about one server."""

    LISTED = "listed"  # found on the powered-off host
    MOVED_EARLIER = "moved earlier"  # asked earlier in this incident, no longer on the host
    LEASE_LOST = "lease lost"  # the safety gate closed before a request
    ACCEPTED = "accepted"  # Nova accepted the evacuation
    REFUSED_CONFLICT = "refused: conflict"  # 409 (the server's state does not allow it)
    REFUSED_NOT_FOUND = "refused: not found"  # 404: no such server any more
    REFUSED_BAD_REQUEST = "refused: bad request"  # 400
    REQUEST_FAILED = "request failed"  # any other error (5xx, unreachable, timeout...)
    SHOWS_TASK = "shows a task"  # Nova shows a task under way (rebuilding, powering-on...)
    SHOWS_ACTIVE = "shows active elsewhere"  # ACTIVE on another host, no task
    LANDED_STOPPED = "landed stopped"  # SHUTOFF on another host, no task
    SHOWS_ERROR = "shows error"  # ERROR, no task
    STILL_ON_SOURCE = "still on the source"  # on the powered-off host, no task, no error
    SHOWS_OTHER = "shows another status"  # elsewhere, in a status that is no end
    START_ACCEPTED = "start accepted"
    START_REFUSED = "start refused"
    VANISHED = "vanished"  # deleted while followed
    RETRY_DUE = "retry due"  # the pause after a failed attempt is over
    TARGET_CHOSEN = "target chosen"  # a host named for the request, or none (the scheduler)
    TARGET_DROPPED = "target dropped"  # the refused host is no target any more
    REBUILD_LOST = "rebuild lost"  # its rebuild's host is forced down: it died with it
    DEADLINE_PASSED = "deadline passed"  # evacuate_timeout reached


class ServerAction(enum.StrEnum):
    """What the runner does next for the server."""

    CHOOSE_TARGET = "choose a target"  # the target host of its request (or none)
    REQUEST = "request evacuation"  # in the next batch of requests (gate first)
    FALL_BACK = "fall back to the scheduler"  # drop the refused host, then request again
    FOLLOW = "follow"  # note and report the acceptance, then poll
    POLL = "poll"  # look at it again next round
    READ_HISTORY = "read history"  # read its instance actions: was it stopped before?
    START = "start the server"  # os-start
    RETRY_LATER = "retry after backoff"  # report the retry, request again after backoff()
    REPORT = "report"  # final: report it finished
    GIVE_UP = "give up"  # final, not reported one by one: the summary tells


# The words of the evacuation summary, the notifications and `nova-ha evacuate`.
RESULTS: dict[ServerState, str] = {
    ServerState.RUNNING: "evacuated",
    ServerState.STOPPED: "evacuated",
    ServerState.FAILED: "failed",
    ServerState.SKIPPED: "skipped",
    ServerState.GONE: "gone",
    ServerState.UNFINISHED: "unfinished",
}
FINAL = frozenset(RESULTS)
FOLLOWED = (ServerState.REQUESTED, ServerState.REBUILDING, ServerState.STARTING)
LIVE = (ServerState.PLANNED, ServerState.RETRYING) + FOLLOWED


def result(state: ServerState) -> str:
    """The summary's word for a state: "pending" until the server's evacuation ends."""
    return RESULTS.get(state, "pending")


@dataclass(frozen=True)
class Facts:
    """What the runner knows when an event comes: what Nova showed, and its own counts."""

    host: str | None = None  # where Nova places the server
    status: str | None = None
    vm_state: str | None = None
    task: str | None = None
    fault: str | None = None  # the message of its fault
    rebuilding: bool = False  # a rebuild task: an evacuation under way
    rebuild_lost: bool = False  # ...whose target is the powered-off host: it died with it
    on_source: bool = False  # on the powered-off host
    tag: str | None = None  # evacuate=tagged: the tag; None: every server goes
    tagged: bool = False
    requested_earlier: bool = False  # an earlier runner asked in this incident
    target: str | None = None  # the host the request names (None: the scheduler's choice)
    choice: str = ""  # why that target
    error: str = ""  # what the refused or failed call said
    attempts: int = 0  # requests sent so far
    retries: int = 0  # evacuate_retries
    expired: bool = False  # the deadline has passed
    failed_migration: bool = False  # its newest evacuation migration from the source failed
    was_stopped: bool | None = None  # stopped before its evacuation (None: not known yet)
    detail: str = ""  # what its outcome says now


class Step(NamedTuple):
    state: ServerState
    action: ServerAction
    reason: str  # why, for the log
    detail: str | None = None  # what the outcome says from now on (None: unchanged)


def backoff(attempts: int) -> float:
    """The pause before asking again after `attempts` requests."""
    return min(2.0**attempts, MAX_BACKOFF)


def needs_reset(vm_state: str | None, rebuild_lost: bool = False) -> bool:
    """Reset to 'error' before the request: a state that lived in the dead host's memory, or
    a rebuild that died with it (Nova evacuates no server with a task)."""
    return vm_state in RESET_VM_STATES or rebuild_lost


S, A = ServerState, ServerAction
Rule = Callable[[ServerState, Facts], Step]


def _plan(state: ServerState, f: Facts) -> Step:
    if f.tag is not None and not f.tagged:
        return Step(S.SKIPPED, A.REPORT, f"not tagged {f.tag}", f"not tagged {f.tag}")
    if f.rebuild_lost:
        # Evacuated here from another failed host, this host died during the rebuild: the
        # rebuild will never end. Its state is reset, then it is evacuated again.
        why = "its evacuation to this host died with it: evacuating it again"
        return Step(S.PLANNED, A.CHOOSE_TARGET, why, "")
    if f.rebuilding:
        why = "evacuation already under way"
        return Step(S.REBUILDING, A.POLL, why, why)
    if f.task and f.task not in HOST_LOCAL_TASKS:
        why = f"task {f.task} involves another host or deletion: left to the operator"
        return Step(S.SKIPPED, A.REPORT, why, why)
    if (f.vm_state or "") not in EVACUABLE_VM_STATES | RESET_VM_STATES:
        why = f"vm_state {f.vm_state or ''} not evacuable"
        return Step(S.SKIPPED, A.REPORT, why, why)
    if f.requested_earlier:
        return _moved_earlier(state, f)
    return Step(S.PLANNED, A.CHOOSE_TARGET, f"to evacuate ({f.vm_state}, task {f.task})", "")


def _target_chosen(state: ServerState, f: Facts) -> Step:
    return Step(S.PLANNED, A.REQUEST, f"to {f.target or 'any host'}: {f.choice}")


def _target_dropped(state: ServerState, f: Facts) -> Step:
    return Step(S.PLANNED, A.REQUEST, "asking again with no host: the scheduler chooses")


def _fall_back(f: Facts, refusal: str) -> Step:
    return Step(S.PLANNED, A.FALL_BACK, f"target {f.target} refused ({refusal})")


def _moved_earlier(state: ServerState, f: Facts) -> Step:
    why = "evacuation requested earlier in this incident"
    return Step(S.REQUESTED, A.POLL, why, why)


def _lease_lost(state: ServerState, f: Facts) -> Step:
    why = "lease lost: another runner owns this host"
    return Step(S.UNFINISHED, A.GIVE_UP, why, why)


def _accepted(state: ServerState, f: Facts) -> Step:
    why = f"requested to {f.target}" if f.target else "requested"
    return Step(S.REQUESTED, A.FOLLOW, why, why)


def _attempt_failed(f: Facts, detail: str, retriable: bool = True) -> Step:
    """Asked again (after a pause) while attempts and time remain; given up otherwise."""
    if retriable and f.attempts <= f.retries and not f.expired:
        return Step(
            S.RETRYING, A.RETRY_LATER, f"attempt {f.attempts} failed ({detail}); retrying", detail
        )
    return Step(S.FAILED, A.REPORT, f"gave up after {f.attempts} attempts: {detail}", detail)


def _conflict(state: ServerState, f: Facts) -> Step:
    if f.rebuilding:  # 409 while an evacuation is under way: ours went through after all
        why = "already under way (409)"
        return Step(S.REQUESTED, A.FOLLOW, why, why)
    return _attempt_failed(
        f, f"Nova refused the evacuation (409, vm_state {f.vm_state}, task {f.task})"
    )


def _request_failed(state: ServerState, f: Facts) -> Step:
    return _attempt_failed(f, f.error)


def _bad_request(state: ServerState, f: Facts) -> Step:
    if f.target:
        return _fall_back(f, f.error)
    return _attempt_failed(f, f.error)


def _not_found(state: ServerState, f: Facts) -> Step:
    # With a host named, the 404 may be the host's ("Compute host ... not found"): asked
    # again with no host, a 404 then is the server's.
    if f.target:
        return _fall_back(f, f.error)
    return _gone(state, f)


def _gone(state: ServerState, f: Facts) -> Step:
    return Step(S.GONE, A.REPORT, "deleted meanwhile", "deleted meanwhile")


def _retry_due(state: ServerState, f: Facts) -> Step:
    return Step(S.PLANNED, A.REQUEST, f"asking again after {f.attempts} attempts")


def _rebuild_lost(state: ServerState, f: Facts) -> Step:
    why = f"its rebuild died with {f.target} (forced down since)"
    if f.attempts <= f.retries and not f.expired:
        return Step(S.PLANNED, A.CHOOSE_TARGET, f"{why}: evacuating it again", "")
    return Step(S.FAILED, A.REPORT, f"gave up after {f.attempts} attempts: {why}", why)


def _task_shown(state: ServerState, f: Facts) -> Step:
    stays = S.STARTING if state is S.STARTING else S.REBUILDING
    return Step(stays, A.POLL, f"Nova shows task {f.task} on {f.host}")


def _active(state: ServerState, f: Facts) -> Step:
    why = f"ACTIVE on {f.host}"
    return Step(S.RUNNING, A.REPORT, why, why)


def _landed_stopped(state: ServerState, f: Facts) -> Step:
    why = f"SHUTOFF on {f.host}"
    if state is S.STARTING or f.was_stopped:
        return Step(S.STOPPED, A.REPORT, why, why)
    if f.was_stopped is None:
        return Step(state, A.READ_HISTORY, f"{why}: was it stopped before? reading its actions")
    # From microversion 2.95 Nova stops evacuated servers, guarding against a source host
    # that might still run them. Ours is confirmed off: start what was running.
    return Step(S.STARTING, A.START, f"{why}, landed stopped by Nova though it ran: starting it")


def _start_accepted(state: ServerState, f: Facts) -> Step:
    return Step(S.STARTING, A.POLL, f"start accepted on {f.host}")


def _start_refused(state: ServerState, f: Facts) -> Step:
    why = f"SHUTOFF on {f.host}; starting it again failed: {f.error}"
    return Step(S.FAILED, A.REPORT, why, why)


def _error_shown(state: ServerState, f: Facts) -> Step:
    # Retried only on the powered-off source: a server that failed on its destination lives
    # on a host that is up, where Nova cannot evacuate it.
    if f.on_source and f.target:
        return _fall_back(f, f.fault or "server in ERROR on the source")
    return _attempt_failed(f, f.fault or "server in ERROR", retriable=f.on_source)


def _on_source(state: ServerState, f: Facts) -> Step:
    if f.failed_migration and f.target:
        return _fall_back(f, "its evacuation migration failed")
    if f.failed_migration:  # Nova undid the rebuild (e.g. no valid host): the request failed
        return _attempt_failed(f, "Nova found no host for it")
    # The moment before Nova moves a rebuilt server: its record names the source a little
    # longer (or the rebuild has not begun).
    return Step(state, A.POLL, "still on the source host, its evacuation not failed")


def _other_shown(state: ServerState, f: Facts) -> Step:
    return Step(state, A.POLL, f"{f.status} on {f.host}: not an end, looking again")


def _deadline(state: ServerState, f: Facts) -> Step:
    why = "evacuate_timeout reached"
    return Step(S.UNFINISHED, A.GIVE_UP, why, f.detail or why)


def _table() -> dict[tuple[ServerState, ServerEvent], Rule]:
    E = ServerEvent
    # Where a server is, what may happen to it there, and the rule that answers it.
    rules: dict[ServerState, dict[ServerEvent, Rule]] = {
        S.FOUND: {E.LISTED: _plan, E.MOVED_EARLIER: _moved_earlier},
        S.PLANNED: {
            E.LEASE_LOST: _lease_lost,
            E.TARGET_CHOSEN: _target_chosen,
            E.TARGET_DROPPED: _target_dropped,
            E.ACCEPTED: _accepted,
            E.REFUSED_CONFLICT: _conflict,
            E.REFUSED_NOT_FOUND: _not_found,
            E.REFUSED_BAD_REQUEST: _bad_request,
            E.REQUEST_FAILED: _request_failed,
        },
        S.RETRYING: {E.RETRY_DUE: _retry_due},
        S.STARTING: {E.START_ACCEPTED: _start_accepted, E.START_REFUSED: _start_refused},
    }
    followed: dict[ServerEvent, Rule] = {
        E.SHOWS_TASK: _task_shown,
        E.SHOWS_ACTIVE: _active,
        E.LANDED_STOPPED: _landed_stopped,
        E.SHOWS_ERROR: _error_shown,
        E.STILL_ON_SOURCE: _on_source,
        E.SHOWS_OTHER: _other_shown,
        E.VANISHED: _gone,
        E.REBUILD_LOST: _rebuild_lost,
    }
    for state in FOLLOWED:
        rules.setdefault(state, {}).update(followed)
    for state in LIVE:
        rules.setdefault(state, {})[E.DEADLINE_PASSED] = _deadline
    return {(state, event): rule for state, by in rules.items() for event, rule in by.items()}


TRANSITIONS = _table()


def step(state: ServerState, event: ServerEvent, facts: Facts) -> Step:
    """The server's next state, the runner's next action and why (the one transition)."""
    rule = TRANSITIONS.get((state, event))
    if rule is None:  # a bug of the runner's: every pair it feeds is in the table
        raise ValueError(f"a server {state} does not take the event '{event}'")
    return rule(state, facts)


def observed(status: str | None, task: str | None, on_source: bool) -> ServerEvent:
    """The event a look at a followed server is (its status, task and place)."""
    if status == "DELETED":  # listed by changes-since
        return ServerEvent.VANISHED
    if task:
        return ServerEvent.SHOWS_TASK
    if status == "ERROR":
        return ServerEvent.SHOWS_ERROR
    if on_source:
        return ServerEvent.STILL_ON_SOURCE
    if status == "ACTIVE":
        return ServerEvent.SHOWS_ACTIVE
    if status == "SHUTOFF":
        return ServerEvent.LANDED_STOPPED
    return ServerEvent.SHOWS_OTHER
