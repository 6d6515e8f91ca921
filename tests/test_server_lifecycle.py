"""One server's evacuation: the transition table, pair by pair, from (state, event, facts) to
(state, action, reason); the pairs it refuses; and the runner carrying out what it says
against a small scripted Nova (no simulator, no network)."""

from __future__ import annotations

import collections
import dataclasses
import itertools
import threading
import time

import pytest

from nova_ha.lib import evacuation, proof, server_lifecycle
from nova_ha.lib.server_lifecycle import (
    FINAL,
    FOLLOWED,
    LIVE,
    TRANSITIONS,
    Facts,
    ServerAction,
    ServerEvent,
    ServerState,
    step,
)
from nova_ha.openstack.exceptions import BadRequest, Conflict, Forbidden, NotFound, Unavailable
from nova_ha.openstack.transport import Deadline
from nova_ha.openstack.views import Hypervisor, Migration, Server, Service

S, E, A = ServerState, ServerEvent, ServerAction
ACTIVE = {"vm_state": "active"}
RETRY = {"attempts": 1, "retries": 2}  # attempts left
SPENT = {"attempts": 3, "retries": 2}  # none left
TAG = {"tag": "evacuable", "vm_state": "active"}
BACKOFF = server_lifecycle.backoff  # the runner's tests below make it 0

