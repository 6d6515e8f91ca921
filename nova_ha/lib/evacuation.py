"""Evacuating a fenced host: plan (which servers), run (bounded concurrency, each server
followed to its end, failed attempts retried): one code path for the stonith agent,
NovaEvacuate and `nova-ha evacuate`.

Precondition everywhere: the host's power-off is confirmed (every Nova write here takes the
``PowerOffConfirmed``) and its service forced down.

Each server's evacuation is the state machine of ``server_lifecycle``: the ``Runner`` below
gathers the facts (Nova's answers, its own counts), feeds the events and carries out the
actions ``server_lifecycle.step`` returns; it decides nothing itself. Its helpers decide
the rest: ``targets`` where each server is sent (spread, or the scheduler), ``pacing`` how
many are in flight at once. The outcomes it returns are immutable records built from each
server's final state.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nova_ha.lib import clock, log, pacing, server_lifecycle, targets
from nova_ha.lib.server_lifecycle import FINAL, FOLLOWED, ServerAction, ServerEvent, ServerState
from nova_ha.openstack.exceptions import BadRequest, NotFound, NovaError, Unavailable
from nova_ha.openstack.views import Server, newest_per_server

if TYPE_CHECKING:
    from nova_ha.lib.proof import PowerOffConfirmed
    from nova_ha.openstack.compute import Nova
    from nova_ha.openstack.transport import Deadline

LOG = log.get("evacuation")

TRUE_VALUES = frozenset({"true", "1", "yes", "on", "y", "t"})
# The actions that set a server's power state: the newest before its evacuation tells
# whether it was stopped.
POWER_ACTIONS = frozenset(
    {
        "stop",
        "start",
        "create",
        "reboot",
        "rebuild",
        "unshelve",
        "resume",
        "unpause",
        "suspend",
        "pause",
        "shelve",
    }
)
POLL_INTERVAL = 0.5
# A server still rebuilding this long after its request is checked (then as often again):
# did its rebuild's host die since (forced down)? Then the rebuild never ends.
LOST_CHECK_AFTER = 10.0
# Nova's clock against the fencing node's, both to the second: a host back from its fence
# takes a request up far later than this after it
CLOCK_SKEW = 2.0
TICK = 0.05  # how often the runner looks whether more requests may go out
# A listing of 20 servers costs Nova five times a listing of their migrations (0.21 against
# 0.04 CPU-seconds on the production-shaped Nova, more while they rebuild), CPU the rebuilds
# need: so a round reads the migrations and looks only at servers whose evacuation ended
# there, or that they tell nothing of; at every one each LOOK_ALL_EVERY seconds (a rebuild's
# host may die). Measured on the one-process box: 1.5 CPU-seconds less per 20 servers.
LOOK_ALL_EVERY = 5.0
LOOK_ONE_BY_ONE = 3  # servers due for a look: up to this many, one GET each; else a listing
STRAIN_STATUSES = frozenset({429})  # besides 5xx and no answer: Nova asks us to slow down
# The following lists servers changed since shortly before the run began (changes_since)
SINCE_MARGIN = 300.0  # by our clock: Nova's may be anywhere near it
NOVA_SINCE_MARGIN = 15.0  # by Nova's: the skew of its computes, whose clocks write records
E, A = ServerEvent, ServerAction
# What a sender carries out when the pacing lets the server's request go (a target is
# chosen then, so that a host refused meanwhile is chosen no more).
TO_SEND = (A.CHOOSE_TARGET, A.REQUEST)
Seen = dict[str, Any]  # what an event brings: fields of server_lifecycle.Facts


@dataclass(frozen=True)
class Outcome:
    """How one server's evacuation ended (or where it stands), from its state."""

    server_id: str
    name: str
    state: ServerState = ServerState.FOUND
    host: str | None = None
    status: str | None = None
    detail: str = ""
    attempts: int = 0
    accepted_at: float | None = None  # monotonic: when Nova accepted its evacuation
    finished_at: float | None = None  # monotonic: when it reached its end

    @property
    def result(self) -> str:
        """evacuated | failed | skipped | gone | unfinished | pending"""
        return server_lifecycle.result(self.state)