# (state, event, facts) -> (state, action, a piece of the reason)
ROWS = [
    # a rebuild whose host was forced down since (a second failed host): it died with it
    *[
        (
            state,
            E.REBUILD_LOST,
            {**RETRY, "target": "host2"},
            S.PLANNED,
            A.CHOOSE_TARGET,
            "its rebuild died with host2 (forced down since): evacuating it again",
        )
        for state in (S.REQUESTED, S.REBUILDING, S.STARTING)
    ],
    (
        S.REBUILDING,
        E.REBUILD_LOST,
        {**SPENT, "target": "host2"},
        S.FAILED,
        A.REPORT,
        "gave up after 3 attempts: its rebuild died with host2",
    ),
    # planning
    (S.FOUND, E.LISTED, ACTIVE, S.PLANNED, A.CHOOSE_TARGET, "to evacuate"),
    (S.FOUND, E.LISTED, {"vm_state": "stopped"}, S.PLANNED, A.CHOOSE_TARGET, "to evacuate"),
    (S.FOUND, E.LISTED, {"vm_state": "error"}, S.PLANNED, A.CHOOSE_TARGET, "to evacuate"),
    (S.FOUND, E.LISTED, {**TAG, "tagged": False}, S.SKIPPED, A.REPORT, "not tagged evacuable"),
    (S.FOUND, E.LISTED, {**TAG, "tagged": True}, S.PLANNED, A.CHOOSE_TARGET, "to evacuate"),
    (
        S.FOUND,
        E.LISTED,
        {"vm_state": "active", "task": "rebuilding", "rebuilding": True},
        S.REBUILDING,
        A.POLL,
        "evacuation already under way",
    ),
    (
        S.FOUND,
        E.LISTED,
        {
            "vm_state": "active",
            "task": "rebuild_spawning",
            "rebuilding": True,
            "rebuild_lost": True,
        },
        S.PLANNED,
        A.CHOOSE_TARGET,
        "its evacuation to this host died with it: evacuating it again",
    ),
    (
        S.FOUND,
        E.LISTED,
        {"vm_state": "active", "task": "migrating"},
        S.SKIPPED,
        A.REPORT,
        "task migrating involves another host or deletion",
    ),
    (
        S.FOUND,
        E.LISTED,
        {"vm_state": "active", "task": "deleting"},
        S.SKIPPED,
        A.REPORT,
        "left to the operator",
    ),
    (
        S.FOUND,
        E.LISTED,
        {"vm_state": "building", "task": "spawning"},
        S.PLANNED,
        A.CHOOSE_TARGET,
        "to evacuate",
    ),
    (S.FOUND, E.LISTED, {"vm_state": "paused"}, S.PLANNED, A.CHOOSE_TARGET, "to evacuate"),
    (
        S.FOUND,
        E.LISTED,
        {"vm_state": "shelved_offloaded"},
        S.SKIPPED,
        A.REPORT,
        "vm_state shelved_offloaded not evacuable",
    ),
    (S.FOUND, E.LISTED, {}, S.SKIPPED, A.REPORT, "vm_state  not evacuable"),
    (
        S.FOUND,
        E.LISTED,
        {**ACTIVE, "requested_earlier": True},
        S.REQUESTED,
        A.POLL,
        "requested earlier in this incident",
    ),
    (
        S.FOUND,
        E.LISTED,
        {"vm_state": "active", "task": "migrating", "requested_earlier": True},
        S.SKIPPED,
        A.REPORT,
        "task migrating",
    ),
    (S.FOUND, E.MOVED_EARLIER, {}, S.REQUESTED, A.POLL, "requested earlier in this incident"),
    # requests
    (S.PLANNED, E.LEASE_LOST, {}, S.UNFINISHED, A.GIVE_UP, "lease lost"),
    (S.PLANNED, E.ACCEPTED, {"target": "host2"}, S.REQUESTED, A.FOLLOW, "requested to host2"),
    (S.PLANNED, E.ACCEPTED, {}, S.REQUESTED, A.FOLLOW, "requested"),
    (
        S.PLANNED,
        E.REFUSED_CONFLICT,
        {"rebuilding": True},
        S.REQUESTED,
        A.FOLLOW,
        "already under way (409)",
    ),
    (
        S.PLANNED,
        E.REFUSED_CONFLICT,
        {**RETRY, "vm_state": "active"},
        S.RETRYING,
        A.RETRY_LATER,
        "attempt 1 failed (Nova refused the evacuation (409, vm_state active",
    ),
    (S.PLANNED, E.REFUSED_CONFLICT, SPENT, S.FAILED, A.REPORT, "gave up after 3 attempts"),
    (S.PLANNED, E.REFUSED_NOT_FOUND, {}, S.GONE, A.REPORT, "deleted meanwhile"),
    # target choice and the fall-back to the scheduler
    (
        S.PLANNED,
        E.TARGET_CHOSEN,
        {"target": "host3", "choice": "least loaded"},
        S.PLANNED,
        A.REQUEST,
        "to host3: least loaded",
    ),
    (S.PLANNED, E.TARGET_CHOSEN, {"choice": "policy"}, S.PLANNED, A.REQUEST, "to any host"),
    (S.PLANNED, E.TARGET_DROPPED, {}, S.PLANNED, A.REQUEST, "the scheduler chooses"),
    (
        S.PLANNED,
        E.REFUSED_NOT_FOUND,
        {"target": "h9", "error": "HTTP 404: Compute host h9 not found."},
        S.PLANNED,
        A.FALL_BACK,
        "target h9 refused (HTTP 404: Compute host h9 not found.)",
    ),
    (
        S.PLANNED,
        E.REFUSED_BAD_REQUEST,
        {**SPENT, "target": "host1", "error": "HTTP 400: The target host can't be the same one."},
        S.PLANNED,
        A.FALL_BACK,
        "target host1 refused",
    ),
    (
        S.PLANNED,
        E.REFUSED_BAD_REQUEST,
        {**RETRY, "error": "bad"},
        S.RETRYING,
        A.RETRY_LATER,
        "attempt 1 failed (bad); retrying",
    ),
    (S.PLANNED, E.REFUSED_BAD_REQUEST, {**RETRY, "expired": True}, S.FAILED, A.REPORT, "gave up"),
    (
        S.PLANNED,
        E.REQUEST_FAILED,
        {**RETRY, "error": "HTTP 503"},
        S.RETRYING,
        A.RETRY_LATER,
        "(HTTP 503); retrying",
    ),
    (
        S.PLANNED,
        E.REQUEST_FAILED,
        {"attempts": 1, "retries": 0, "error": "x"},
        S.FAILED,
        A.REPORT,
        "gave up after 1 attempts: x",
    ),
    (
        S.PLANNED,
        E.REQUEST_FAILED,
        {"attempts": 0, "retries": 0, "error": "x"},
        S.RETRYING,
        A.RETRY_LATER,
        "attempt 0 failed",
    ),  # the GET before the request failed: none sent
    (S.RETRYING, E.RETRY_DUE, {"attempts": 1}, S.PLANNED, A.REQUEST, "asking again"),
    # following
    (S.STARTING, E.START_ACCEPTED, {"host": "host2"}, S.STARTING, A.POLL, "start accepted"),
    (
        S.STARTING,
        E.START_REFUSED,
        {"host": "host2", "error": "409"},
        S.FAILED,
        A.REPORT,
        "SHUTOFF on host2; starting it again failed: 409",
    ),
    (
        S.STARTING,
        E.LANDED_STOPPED,
        {"host": "host2", "was_stopped": False},
        S.STOPPED,
        A.REPORT,
        "SHUTOFF on host2",
    ),
    (S.STARTING, E.SHOWS_TASK, {"task": "powering-on"}, S.STARTING, A.POLL, "powering-on"),
]
for _state in (S.REQUESTED, S.REBUILDING):
    ROWS += [
        (
            _state,
            E.SHOWS_TASK,
            {"task": "rebuild_spawning", "host": "host2"},
            S.REBUILDING,
            A.POLL,
            "Nova shows task rebuild_spawning on host2",
        ),
        (
            _state,
            E.LANDED_STOPPED,
            {"host": "host2", "was_stopped": True},
            S.STOPPED,
            A.REPORT,
            "SHUTOFF on host2",
        ),
        (
            _state,
            E.LANDED_STOPPED,
            {"host": "host2", "was_stopped": None},
            _state,
            A.READ_HISTORY,
            "was it stopped before?",
        ),
        (
            _state,
            E.LANDED_STOPPED,
            {"host": "host2", "was_stopped": False},
            S.STARTING,
            A.START,
            "starting it",
        ),
    ]
for _state in FOLLOWED:
    ROWS += [
        (_state, E.SHOWS_ACTIVE, {"host": "host2"}, S.RUNNING, A.REPORT, "ACTIVE on host2"),
        (
            _state,
            E.SHOWS_ERROR,
            {**RETRY, "on_source": True, "fault": "NoValidHost"},
            S.RETRYING,
            A.RETRY_LATER,
            "attempt 1 failed (NoValidHost)",
        ),
        (
            _state,
            E.SHOWS_ERROR,
            {**RETRY, "host": "host2"},
            S.FAILED,
            A.REPORT,
            "server in ERROR",
        ),  # on its new host: not retried, Nova cannot evacuate it there
        (
            _state,
            E.STILL_ON_SOURCE,
            {**RETRY, "failed_migration": True},
            S.RETRYING,
            A.RETRY_LATER,
            "Nova found no host for it",
        ),
        (
            _state,
            E.STILL_ON_SOURCE,
            {**SPENT, "failed_migration": True},
            S.FAILED,
            A.REPORT,
            "Nova found no host for it",
        ),
        (_state, E.STILL_ON_SOURCE, {}, _state, A.POLL, "still on the source"),
        (
            _state,
            E.SHOWS_ERROR,
            {**SPENT, "on_source": True, "target": "host3", "fault": "No valid host was found."},
            S.PLANNED,
            A.FALL_BACK,
            "target host3 refused (No valid host was found.)",
        ),
        (
            _state,
            E.STILL_ON_SOURCE,
            {"failed_migration": True, "target": "host3"},
            S.PLANNED,
            A.FALL_BACK,
            "its evacuation migration failed",
        ),
        (
            _state,
            E.SHOWS_ERROR,
            {**RETRY, "on_source": False, "target": "host3", "fault": "disk"},
            S.FAILED,
            A.REPORT,
            "gave up",
        ),  # broken on its target: no fall-back, Nova cannot evacuate from a live host
        (
            _state,
            E.SHOWS_OTHER,
            {"status": "PAUSED", "host": "host2"},
            _state,
            A.POLL,
            "PAUSED on host2",
        ),
        (_state, E.VANISHED, {}, S.GONE, A.REPORT, "deleted meanwhile"),
    ]
for _state in LIVE:
    ROWS.append(
        (_state, E.DEADLINE_PASSED, {}, S.UNFINISHED, A.GIVE_UP, "evacuate_timeout reached")
    )


@pytest.mark.parametrize("state, event, facts, new_state, action, reason", ROWS)
def test_transition(state, event, facts, new_state, action, reason) -> None:
    got = step(state, event, Facts(**facts))
    assert (got.state, got.action) == (new_state, action), got.reason
    assert reason in got.reason


def test_every_pair_of_the_table_has_a_row() -> None:
    assert {(row[0], row[1]) for row in ROWS} == set(TRANSITIONS)


REFUSED = [(s, e) for s in ServerState for e in ServerEvent if (s, e) not in TRANSITIONS]


@pytest.mark.parametrize("state, event", REFUSED)
def test_refused_pairs(state, event) -> None:
    with pytest.raises(ValueError, match="does not take the event"):
        step(state, event, Facts())


def test_refused_pairs_include_the_dangerous_ones() -> None:
    # A followed server is never requested again (two rebuilds break a server), an ended
    # one takes nothing, and a start is asked only for a server Nova landed stopped.
    for pair in [
        (S.REQUESTED, E.ACCEPTED),
        (S.REBUILDING, E.RETRY_DUE),
        (S.REQUESTED, E.START_ACCEPTED),
        (S.PLANNED, E.SHOWS_ACTIVE),
    ]:
        assert pair in REFUSED
    assert all((s, e) in REFUSED for s in FINAL for e in ServerEvent)
    assert len(TRANSITIONS) + len(REFUSED) == len(ServerState) * len(ServerEvent)


@pytest.mark.parametrize(
    "state, event, facts, detail",
    [
        (S.PLANNED, E.REQUEST_FAILED, {**RETRY, "error": "HTTP 503"}, "HTTP 503"),
        (S.REQUESTED, E.SHOWS_ERROR, {"fault": "disk"}, "disk"),
        (S.REQUESTED, E.SHOWS_TASK, {"task": "rebuilding", "detail": "requested"}, None),
        (S.REBUILDING, E.DEADLINE_PASSED, {"detail": "requested to host2"}, "requested to host2"),
        (S.RETRYING, E.DEADLINE_PASSED, {}, "evacuate_timeout reached"),
        (S.RETRYING, E.RETRY_DUE, {"detail": "HTTP 503"}, None),
        (S.FOUND, E.LISTED, ACTIVE, ""),
    ],
)
def test_what_the_outcome_says(state, event, facts, detail) -> None:
    """The outcome's detail (the summary lines): the error itself, not the log sentence;
    kept when a step has nothing new to say."""
    assert step(state, event, Facts(**facts)).detail == detail


@pytest.mark.parametrize(
    "status, task, on_source, event",
    [
        ("DELETED", None, False, E.VANISHED),
        ("ACTIVE", "rebuilding", False, E.SHOWS_TASK),
        ("ERROR", "rebuild_spawning", True, E.SHOWS_TASK),
        ("ERROR", None, True, E.SHOWS_ERROR),
        ("ERROR", None, False, E.SHOWS_ERROR),
        ("ACTIVE", None, True, E.STILL_ON_SOURCE),
        ("SHUTOFF", None, True, E.STILL_ON_SOURCE),
        ("ACTIVE", None, False, E.SHOWS_ACTIVE),
        ("SHUTOFF", None, False, E.LANDED_STOPPED),
        ("PAUSED", None, False, E.SHOWS_OTHER),
    ],
)
def test_what_a_look_is(status, task, on_source, event) -> None:
    assert server_lifecycle.observed(status, task, on_source) is event


def test_results_backoff_and_resets() -> None:
    assert [server_lifecycle.result(s) for s in (S.PLANNED, S.RUNNING, S.STOPPED, S.GONE)] == [
        "pending",
        "evacuated",
        "evacuated",
        "gone",
    ]
    assert [BACKOFF(n) for n in (0, 1, 3, 9)] == [1.0, 2.0, 8.0, 10.0]
    assert server_lifecycle.needs_reset("paused") and not server_lifecycle.needs_reset("active")