@dataclass(frozen=True)
class Summary:
    host: str
    found: int = 0
    selected: int = 0
    outcomes: tuple[Outcome, ...] = ()
    started: float = field(default_factory=time.monotonic)
    all_accepted_after: float | None = None
    finished_after: float | None = None

    def count(self, result: str) -> int:
        return sum(1 for o in self.outcomes if o.result == result)

    @property
    def complete(self) -> bool:
        return all(o.result in ("evacuated", "skipped", "gone", "failed") for o in self.outcomes)

    def line(self) -> str:
        return (
            f"evacuation of {self.host}: {self.found} servers found, {self.selected} "
            f"selected, {self.count('evacuated')} evacuated, {self.count('failed')} failed, "
            f"{self.count('skipped')} skipped, {self.count('unfinished')} unfinished, "
            f"{self.count('gone')} deleted meanwhile, in "
            f"{(self.finished_after or time.monotonic() - self.started):.1f}s"
        )


Progress = Callable[[str, Outcome], None]


@dataclass(frozen=True)
class Policy:
    """How one host's servers are evacuated: which ones (mode: all | tagged, and the tag),
    how many in flight at most (the pacing's ceiling), how often a failed one is tried
    again, where they go (target_policy: spread | scheduler) and the reserved target hosts
    (spread over them when given)."""

    mode: str
    tag: str
    max_parallel: int
    retries: int
    target_hosts: tuple[str, ...] = ()
    target_policy: str = "spread"


@dataclass(frozen=True)
class Hooks:
    """What the caller hears and decides while the evacuation runs: each server's progress,
    a heartbeat every TICK (the lease's renewal when it runs short), and the safety gate
    checked before every request (e.g. "our lease is still ours")."""

    progress: Progress = lambda event, outcome: None
    heartbeat: Callable[[], None] = lambda: None
    may_request: Callable[[], bool] = lambda: True
    # When a host was last fenced (epoch), from its record; None: not known
    fenced_at: Callable[[str], float | None] = lambda host: None


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in TRUE_VALUES


def stopped_before(actions: Iterable[str], default: bool) -> bool:
    """Was the server stopped before its evacuation? Its newest power action before the
    newest evacuate, in its instance actions (newest first); `default` when none tells."""
    seen_evacuate = False
    for name in actions:
        if not seen_evacuate:
            seen_evacuate = name == "evacuate"
        elif name in POWER_ACTIONS:
            return name == "stop"
    return default


@dataclass
class _Tracked:
    """The runner's working note of one server: the state the lifecycle gave it, its next
    action, and the runner's own counts. Written by the Runner only."""

    server_id: str
    name: str
    host: str | None = None
    status: str | None = None
    state: ServerState = ServerState.FOUND
    action: ServerAction = ServerAction.POLL
    detail: str = ""
    attempts: int = 0
    accepted_at: float | None = None
    finished_at: float | None = None
    next_try: float = 0.0
    target: str | None = None  # the host its request names (None: the scheduler chooses)
    sending: bool = False  # its request is being sent (a sender thread has it)
    listed: Server | None = None  # the listing's view, for the first request
    listed_stopped: bool = False  # stopped when listed on the source
    history_stopped: bool | None = None  # stopped before, by its instance actions
    rebuild_lost: bool = False  # its rebuild on this (powered-off) host died with it
    lost_check_at: float = 0.0  # monotonic: when to check next whether its rebuild died
    waits_for_target: bool = False  # its request waits in a failed target's queue

    def was_stopped(self) -> bool | None:
        """Known from the listing when we asked for the evacuation; for one an earlier
        runner asked for, the listing may have caught it already stopped by Nova (>= 2.95),
        so its instance actions tell (None until read)."""
        return self.listed_stopped if self.attempts > 0 else self.history_stopped

    def apply(self, step: server_lifecycle.Step) -> None:
        self.state, self.action = step.state, step.action
        if step.detail is not None:
            self.detail = step.detail

    def outcome(self) -> Outcome:
        return Outcome(
            self.server_id,
            self.name,
            self.state,
            self.host,
            self.status,
            self.detail,
            self.attempts,
            self.accepted_at,
            self.finished_at,
        )