@pytest.mark.parametrize(
    "actions, stopped",
    [
        (["evacuate", "stop", "create"], True),
        (["start", "evacuate", "stop", "start", "create"], True),
        (["evacuate", "start", "stop", "create"], False),
        (["evacuate", "lock", "create"], False),
        (["stop", "create"], None),  # no evacuation in the history: the listing's word
    ],
)
def test_stopped_before(actions, stopped) -> None:
    assert evacuation.stopped_before(actions, None) is stopped


# -- the runner against a scripted Nova -------------------------------------------------------


class FakeNova:
    """Servers on host1; an accepted evacuation shows 'rebuilding' on host2 at the next look,
    then lands as `lands` says (SHUTOFF for every server: Nova at >= 2.95)."""

    def __init__(
        self,
        servers: list[Server],
        conflict: set[str] = frozenset(),
        lands: str = "SHUTOFF",
        refuses: dict[str, Exception | None] | None = None,
    ) -> None:
        self.views = {s.id: s for s in servers}
        self.conflict, self.lands = set(conflict), lands
        # named hosts Nova refuses: at once (the exception), or after a 202 (None)
        self.refuses = dict(refuses or {})
        self.calls: list[tuple[str, str]] = []
        self.named: list[tuple[str, str | None]] = []  # (server, the host its request named)
        self.landing: dict[str, str] = {}
        self.migrations: list[Migration] = []
        self._lock = threading.Lock()

    def evacuate_microversion(self, deadline):
        return "2.94"

    def server_time(self):
        return None  # no reply seen: the runner falls back to its own clock

    def services(self, deadline, host=None):
        return [
            Service(f"s{i}", h, "enabled", state, h == "host1", None)
            for i, (h, state) in enumerate((("host1", "down"), ("host2", "up"), ("host3", "up")))
        ]

    def hypervisors(self, deadline):
        return [Hypervisor(f"uuid-{h}", h, "up", "enabled", h) for h in ("host2", "host3")]

    def placement_rooms(self, deadline, vcpus, ram_mb):
        raise Unavailable("placement: HTTP 403", 403)  # counting only

    def _call(self, name: str, server_id: str) -> None:
        with self._lock:
            self.calls.append((name, server_id))

    def server(self, deadline, server_id):
        self._call("get", server_id)
        if server_id not in self.views:
            raise NotFound("no such server", 404)
        return self.views[server_id]

    def evacuate(self, deadline, server, proof_, target=None):
        assert proof_.host == server.host == "host1"
        self._call("evacuate", server.id)
        self.named.append((server.id, target))
        if target in self.refuses and self.refuses[target] is not None:
            raise self.refuses[target]
        if server.id not in self.views:
            raise NotFound("no such server", 404)
        if server.id in self.conflict:
            return False
        if target in self.refuses:  # accepted, then the scheduler refuses the host
            self.views[server.id] = dataclasses.replace(
                server, vm_state="error", status="ERROR", fault="No valid host was found. "
            )
            return True
        self.views[server.id] = dataclasses.replace(server, task_state="rebuilding")
        self.landing[server.id] = target or "host2"  # the scheduler's choice: host2
        return True

    def reset_state(self, deadline, server, state, proof_):
        self._call("reset", server.id)
        self.views[server.id] = dataclasses.replace(server, vm_state=state)

    def start_server(self, deadline, server_id):
        self._call("start", server_id)
        self.views[server_id] = dataclasses.replace(self.views[server_id], task_state="powering-on")

    def instance_actions(self, deadline, server_id):
        return ["evacuate", "create"]

    def evacuation_migrations(self, deadline, source_host=None, server_id=None):
        if server_id is not None:  # the planner's question about a rebuilding server
            return [m for m in self.migrations if m.server_id == server_id]
        return [Migration(server_id=sid, status="error") for sid in self.conflict]

    def servers_changed_since(self, deadline, since):
        """Every view, then one step on: rebuilding lands, powering-on runs."""
        shown = list(self.views.values())
        for view in shown:
            if view.task_state == "rebuilding":
                status = self.lands if view.vm_state != "stopped" else "SHUTOFF"
                self.views[view.id] = dataclasses.replace(
                    view, host=self.landing.get(view.id, "host2"), status=status, task_state=None
                )
            elif view.task_state == "powering-on":
                self.views[view.id] = dataclasses.replace(view, status="ACTIVE", task_state=None)
        return shown


def _server(sid: str, vm_state: str = "active", task: str | None = None) -> Server:
    status = {"active": "ACTIVE", "stopped": "SHUTOFF"}.get(vm_state, "ERROR")
    return Server(
        id=sid, name=f"vm-{sid}", status=status, host="host1", task_state=task, vm_state=vm_state
    )


@pytest.fixture(autouse=True)
def _fast(monkeypatch):
    monkeypatch.setattr(evacuation, "POLL_INTERVAL", 0.01)
    monkeypatch.setattr(server_lifecycle, "backoff", lambda attempts: 0.0)


def _evacuate(nova: FakeNova, seconds: float = 10.0, **kw) -> tuple[evacuation.Summary, list]:
    """One evacuation of host1 (power-off confirmed); kw: max_parallel, retries,
    may_request, fenced_at (the hooks')."""
    events = []
    summary = evacuation.evacuate_servers(
        nova,
        Deadline(seconds),
        proof.by_bmc("c1", "host1"),
        evacuation.Policy("all", "evacuable", kw.get("max_parallel", 4), kw.get("retries", 1)),
        evacuation.Hooks(
            progress=lambda what, o: events.append((what, o.server_id, o.result)),
            may_request=kw.get("may_request", lambda: True),
            fenced_at=kw.get("fenced_at", lambda host: None),
        ),
        servers=[nova.views[s] for s in sorted(nova.views)],
    )
    return summary, events


def test_runner_starts_what_nova_landed_stopped_and_leaves_what_was_stopped() -> None:
    nova = FakeNova([_server("a"), _server("b", "stopped"), _server("c", task="migrating")])
    summary, events = _evacuate(nova)
    outcomes = {o.server_id: o for o in summary.outcomes}
    assert (outcomes["a"].state, outcomes["a"].detail) == (S.RUNNING, "ACTIVE on host2")
    # spread: the second server goes to the other host
    assert (outcomes["b"].state, outcomes["b"].detail) == (S.STOPPED, "SHUTOFF on host3")
    assert outcomes["c"].state is S.SKIPPED and [o.server_id for o in summary.outcomes] == [
        "a",
        "b",
        "c",
    ]  # the skipped after the chosen
    assert sorted(c for c in nova.calls if c[0] == "evacuate") == [
        ("evacuate", "a"),
        ("evacuate", "b"),
    ]
    assert nova.calls.count(("start", "a")) == 1 and ("start", "b") not in nova.calls
    assert ("finished", "c", "skipped") == events[0]
    assert {("accepted", "a", "pending"), ("finished", "a", "evacuated")} <= set(events)
    assert summary.line().startswith(
        "evacuation of host1: 3 servers found, 2 selected, "
        "2 evacuated, 0 failed, 1 skipped, 0 unfinished"
    )
    assert summary.all_accepted_after is not None and summary.complete


def test_runner_follows_a_409_under_way_and_retries_a_409_that_is_not() -> None:
    nova = FakeNova([_server("a"), _server("b")], conflict={"b"}, lands="ACTIVE")
    original = nova.evacuate

    def evacuate(deadline, server, proof_, target=None):
        if server.id == "a":  # under way after all: Nova shows the rebuild
            nova.views["a"] = dataclasses.replace(server, task_state="rebuilding")
            nova._call("evacuate", "a")
            return False
        return original(deadline, server, proof_, target)

    nova.evacuate = evacuate
    summary, events = _evacuate(nova, retries=2)
    outcomes = {o.server_id: o for o in summary.outcomes}
    assert outcomes["a"].state is S.RUNNING and nova.calls.count(("evacuate", "a")) == 1
    assert (outcomes["b"].state, outcomes["b"].attempts) == (S.FAILED, 3)
    assert outcomes["b"].detail == "Nova refused the evacuation (409, vm_state active, task None)"
    assert [e for e in events if e[1] == "b"].count(("retry", "b", "pending")) == 2


def test_runner_asks_nothing_once_the_lease_is_lost() -> None:
    nova = FakeNova([_server("a"), _server("b", "paused")])
    summary, events = _evacuate(nova, may_request=lambda: False)
    assert {o.result for o in summary.outcomes} == {"unfinished"}
    assert {o.detail for o in summary.outcomes} == {"lease lost: another runner owns this host"}
    assert not [c for c in nova.calls if c[0] in ("evacuate", "reset")] and not events


def test_runner_resets_what_lived_in_the_dead_hosts_memory_then_evacuates() -> None:
    nova = FakeNova([_server("p", "paused")], lands="ACTIVE")
    summary, _ = _evacuate(nova)
    assert nova.calls[:2] == [("reset", "p"), ("evacuate", "p")]
    assert summary.outcomes[0].state is S.RUNNING


def test_runner_leaves_unfinished_work_at_the_deadline_with_what_it_knew() -> None:
    nova = FakeNova([_server("a")])
    nova.servers_changed_since = lambda deadline, since: []  # nothing ever moves
    summary, _ = _evacuate(nova, seconds=0.3)
    (outcome,) = summary.outcomes
    assert (outcome.result, outcome.detail) == ("unfinished", "requested to host2")


def test_runner_follows_servers_asked_earlier_and_gone_ones() -> None:
    moved = Server(id="m", name="vm-m", status="SHUTOFF", host="host2", vm_state="stopped")
    nova = FakeNova([_server("a")], lands="ACTIVE")
    nova.views["m"] = moved
    listed = [nova.views["a"]]
    del nova.views["a"]  # deleted before its request
    summary = evacuation.evacuate_servers(
        nova,
        Deadline(10),
        proof.by_bmc("c1", "host1"),
        evacuation.Policy("all", "t", 2, 1),
        servers=listed,
        earlier={"m"},
    )
    outcomes = {o.server_id: o for o in summary.outcomes}
    assert (outcomes["a"].result, outcomes["a"].detail) == ("gone", "deleted meanwhile")
    # Nova's history says it ran before (create, then evacuate): started again
    assert outcomes["m"].state is S.RUNNING and ("start", "m") in nova.calls
    assert (summary.found, summary.selected) == (1, 2)