class Planner:
    """The facts of the plan step (evacuate=all|tagged): a server's tag, its task and
    state, whether an earlier runner asked for it."""

    def __init__(
        self, nova: Nova, deadline: Deadline, mode: str, tag: str, source: str = ""
    ) -> None:
        self.nova, self.deadline, self.mode, self.tag = nova, deadline, mode, tag
        self.source = source
        self._images: dict[str, dict[str, Any]] = {}

    def tagged(self, server: Server) -> bool:
        if _truthy(server.extra_specs.get(self.tag, "")):
            return True
        if _truthy(server.metadata.get(self.tag, "")):
            return True
        image_id = server.image_id
        if not image_id:
            return False  # boot from volume: no image properties to read
        if image_id not in self._images:
            self._images[image_id] = self.nova.image_properties(self.deadline, image_id)
        return _truthy(self._images[image_id].get(self.tag, ""))

    def facts(self, server: Server, earlier: set[str]) -> Seen:
        by_tag = self.mode == "tagged"
        return dict(
            host=server.host,
            status=server.status,
            vm_state=server.vm_state,
            task=server.task_state,
            rebuilding=server.rebuilding,
            rebuild_lost=self.rebuild_lost(server, earlier),
            tag=self.tag if by_tag else None,
            tagged=by_tag and self.tagged(server),
            requested_earlier=server.id in earlier,
        )

    def rebuild_lost(self, server: Server, earlier: set[str]) -> bool:
        """Was the server being evacuated TO the powered-off host (from another failed one)?
        Its newest evacuation migration says so (one call, for a rebuilding server only);
        when it cannot be read, the rebuild counts as under way elsewhere."""
        if not server.rebuilding or server.id in earlier:
            return False
        try:
            migrations = self.nova.evacuation_migrations(self.deadline, server_id=server.id)
        except NovaError:
            return False
        newest = newest_per_server(migrations).get(server.id)
        return newest is not None and newest.target == self.source and not newest.finished

    def moved(self, earlier: set[str], listed: list[Server]) -> list[Server]:
        """Servers an earlier runner (killed mid-way) already moved off the host: followed
        too, so that those Nova landed SHUTOFF (>= 2.95) are started again."""
        ids = {s.id for s in listed}
        moved = []
        for server_id in sorted(earlier - ids):
            try:
                moved.append(self.nova.server(self.deadline, server_id))
            except NovaError:
                continue
        return moved