def test_a_server_an_earlier_runner_landed_before_this_run_is_done_at_once() -> None:
    """Killed mid-way, an earlier runner's server landed before this run began: the listing
    of what changed since never shows it, so the view read at the plan is its first look."""
    landed = Server(id="m", name="vm-m", status="ACTIVE", host="host3", vm_state="active")
    nova = FakeNova([_server("a")], lands="ACTIVE")
    nova.views["m"] = landed
    listings: list[set[str]] = []

    def changed_since(deadline, since):
        shown = FakeNova.servers_changed_since(nova, deadline, since)
        shown = [v for v in shown if v.id != "m"]  # unchanged since long before
        listings.append({v.id for v in shown})
        return shown

    nova.servers_changed_since = changed_since
    summary = evacuation.evacuate_servers(
        nova,
        Deadline(5),
        proof.by_bmc("c1", "host1"),
        evacuation.Policy("all", "t", 2, 1),
        servers=[nova.views["a"]],
        earlier={"m"},
    )
    outcomes = {o.server_id: o for o in summary.outcomes}
    assert (outcomes["m"].result, outcomes["m"].host) == ("evacuated", "host3"), outcomes
    assert outcomes["a"].result == "evacuated"
    assert [c for c in nova.calls if c[1] == "m"] == [("get", "m")]  # never asked again
    assert all("m" not in ids for ids in listings)


def test_conflict_from_another_call_is_a_failed_attempt() -> None:
    nova = FakeNova([_server("p", "paused")])

    def reset_state(deadline, server, state, proof_):
        raise Conflict("Cannot reset: locked", 409)

    nova.reset_state = reset_state
    summary, _ = _evacuate(nova, retries=0)
    assert (summary.outcomes[0].result, summary.outcomes[0].detail) == (
        "failed",
        "Cannot reset: locked",
    )


def test_runner_spreads_over_the_eligible_hosts_one_request_each() -> None:
    nova = FakeNova([_server(sid) for sid in "abcdef"], lands="ACTIVE")
    summary, _ = _evacuate(nova)
    hosts = [o.host for o in summary.outcomes]
    assert all(o.state is S.RUNNING for o in summary.outcomes)
    assert sorted(hosts) == ["host2"] * 3 + ["host3"] * 3  # never host1 (the source, down)
    assert sorted(nova.named) == [(sid, h) for sid, h in zip("abcdef", hosts, strict=True)]


def test_scheduler_policy_names_no_host() -> None:
    nova = FakeNova([_server(sid) for sid in "abcd"], lands="ACTIVE")
    summary = evacuation.evacuate_servers(
        nova,
        Deadline(10),
        proof.by_bmc("c1", "host1"),
        evacuation.Policy("all", "t", 4, 1, target_policy="scheduler"),
        servers=list(nova.views.values()),
    )
    assert {o.host for o in summary.outcomes} == {"host2"}
    assert {target for _, target in nova.named} == {None}


@pytest.mark.parametrize(
    "refusal",
    [
        NotFound("HTTP 404: Compute host host3 not found.", 404),  # at once
        BadRequest("HTTP 400: The target host can't be the same one.", 400),  # at once
        None,  # 202, then the scheduler refuses it: ERROR on the source, migration error
    ],
)
def test_a_refused_host_is_dropped_and_the_scheduler_chooses(refusal) -> None:
    nova = FakeNova(
        [_server(sid) for sid in "abcdefgh"], lands="ACTIVE", refuses={"host3": refusal}
    )
    summary, _ = _evacuate(nova, retries=0, max_parallel=1)  # one request at a time
    assert all(o.state is S.RUNNING and o.host == "host2" for o in summary.outcomes)
    refused = [sid for sid, target in nova.named if target == "host3"]
    # each refused one asked again once with no host (the scheduler's host2), others once
    assert refused and all(nova.named.count((sid, None)) == 1 for sid in refused)
    assert len(nova.named) == 8 + len(refused)
    if refusal is not None:  # refused at once: dropped before the next request is chosen
        assert refused == ["b"], nova.named


def test_a_rebuild_that_died_with_its_target_is_reset_and_evacuated_again() -> None:
    """host1 took a server evacuated from another failed host, then died mid-rebuild: that
    rebuild never ends. host1's evacuation resets it and asks again; a server whose
    evacuation AWAY from host1 is under way is only followed."""
    lost = dataclasses.replace(_server("lost", task="rebuild_spawning"))
    leaving = dataclasses.replace(_server("leaving", task="rebuilding"))
    nova = FakeNova([lost, leaving], lands="ACTIVE")
    nova.migrations = [
        Migration(
            server_id="lost",
            status="running",
            created_at="2026-12-01T10:00:00",
            id=7,
            target="host1",
        ),
        Migration(
            server_id="leaving",
            status="running",
            created_at="2026-12-01T10:00:00",
            id=8,
            target="host2",
        ),
    ]
    summary, _ = _evacuate(nova)
    outcomes = {o.server_id: o for o in summary.outcomes}
    assert ("reset", "lost") in nova.calls and ("evacuate", "lost") in nova.calls
    assert ("reset", "leaving") not in nova.calls and ("evacuate", "leaving") not in nova.calls
    assert outcomes["lost"].result == "evacuated" and outcomes["lost"].host != "host1"


class SlowListingNova(FakeNova):
    """A busy cloud: each evacuate request takes a moment, and the first listing of what
    changed lasts until every evacuation was requested (at most 3 s)."""

    def __init__(self, servers: list[Server]) -> None:
        super().__init__(servers, lands="ACTIVE")
        self.all_requested = threading.Event()
        self.requested_when_listing: int | None = None  # when the first listing began
        self.listing_ended_by_requests = False

    def evacuate(self, deadline, server, proof_, target=None):
        time.sleep(0.02)
        accepted = super().evacuate(deadline, server, proof_, target)
        if len(self.named) >= len(self.views):
            self.all_requested.set()
        return accepted

    def servers_changed_since(self, deadline, since):
        if self.requested_when_listing is None:
            self.requested_when_listing = len(self.named)
            self.listing_ended_by_requests = self.all_requested.wait(timeout=3.0)
        return super().servers_changed_since(deadline, since)


def test_requests_go_on_while_a_round_lists_what_changed() -> None:
    nova = SlowListingNova([_server(f"s{i:02}") for i in range(16)])
    summary, _ = _evacuate(nova, max_parallel=4)
    assert all(o.state is S.RUNNING for o in summary.outcomes)
    assert nova.requested_when_listing is not None and nova.requested_when_listing < 16
    assert nova.listing_ended_by_requests  # the rest were requested while it lasted


def test_changes_since_starts_by_novas_clock_when_known(monkeypatch) -> None:
    """By Nova's clock (its Date header) the listing starts NOVA_SINCE_MARGIN before now,
    whatever our clock says; not known, SINCE_MARGIN before now by ours."""
    from nova_ha.lib import clock

    monkeypatch.setattr(time, "time", lambda: 1_800_000_000.0)
    assert evacuation.changes_since(1_700_000_000.0) == clock.iso_utc(
        1_700_000_000.0 - evacuation.NOVA_SINCE_MARGIN
    )
    assert evacuation.changes_since(None) == clock.iso_utc(
        1_800_000_000.0 - evacuation.SINCE_MARGIN
    )


@pytest.mark.parametrize(
    "began, ended, next_round",
    [
        (10.0, 10.1, 10.5),  # a quick round: the next POLL_INTERVAL after it began
        (10.0, 10.5, 11.0),  # as long as the interval: a pause as long again
        (10.0, 13.0, 16.0),  # a 3 s listing (busy API): 3 s of rest before the next
    ],
)
def test_round_pause(monkeypatch, began, ended, next_round) -> None:
    monkeypatch.setattr(evacuation, "POLL_INTERVAL", 0.5)
    assert evacuation.round_pause(began, ended) == pytest.approx(next_round)


class SlowRoundsNova(FakeNova):
    """Each listing of what changed takes 0.1 s; when each began and ended is kept."""

    def __init__(self, servers: list[Server]) -> None:
        super().__init__(servers, lands="ACTIVE")
        self.listings: list[tuple[float, float]] = []

    def servers_changed_since(self, deadline, since):
        began = time.monotonic()
        time.sleep(0.1)
        shown = super().servers_changed_since(deadline, since)
        self.listings.append((began, time.monotonic()))
        return shown


def test_a_slow_round_is_followed_by_as_long_a_rest() -> None:
    nova = SlowRoundsNova([_server(sid) for sid in "abcd"])
    summary, _ = _evacuate(nova)
    assert all(o.state is S.RUNNING for o in summary.outcomes)
    assert len(nova.listings) >= 2
    for (began, ended), (next_began, _) in itertools.pairwise(nova.listings):
        assert next_began - ended >= 0.9 * (ended - began)


class DyingTargetNova(FakeNova):
    """host2 dies during the first rebuild sent to it (forced down by its own fence):
    that rebuild never ends; host3 works."""

    def __init__(self, servers: list[Server], taken_at: float | None = 1000.0) -> None:
        super().__init__(servers, lands="ACTIVE")
        self.forced_down: set[str] = set()
        self.taken_at = taken_at  # when host2's compute took the request up (None: never)

    def rebuild_taken_up_at(self, deadline, server_id, host):
        return self.taken_at if self.landing.get(server_id) == host else None

    def evacuate(self, deadline, server, proof_, target=None):
        accepted = super().evacuate(deadline, server, proof_, target)
        landing = self.landing[server.id]
        self.migrations.append(
            Migration(server.id, "running", "2026-12-01T10:00:00", len(self.migrations), landing)
        )
        if landing == "host2":
            self.forced_down.add("host2")
            self.views[server.id] = dataclasses.replace(
                self.views[server.id], task_state="rebuild_spawning"
            )
            if self.taken_at is None:  # still on the source, its task as the API set it
                self.views[server.id] = dataclasses.replace(
                    self.views[server.id], host="host1", task_state="rebuilding"
                )
        return accepted

    def service(self, deadline, host):
        return Service("s", host, "enabled", "down", host in self.forced_down, None)

    def servers_changed_since(self, deadline, since):
        stuck = {
            k: v for k, v in self.views.items() if v.task_state and self.landing.get(k) == "host2"
        }
        shown = super().servers_changed_since(deadline, since)
        self.views.update(stuck)  # a rebuild on a dead host never lands
        return shown


def test_a_rebuild_whose_host_died_is_asked_again_elsewhere(monkeypatch) -> None:
    monkeypatch.setattr(evacuation, "LOST_CHECK_AFTER", 0.0)
    nova = DyingTargetNova([_server("a"), _server("b")], taken_at=1000.0)
    summary, _ = _evacuate(nova, retries=2, fenced_at=lambda host: 1010.0)
    assert {o.result for o in summary.outcomes} == {"evacuated"}, summary.outcomes
    assert all(o.host == "host3" for o in summary.outcomes), summary.outcomes
    lost = next(sid for sid, host in nova.named if host == "host2")
    # reset (its task ends), then asked again, to host3: host2 is no target any more
    assert nova.calls[-2:] == [("reset", lost), ("evacuate", lost)]
    assert [host for _, host in nova.named].count("host2") == 1