class Runner:
    """Evacuates the chosen servers of one host: concurrent, followed, retried. Carries out
    what server_lifecycle.step says, and feeds back what Nova answered."""

    def __init__(
        self,
        nova: Nova,
        deadline: Deadline,
        proof: PowerOffConfirmed,
        policy: Policy,
        hooks: Hooks,
        chooser: targets.Spread | None = None,
    ) -> None:
        self.nova, self.deadline, self.proof = nova, deadline, proof
        self.source = proof.host
        self.max_parallel, self.retries = max(1, policy.max_parallel), max(0, policy.retries)
        self.targets = chooser or targets.Scheduler()
        self.pacer = pacing.Pacer(self.max_parallel)
        self.progress, self.heartbeat = hooks.progress, hooks.heartbeat
        self.may_request, self.fenced_at = hooks.may_request, hooks.fenced_at
        self.since = changes_since(nova.server_time())
        self.looked_all_at = time.monotonic()  # the last listing of every followed server
        self.migrations_readable = True  # else every round lists (one failed read is enough)

    # -- the state machine's driver ------------------------------------------------------

    def _feed(self, tracked: _Tracked, event: ServerEvent | None, **seen: Any) -> None:
        """One event for one server: the lifecycle's step, then its action; an action that
        brings an answer at once (a start, a history read) feeds that as the next event."""
        while event is not None:
            facts = server_lifecycle.Facts(
                target=tracked.target,
                attempts=tracked.attempts,
                retries=self.retries,
                expired=self.deadline.expired(),
                was_stopped=tracked.was_stopped(),
                detail=tracked.detail,
                **seen,
            )
            step = server_lifecycle.step(tracked.state, event, facts)
            level = LOG.warning if step.action is A.RETRY_LATER else LOG.debug
            level("server %s: %s", tracked.server_id, step.reason)
            if tracked.state in FOLLOWED and step.state in FINAL:
                self.pacer.landed()
            tracked.apply(step)
            event, more = self._carry_out(tracked, step.action)
            seen.update(more)

    def _carry_out(
        self, tracked: _Tracked, action: ServerAction
    ) -> tuple[ServerEvent | None, Seen]:
        """Do what the step says now. CHOOSE_TARGET and REQUEST wait for the pacing (_send),
        POLL for the next round, GIVE_UP for the summary."""
        now = time.monotonic()
        if action is A.FOLLOW:
            tracked.accepted_at = now
            self.progress("accepted", tracked.outcome())
        elif action is A.RETRY_LATER:
            tracked.next_try = now + server_lifecycle.backoff(tracked.attempts)
            self.progress("retry", tracked.outcome())
        elif action is A.REPORT:
            tracked.finished_at = now
            self.progress("finished", tracked.outcome())
        elif action is A.READ_HISTORY:
            tracked.history_stopped = self._stopped_before(tracked)
            return E.LANDED_STOPPED, {}
        elif action in self._AT_ONCE:
            return self._AT_ONCE[action](self, tracked)
        return None, {}

    def _start(self, tracked: _Tracked) -> tuple[ServerEvent, Seen]:
        try:
            self.nova.start_server(self.deadline, tracked.server_id)
        except NovaError as err:
            return E.START_REFUSED, {"error": str(err)}
        return E.START_ACCEPTED, {}

    def _choose_target(self, tracked: _Tracked) -> tuple[ServerEvent, Seen]:
        if tracked.listed is None:  # a bug of the runner's: chosen from the listing only
            raise ValueError(f"server {tracked.server_id}: no listing to choose a target by")
        tracked.target, why = self.targets.choose(tracked.listed)
        return E.TARGET_CHOSEN, {"choice": why}

    def _fall_back(self, tracked: _Tracked) -> tuple[ServerEvent, Seen]:
        self.targets.drop(tracked.target)
        tracked.target = None
        return E.TARGET_DROPPED, {}

    _AT_ONCE: dict[ServerAction, Callable[[Runner, _Tracked], tuple[ServerEvent, Seen]]] = {
        A.START: _start,
        A.FALL_BACK: _fall_back,
    }

    # -- planning, requests ----------------------------------------------------------------

    def plan(self, planner: Planner, servers: list[Server], earlier: set[str]) -> list[_Tracked]:
        """Every server listed on the host, then those asked earlier in this incident that
        left it, through the plan step: the chosen ones first, the skipped ones after."""
        tracked = []
        for server in servers:
            one = _Tracked(
                server.id,
                server.name,
                server.host,
                server.status,
                listed_stopped=server.vm_state == "stopped",
            )
            one.listed = server
            facts = planner.facts(server, earlier)
            one.rebuild_lost = facts["rebuild_lost"]
            self._feed(one, E.LISTED, **facts)
            one.listed = server if one.action in TO_SEND else None
            tracked.append(one)
        for server in planner.moved(earlier, servers):
            one = _Tracked(server.id, server.name, server.host, server.status)
            self._feed(one, E.MOVED_EARLIER)
            # Its first look is the view just read: one that landed before this run began
            # would never show in the following's listing (what changed since then).
            self._look(one, server)
            tracked.append(one)
        return sorted(tracked, key=lambda t: t.state is ServerState.SKIPPED)

    def _request(self, tracked: _Tracked) -> None:
        """Carry out CHOOSE_TARGET (then REQUEST) or REQUEST; what Nova answered is the next
        event."""
        if tracked.action is A.CHOOSE_TARGET:
            event, seen = self._choose_target(tracked)
            self._feed(tracked, event, **seen)
        asked = time.monotonic()
        answer = pacing.Answer.REFUSED
        try:
            event, seen = self._ask(tracked)
            answer = pacing.Answer.OK if event is E.ACCEPTED else answer
        except NotFound as err:
            event, seen = E.REFUSED_NOT_FOUND, {"error": str(err)}
        except BadRequest as err:
            event, seen = E.REFUSED_BAD_REQUEST, {"error": str(err)}
        except NovaError as err:
            event, seen = E.REQUEST_FAILED, {"error": str(err)}
            if isinstance(err, Unavailable) or err.status in STRAIN_STATUSES:
                answer = pacing.Answer.STRAINED
        self.pacer.answered(time.monotonic() - asked, answer)
        self._feed(tracked, event, **seen)

    def _ask(self, tracked: _Tracked) -> tuple[ServerEvent, Seen]:
        """The server's view (listed, or read again), the safety gate, a reset when its
        state lived in the dead host's memory, the request."""
        server, tracked.listed = tracked.listed, None
        if server is None:
            server = self.nova.server(self.deadline, tracked.server_id)
        if not self.may_request():
            return E.LEASE_LOST, {}
        tracked.attempts += 1
        if server_lifecycle.needs_reset(
            server.vm_state, tracked.rebuild_lost and server.rebuilding
        ):
            LOG.info(
                "server %s: %s/%s on a powered-off host: resetting to error first",
                tracked.server_id,
                server.vm_state,
                server.task_state,
            )
            self.nova.reset_state(self.deadline, server, "error", self.proof)
        if self.nova.evacuate(self.deadline, server, self.proof, target=tracked.target):
            return E.ACCEPTED, {}
        # 409: the server's state does not allow it; under way only if it is rebuilding
        current = self.nova.server(self.deadline, tracked.server_id)
        return E.REFUSED_CONFLICT, {
            "rebuilding": current.rebuilding,
            "vm_state": current.vm_state,
            "task": current.task_state,
        }

    # -- following -------------------------------------------------------------------------

    def _follow(self, pool: concurrent.futures.Executor, following: list[_Tracked]) -> None:
        """One round of following: the servers due for a look (_due), a few by one GET
        each, more by a single listing of what changed since we started (one call whatever
        the number of servers), or one GET per server if that fails; then the servers are
        looked at in parallel (a look may start a server)."""
        due = self._due(following)
        # Every one due (the migrations told nothing, or a last few): one listing sees all.
        if len(due) <= LOOK_ONE_BY_ONE and len(due) < len(following):
            list(pool.map(self._check, due))
            return
        self.looked_all_at = time.monotonic()
        try:
            changed = {s.id: s for s in self.nova.servers_changed_since(self.deadline, self.since)}
        except NovaError as err:
            LOG.debug("changes-since listing failed (%s); asking per server", err)
            list(pool.map(self._check, following))
            return
        # Servers not listed are unchanged since the evacuation began: still under way.
        looks = [(t, changed[t.server_id]) for t in following if t.server_id in changed]
        events = {self._event(server) for _, server in looks}
        failed = self._failed_migrations() if E.STILL_ON_SOURCE in events else set()
        list(pool.map(lambda look: self._look(look[0], look[1], failed), looks))

    def _due(self, following: list[_Tracked]) -> list[_Tracked]:
        """The followed servers due for a look: every one each LOOK_ALL_EVERY seconds or
        when the migrations cannot be read; else those whose newest migration ended (landed,
        failed, or started since) or that have none (asked before 2.23's filter, say)."""
        if not self.migrations_readable or time.monotonic() - self.looked_all_at >= LOOK_ALL_EVERY:
            return following
        try:
            newest = newest_per_server(
                self.nova.evacuation_migrations(self.deadline, source_host=self.source)
            )
        except NovaError as err:
            LOG.info("migrations unreadable (%s): every round lists the servers", err)
            self.migrations_readable = False
            return following
        return [t for t in following if t.server_id not in newest or newest[t.server_id].finished]

    def _check(self, tracked: _Tracked) -> None:
        """Follow one server (one GET)."""
        try:
            server = self.nova.server(self.deadline, tracked.server_id)
        except NotFound:
            self._feed(tracked, E.VANISHED)
            return
        except NovaError:
            return  # not reachable now: look again next round
        self._look(tracked, server)

    def _event(self, server: Server) -> ServerEvent:
        return server_lifecycle.observed(
            server.status, server.task_state, server.host == self.source
        )

    def _look(
        self, tracked: _Tracked, server: Server, failed_migrations: set[str] | None = None
    ) -> None:
        """What Nova shows of a followed server, fed as an event."""
        event = self._event(server)
        if event is E.VANISHED:
            self._feed(tracked, event)
            return
        tracked.host, tracked.status = server.host, server.status
        if event is E.SHOWS_TASK and server.rebuilding and self._rebuild_died(tracked):
            tracked.listed = server  # the view its next target is chosen by
            self._feed(tracked, E.REBUILD_LOST)
            return
        failed = event is E.STILL_ON_SOURCE and tracked.server_id in (
            self._failed_migrations() if failed_migrations is None else failed_migrations
        )
        self._feed(
            tracked,
            event,
            host=server.host,
            status=server.status,
            task=server.task_state,
            fault=server.fault,
            on_source=server.host == self.source,
            failed_migration=failed,
        )

    def _rebuild_died(self, tracked: _Tracked) -> bool:
        """A long rebuild's host forced down since (a second failed host: its fence forces
        it down after the power-off): the rebuild died with it if that host had taken it up
        before its fence. Checked every LOST_CHECK_AFTER seconds per server (up to five
        calls); that host is no target any more."""
        now = time.monotonic()
        if tracked.accepted_at is None or now < max(
            tracked.lost_check_at, tracked.accepted_at + LOST_CHECK_AFTER
        ):
            return False
        tracked.lost_check_at = now + LOST_CHECK_AFTER
        try:
            migrations = self.nova.evacuation_migrations(self.deadline, server_id=tracked.server_id)
            newest = newest_per_server(migrations).get(tracked.server_id)
            if newest is None or newest.finished or not newest.target:
                return False
            if not self.nova.service(self.deadline, newest.target).forced_down:
                return False
            self.targets.drop(newest.target)
            taken_at = self.nova.rebuild_taken_up_at(
                self.deadline, tracked.server_id, newest.target
            )
        except NovaError:
            return False  # asked again at the next check
        if not self._died_with(tracked, newest.target, taken_at):
            return False
        tracked.target, tracked.rebuild_lost = newest.target, True
        return True

    def _died_with(self, tracked: _Tracked, target: str, taken_at: float | None) -> bool:
        """Asked again while its first request lives on, that request would run on the moved
        server (Nova puts it in ERROR, or rebuilds it twice if a move is under way). It
        lives on when the target never took it up (it waits in the host's queue and runs
        when the host is back), or took it up after its fence (the host is back, still
        forced down until it has rejoined, and rebuilding it now)."""
        fenced = self.fenced_at(target)
        if taken_at is not None and (fenced is None or taken_at <= fenced + CLOCK_SKEW):
            return True
        if not tracked.waits_for_target:
            LOG.info(
                "server %s: its evacuation is left to %s (%s); no new request",
                tracked.server_id,
                target,
                "back, and rebuilding it"
                if taken_at is not None
                else "it failed before taking it up: it runs there when the host is back",
            )
        tracked.waits_for_target = True
        return False

    def _stopped_before(self, tracked: _Tracked) -> bool:
        try:
            actions = self.nova.instance_actions(self.deadline, tracked.server_id)
        except NovaError:
            return tracked.listed_stopped
        return stopped_before(actions, tracked.listed_stopped)

    def _failed_migrations(self) -> set[str]:
        """Servers whose newest evacuation from the source failed (one call for all):
        back on the source with no task, that is a failure; otherwise it is the moment
        before Nova moves a rebuilt server (its record names the source a little longer)."""
        migrations = self.nova.evacuation_migrations(self.deadline, source_host=self.source)
        return {uuid for uuid, m in newest_per_server(migrations).items() if m.failed}

    # -- the rounds ------------------------------------------------------------------------

    def run(self, tracked: list[_Tracked]) -> None:
        """Request the planned servers as the pacing allows, and round after round: retries
        that are due, the following; until every server reached its end or the deadline is
        near. A round runs beside the requests: on a busy cloud its listing takes seconds
        (3 s measured on the production-shaped Nova), and requests held up meanwhile would
        leave its computes idle."""
        live = [t for t in tracked if t.state not in FINAL]
        sending: dict[concurrent.futures.Future[None], _Tracked] = {}
        with (
            concurrent.futures.ThreadPoolExecutor(self.max_parallel) as senders,
            concurrent.futures.ThreadPoolExecutor(min(self.max_parallel, 8)) as lookers,
            concurrent.futures.ThreadPoolExecutor(1) as rounds,
        ):
            round_began = next_round = time.monotonic() + POLL_INTERVAL
            round_: concurrent.futures.Future[None] | None = None
            while live := [t for t in live if t.state not in FINAL]:
                if self.deadline.remaining() < POLL_INTERVAL:
                    concurrent.futures.wait([*sending, *([round_] if round_ else [])])
                    for one in live:
                        if one.state not in FINAL:
                            self._feed(one, E.DEADLINE_PASSED)
                    return
                self._send(senders, live, sending)
                until_round = TICK if round_ else next_round - time.monotonic()
                self._collect(sending, timeout=max(0.0, min(TICK, until_round)))
                self.heartbeat()  # renews the lease only when it runs short
                if round_ is not None and round_.done():
                    round_.result()  # a bug of the runner's surfaces here
                    round_ = None
                    next_round = round_pause(round_began, time.monotonic())
                if round_ is None and time.monotonic() >= next_round:
                    round_began = time.monotonic()
                    round_ = rounds.submit(self._round, lookers, list(live))

    @staticmethod
    def _in_flight(live: list[_Tracked]) -> int:
        """Evacuation requests being sent (Nova has not answered yet)."""
        return sum(1 for t in live if t.sending)

    def _send(
        self,
        senders: concurrent.futures.Executor,
        live: list[_Tracked],
        sending: dict[concurrent.futures.Future[None], _Tracked],
    ) -> None:
        """As many due requests as the pacing allows in flight now."""
        due = [t for t in live if t.action in TO_SEND and not t.sending]
        room = self.pacer.limit() - self._in_flight(live)
        for one in due[: max(0, room)]:
            one.sending = True
            sending[senders.submit(self._request, one)] = one

    @staticmethod
    def _collect(sending: dict[concurrent.futures.Future[None], _Tracked], timeout: float) -> None:
        """Wait up to `timeout` for requests to be answered (or just that long)."""
        if not sending:
            time.sleep(timeout)
            return
        done, _ = concurrent.futures.wait(
            sending, timeout=timeout, return_when=concurrent.futures.FIRST_COMPLETED
        )
        for future in done:
            sending.pop(future).sending = False
            future.result()  # a bug of the runner's surfaces here

    def _round(self, pool: concurrent.futures.Executor, live: list[_Tracked]) -> None:
        """Retries that are due become requests; the servers followed are looked at."""
        now = time.monotonic()
        for one in live:
            if one.action is A.RETRY_LATER and one.next_try <= now:
                self._feed(one, E.RETRY_DUE)
        following = [t for t in live if t.action in (A.FOLLOW, A.POLL) and not t.sending]
        if following:
            self._follow(pool, following)