@pytest.mark.parametrize(
    ("taken_at", "why"),
    [
        (None, "host2 died before taking it up: it waits in host2's queue"),
        (1030.0, "host2 is back (forced down until it rejoins) and rebuilding it"),
    ],
)
def test_a_request_that_lives_on_in_its_target_is_not_asked_again(
    monkeypatch, taken_at, why
) -> None:
    """Asked again, the first request (still in host2's queue, or being run by host2 back
    from its fence) would hit a moved server: ERROR, or a second rebuild. The server is
    neither reset nor asked again."""
    monkeypatch.setattr(evacuation, "LOST_CHECK_AFTER", 0.0)
    nova = DyingTargetNova([_server("a"), _server("b")], taken_at=taken_at)
    summary, _ = _evacuate(nova, seconds=3.0, retries=2, fenced_at=lambda host: 1010.0)
    waiting = next(sid for sid, host in nova.named if host == "host2")
    outcomes = {o.server_id: o for o in summary.outcomes}
    assert outcomes[waiting].state is not S.RUNNING, (why, outcomes)
    assert [c for c in nova.calls if c[1] == waiting] == [("evacuate", waiting)], why
    assert sorted(host for _, host in nova.named) == ["host2", "host3"]
    assert all(o.host == "host3" for sid, o in outcomes.items() if sid != waiting)


def test_newest_migration_per_server() -> None:
    """A rebuild that died with its target stays 'running' in Nova for ever; the server was
    asked again since: only its newest migration tells (the rejoin's check counts those)."""
    from nova_ha.openstack.views import newest_per_server

    old = Migration("a", "running", "2026-12-01T10:00:00", 1, "host2")
    new = Migration("a", "done", "2026-12-01T10:00:20", 2, "host3")
    other = Migration("b", "running", "2026-12-01T10:00:00", 3, "host3")
    newest = newest_per_server([new, old, other])
    assert newest == {"a": new, "b": other}
    assert [m.server_id for m in newest.values() if not m.finished] == ["b"]


class MigrationsNova(FakeNova):
    """Nova as the following's rounds see it: each accepted evacuation has a migration from
    host1; at every read of the migrations the oldest one under way ends ('done', the server
    landed ACTIVE on its target), or, with `never_done`, none does (the servers land all
    the same: a status Nova failed to write). Listings and GETs show the views as they are."""

    def __init__(self, servers: list[Server], never_done: bool = False) -> None:
        super().__init__(servers, lands="ACTIVE")
        self.never_done = never_done
        self.reads = collections.Counter()

    def evacuate(self, deadline, server, proof_, target=None):
        accepted = super().evacuate(deadline, server, proof_, target)
        with self._lock:
            self.migrations.append(
                Migration(server.id, "accepted", "2026-12-01T10:00:00", len(self.migrations))
            )
        return accepted

    def evacuation_migrations(self, deadline, source_host=None, server_id=None):
        self.reads["migrations"] += 1
        with self._lock:
            under_way = [
                m
                for m in self.migrations
                if not m.finished and self.views[m.server_id].task_state is not None
            ]
            if under_way and len(self.named) == len(self.views):  # once all are asked
                first = under_way[0]
                view = self.views[first.server_id]
                self.views[first.server_id] = dataclasses.replace(
                    view, host=self.landing[first.server_id], status="ACTIVE", task_state=None
                )
                if not self.never_done:
                    index = self.migrations.index(first)
                    self.migrations[index] = dataclasses.replace(first, status="done")
            return list(self.migrations)

    def servers_changed_since(self, deadline, since):
        self.reads["listing"] += 1
        return list(self.views.values())

    def server(self, deadline, server_id):
        self.reads["get"] += 1
        return super().server(deadline, server_id)


def test_rounds_look_only_at_servers_whose_migration_ended() -> None:
    """Eight servers landing one per round: each round reads the migrations and GETs the
    one that landed, not a listing of the servers (five times a migration listing's cost);
    the last one alone is listed (a listing when every server followed is due)."""
    nova = MigrationsNova([_server(f"s{i}") for i in range(8)])
    summary, _ = _evacuate(nova, max_parallel=8)
    assert [o.state for o in summary.outcomes] == [S.RUNNING] * 8
    assert nova.reads["listing"] <= 1
    assert nova.reads["get"] >= 7
    assert nova.reads["migrations"] >= 8


def test_servers_are_listed_every_look_all_every_when_migrations_tell_nothing(
    monkeypatch,
) -> None:
    """Migrations that never end (a status Nova failed to write): the servers are still
    seen landed, by the listing every LOOK_ALL_EVERY seconds."""
    monkeypatch.setattr(evacuation, "LOOK_ALL_EVERY", 0.2)
    nova = MigrationsNova([_server(f"s{i}") for i in range(4)], never_done=True)
    summary, _ = _evacuate(nova)
    assert [o.state for o in summary.outcomes] == [S.RUNNING] * 4
    assert nova.reads["listing"] >= 1 and nova.reads["get"] == 0


class NoMigrationsNova(MigrationsNova):
    """A Nova whose policy forbids reading migrations."""

    def evacuation_migrations(self, deadline, source_host=None, server_id=None):
        self.reads["migrations"] += 1
        raise Forbidden("HTTP 403", 403)

    def servers_changed_since(self, deadline, since):
        return FakeNova.servers_changed_since(self, deadline, since)


def test_unreadable_migrations_are_read_once_then_every_round_lists() -> None:
    nova = NoMigrationsNova([_server(f"s{i}") for i in range(4)])
    summary, _ = _evacuate(nova)
    assert [o.state for o in summary.outcomes] == [S.RUNNING] * 4
    assert nova.reads["migrations"] == 1