def changes_since(nova_now: float | None) -> str:
    """Where the following's listings start: shortly before we began, by Nova's clock (its
    last reply's Date header; NOVA_SINCE_MARGIN absorbs the skew of the computes that write
    the records), or by ours less SINCE_MARGIN when Nova's is not known. The listing holds
    every server of the cloud changed since, deleted ones included: the start decides its
    size (on a busy cloud, five minutes' worth of servers in every round)."""
    if nova_now is not None:
        return clock.iso_utc(nova_now - NOVA_SINCE_MARGIN)
    return clock.iso_utc(time.time() - SINCE_MARGIN)


def round_pause(began: float, ended: float) -> float:
    """When the next following round may begin, after one that ran from `began` to `ended`:
    POLL_INTERVAL after it began, and no sooner than it lasted after it ended. A round's
    listing that takes seconds means a busy API (3 s measured on the production-shaped Nova
    while 20 rebuilds ran): following then takes at most half of one API thread, leaving
    the rest to the evacuations themselves."""
    return max(began + POLL_INTERVAL, ended + (ended - began))


def requested_since(nova: Nova, deadline: Deadline, host: str, since: float) -> set[str]:
    """Servers whose evacuation from `host` was asked for since `since` (epoch) and did not
    fail: an earlier runner's work. One call.

    Needed because a server's record still names the source host, with no task, for a
    moment after its rebuild finished elsewhere (seen on Nova 34 at >= 2.95): a runner
    listing the host then would ask again, and Nova accepts a second evacuation.
    """
    start = clock.iso_utc(since)[:19]  # without the Z
    return {
        m.server_id
        for m in nova.evacuation_migrations(deadline, source_host=host)
        if (m.created_at or "")[:19] >= start and not m.failed
    }


class Prefetch:
    """The reads an evacuation starts with (the host's servers, the evacuations already
    requested in this incident, and with spread targets the compute services and
    hypervisors), started early in the background: they need neither the force-down nor
    the lease, only the power-off, and each round trip saved brings the first evacuation
    request sooner."""

    def __init__(
        self,
        nova: Nova,
        deadline: Deadline,
        host: str,
        incident_start: Callable[[], float],
        target_policy: str = "scheduler",
    ) -> None:
        spread = target_policy != "scheduler"
        pool = concurrent.futures.ThreadPoolExecutor(4 if spread else 2)
        self._servers = pool.submit(nova.servers_on, deadline, host)
        self._earlier = pool.submit(lambda: requested_since(nova, deadline, host, incident_start()))
        self.targets: targets.Reads | None = None
        if spread:
            services = pool.submit(nova.services, deadline)
            hypervisors = pool.submit(nova.hypervisors, deadline)
            self.targets = targets.Reads(services.result, hypervisors.result)
        pool.shutdown(wait=False)

    def servers(self) -> list[Server]:
        return self._servers.result()

    def earlier(self) -> set[str]:
        return self._earlier.result()


def evacuate_servers(
    nova: Nova,
    deadline: Deadline,
    proof: PowerOffConfirmed,
    policy: Policy,
    hooks: Hooks | None = None,
    servers: list[Server] | None = None,
    earlier: set[str] | None = None,
    early: targets.Reads | None = None,
) -> Summary:
    """Choose among the servers of the powered-off host (listed in one call unless given),
    evacuate, follow. Returns the summary.

    `earlier`: servers whose evacuation was requested earlier in this incident
    (requested_since): followed, never requested again.
    """
    started = time.monotonic()
    if servers is None:
        servers = nova.servers_on(deadline, proof.host)
    if policy.target_hosts:
        _enable_targets(nova, deadline, policy.target_hosts)
    chooser = targets.read(
        nova, deadline, proof.host, servers, policy.target_policy, policy.target_hosts, early
    )
    runner = Runner(nova, deadline, proof, policy, hooks or Hooks(), chooser)
    tracked = runner.plan(
        Planner(nova, deadline, policy.mode, policy.tag, proof.host), servers, earlier or set()
    )
    runner.run(tracked)
    summary = _summary(proof.host, len(servers), [t.outcome() for t in tracked], started)
    _log_summary(summary)
    return summary


def _log_summary(summary: Summary) -> None:
    for outcome in summary.outcomes:
        LOG.info(
            "server %s (%s): %s%s",
            outcome.server_id,
            outcome.name,
            outcome.result,
            f" - {outcome.detail}" if outcome.detail else "",
        )
    LOG.info(summary.line())


def _summary(host: str, found: int, outcomes: list[Outcome], started: float) -> Summary:
    accepted = [o.accepted_at for o in outcomes if o.accepted_at is not None]
    return Summary(
        host=host,
        found=found,
        selected=sum(1 for o in outcomes if o.state is not ServerState.SKIPPED),
        outcomes=tuple(outcomes),
        started=started,
        all_accepted_after=max(accepted) - started if accepted else None,
        finished_after=time.monotonic() - started,
    )


def _enable_targets(nova: Nova, deadline: Deadline, hosts: Iterable[str]) -> None:
    """Reserved hosts are kept disabled so nothing else lands there: enable them first."""
    for svc in nova.services(deadline):
        if svc.host in hosts and svc.status == "disabled":
            LOG.info("enabling reserved target host %s", svc.host)
            nova.update_service(deadline, svc, enable=True)
