"""Evacuating a fenced host: plan (which servers, where) and run (bounded concurrency,
each server followed to a terminal state, failures retried) — one code path for the stonith
agent, NovaEvacuate and `nova-ha evacuate`.

Precondition everywhere: the host's power-off is confirmed and its service forced down.

Transient task states (the host is off, so work that was running *on it* can never finish):
* rebuilding / rebuild_block_device_mapping / rebuild_spawning: an evacuation is already under
  way (an earlier run asked for it): followed, not asked again.
  Never a second request: Nova does not check the task state of an evacuation (its
  check_instance_state(task_state=None) disables the check) and two rebuilds of one server
  break it (seen on Nova 34).
* host-local tasks (spawning, networking, block_device_mapping, scheduling, rebooting*,
  powering-on/off, pausing, unpausing, suspending, resuming, rescuing, unrescuing,
  updating_password, image_*): the work ran on the dead host and can never finish; Nova
  evacuates such a server as it is and the rebuild replaces the task.
* vm_state building / paused / suspended / rescued: Nova evacuates only active, stopped and
  error servers; their state lived in the dead host's memory, so they are reset to 'error'
  (which also clears the task) and evacuated; Nova rebuilds them ACTIVE elsewhere.
* From microversion 2.95 Nova lands evacuated servers SHUTOFF (its guard against a source
  that may still run them); the source is confirmed off, so servers that were running are
  started again (os-start) and followed until ACTIVE.
* deleting / soft-deleting, migrations and resizes (migrating, resize_*), shelving*,
  unshelving, restoring: these involve another host or the user's intent to remove the
  server; resetting them could lose data, so they are skipped and reported for the operator.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nova_ha.lib import clock, log
from nova_ha.openstack.exceptions import Conflict, NotFound, NovaError
from nova_ha.openstack.views import Migration, Server

if TYPE_CHECKING:
    from nova_ha.lib.proof import PowerOffConfirmed
    from nova_ha.openstack.compute import Nova
    from nova_ha.openstack.transport import Deadline

LOG = log.get("evacuation")

HOST_LOCAL_TASKS = frozenset({
    "scheduling", "block_device_mapping", "networking", "spawning", "rebooting",
    "reboot_pending", "reboot_started", "rebooting_hard", "reboot_pending_hard",
    "reboot_started_hard", "powering-off", "powering-on", "pausing", "unpausing", "suspending",
    "resuming", "rescuing", "unrescuing", "updating_password", "image_snapshot",
    "image_snapshot_pending", "image_pending_upload", "image_uploading", "image_backup"})
RESET_VM_STATES = frozenset({"paused", "suspended", "rescued", "building"})
EVACUABLE_VM_STATES = frozenset({"active", "stopped", "error"})
TRUE_VALUES = frozenset({"true", "1", "yes", "on", "y", "t"})
POLL_INTERVAL = 0.5
SINCE_MARGIN = 300.0


@dataclass
class Outcome:
    """How one server's evacuation ended (or where it stands)."""

    server_id: str
    name: str
    result: str = "pending"  # evacuated | failed | skipped | gone | unfinished | pending
    host: str | None = None
    status: str | None = None
    detail: str = ""
    attempts: int = 0
    accepted_at: float | None = None
    finished_at: float | None = None
    was_stopped: bool = False
    start_requested: bool = False
    needs_request: bool = True
    next_try: float = 0.0


@dataclass
class Summary:
    host: str
    found: int = 0
    selected: int = 0
    outcomes: list[Outcome] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    all_accepted_after: float | None = None
    finished_after: float | None = None

    def count(self, result: str) -> int:
        return sum(1 for o in self.outcomes if o.result == result)

    @property
    def complete(self) -> bool:
        return all(o.result in ("evacuated", "skipped", "gone", "failed") for o in self.outcomes)

    def line(self) -> str:
        return (f"evacuation of {self.host}: {self.found} servers found, {self.selected} "
                f"selected, {self.count('evacuated')} evacuated, {self.count('failed')} failed, "
                f"{self.count('skipped')} skipped, {self.count('unfinished')} unfinished, "
                f"{self.count('gone')} deleted meanwhile, in "
                f"{(self.finished_after or time.monotonic() - self.started):.1f}s")


Progress = Callable[[str, Outcome], None]


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in TRUE_VALUES


class Planner:
    """Which servers of a host to evacuate (evacuate=all|tagged)."""

    def __init__(self, nova: Nova, deadline: Deadline, mode: str, tag: str) -> None:
        self.nova, self.deadline, self.mode, self.tag = nova, deadline, mode, tag
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

    def plan(self, servers: list[Server]) -> tuple[list[Outcome], list[Outcome]]:
        """(to evacuate, skipped) — skipped ones carry the reason."""
        chosen: list[Outcome] = []
        skipped: list[Outcome] = []
        for server in servers:
            outcome = Outcome(server_id=server.id, name=server.name, host=server.host,
                              status=server.status)
            outcome.was_stopped = (server.vm_state == "stopped")
            task = server.task_state
            vm_state = server.vm_state or ""
            if self.mode == "tagged" and not self.tagged(server):
                outcome.result, outcome.detail = "skipped", f"not tagged {self.tag}"
            elif server.rebuilding:
                outcome.needs_request, outcome.detail = False, "evacuation already under way"
            elif task and task not in HOST_LOCAL_TASKS:
                outcome.result = "skipped"
                outcome.detail = f"task {task} involves another host or deletion: left to " \
                                 "the operator"
            elif vm_state not in EVACUABLE_VM_STATES | RESET_VM_STATES:
                outcome.result, outcome.detail = "skipped", f"vm_state {vm_state} not evacuable"
            (skipped if outcome.result == "skipped" else chosen).append(outcome)
        return chosen, skipped


class Runner:
    """Evacuates the chosen servers of one host: concurrent, followed, retried."""

    def __init__(self, nova: Nova, deadline: Deadline, proof: PowerOffConfirmed,
                 max_parallel: int, retries: int, target_hosts: list[str] | None = None,
                 progress: Progress | None = None, heartbeat: Callable[[], None] | None = None,
                 may_request: Callable[[], bool] | None = None) -> None:
        self.nova, self.deadline, self.proof = nova, deadline, proof
        self.source = proof.host
        self.max_parallel, self.retries = max(1, max_parallel), max(0, retries)
        self.targets = list(target_hosts or [])
        self.progress = progress or (lambda event, outcome: None)
        self.heartbeat = heartbeat or (lambda: None)
        # The safety gate, checked before every request (e.g. "our lease is still ours").
        self.may_request = may_request or (lambda: True)
        self._lock = threading.Lock()
        # Lists servers changed since shortly before we began, by Nova's clock: the margin
        # absorbs clock skew between this node and Nova's database.
        self.since = clock.iso_utc(time.time() - SINCE_MARGIN)
        self._next_target = 0
        self._full_targets: set[str] = set()

    def _target(self) -> str | None:
        with self._lock:
            usable = [h for h in self.targets if h not in self._full_targets]
            if not usable:
                return None
            self._next_target += 1
            return usable[self._next_target % len(usable)]

    def _request(self, outcome: Outcome, server: Server) -> None:
        if not self.may_request():
            outcome.detail = "lease lost: another runner owns this host"
            outcome.result = "unfinished"
            return
        outcome.attempts += 1
        if server.vm_state in RESET_VM_STATES:
            LOG.info("server %s: %s/%s on a powered-off host: resetting to error first",
                     outcome.server_id, server.vm_state, server.task_state)
            self.nova.reset_state(self.deadline, server, "error", self.proof)
        target = self._target()  # None: Nova's scheduler chooses
        if not self.nova.evacuate(self.deadline, server, self.proof, target=target):
            # 409: the server's state does not allow it; under way only if it is rebuilding
            current = self.nova.server(self.deadline, outcome.server_id)
            if not current.rebuilding:
                raise Conflict(f"Nova refused the evacuation (409, vm_state "
                               f"{current.vm_state}, task {current.task_state})", 409)
            outcome.detail = "already under way (409)"
        else:
            outcome.detail = f"requested to {target}" if target else "requested"
        outcome.accepted_at = time.monotonic()
        outcome.needs_request = False
        self.progress("accepted", outcome)

    def _submit(self, outcome: Outcome, server: Server | None = None) -> None:
        try:
            if server is None:
                server = self.nova.server(self.deadline, outcome.server_id)
            self._request(outcome, server)
        except NotFound:
            outcome.result, outcome.detail = "gone", "deleted meanwhile"
            self.progress("finished", outcome)
        except NovaError as err:
            outcome.detail = str(err)
            self._failed_attempt(outcome)

    def _failed_attempt(self, outcome: Outcome, retriable: bool = True) -> None:
        """A failed attempt: asked again (with backoff) while retries and time remain, and
        only while the server is still on the powered-off source: a server that failed on
        its destination lives on a host that is up, where Nova cannot evacuate it."""
        if retriable and outcome.attempts <= self.retries and not self.deadline.expired():
            outcome.needs_request = True
            outcome.next_try = time.monotonic() + min(2.0 ** outcome.attempts, 10.0)
            LOG.warning("server %s: attempt %d failed (%s); retrying", outcome.server_id,
                        outcome.attempts, outcome.detail)
            self.progress("retry", outcome)
        else:
            outcome.result = "failed"
            outcome.finished_at = time.monotonic()
            self.progress("finished", outcome)

    def _check(self, outcome: Outcome) -> None:
        """Follow one server after its request was accepted (one GET)."""
        try:
            server = self.nova.server(self.deadline, outcome.server_id)
        except NotFound:
            outcome.result, outcome.detail = "gone", "deleted meanwhile"
            self.progress("finished", outcome)
            return
        except NovaError:
            return  # not reachable now: look again next round
        self._judge(outcome, server)

    def _follow(self, pool: concurrent.futures.Executor, following: list[Outcome]) -> None:
        """One round of following: a single listing of what changed since we started (one
        call whatever the number of servers), or one GET per server if that fails; then
        the servers are judged in parallel (judging may start a server)."""
        try:
            changed = {s.id: s for s in self.nova.servers_changed_since(
                self.deadline, self.since)}
        except NovaError as err:
            LOG.debug("changes-since listing failed (%s); asking per server", err)
            list(pool.map(self._check, following))
            return
        judged = []
        for outcome in following:
            server = changed.get(outcome.server_id)
            if server is None:
                continue  # unchanged since the evacuation began: still under way
            if server.status == "DELETED":
                outcome.result, outcome.detail = "gone", "deleted meanwhile"
                self.progress("finished", outcome)
            else:
                judged.append((outcome, server))
        back_on_source = [o for o, s in judged if s.host == self.source
                          and not s.task_state and s.status != "ERROR"]
        failed = self._failed_migrations() if back_on_source else set()
        list(pool.map(lambda pair: self._judge(pair[0], pair[1], failed), judged))

    def _judge(self, outcome: Outcome, server: Server,
               failed_migrations: set[str] | None = None) -> None:
        host, status, task = server.host, server.status, server.task_state
        outcome.host, outcome.status = host, status
        if task:
            return
        if status == "ERROR":
            outcome.detail = server.fault or "server in ERROR"
            if host in self.targets:
                self._full_targets.add(host)
            self._failed_attempt(outcome, retriable=host == self.source)
        elif host != self.source and status == "SHUTOFF" and not outcome.start_requested \
                and not self._was_stopped(outcome):
            # From microversion 2.95 Nova stops evacuated servers, guarding against a source
            # host that might still run them. Ours is confirmed off: start what was running.
            outcome.start_requested = True
            try:
                self.nova.start_server(self.deadline, outcome.server_id)
            except NovaError as err:
                outcome.result, outcome.finished_at = "failed", time.monotonic()
                outcome.detail = f"SHUTOFF on {host}; starting it again failed: {err}"
                self.progress("finished", outcome)
        elif host != self.source and status in ("ACTIVE", "SHUTOFF"):
            outcome.result, outcome.finished_at = "evacuated", time.monotonic()
            outcome.detail = f"{status} on {host}"
            self.progress("finished", outcome)
        elif host == self.source and outcome.server_id in (
                self._failed_migrations() if failed_migrations is None else failed_migrations):
            # Nova undid the rebuild (e.g. no valid host): the request failed.
            outcome.detail = "Nova found no host for it"
            for target in self.targets:
                self._full_targets.add(target)
            self._failed_attempt(outcome)

    def _was_stopped(self, outcome: Outcome) -> bool:
        """Was the server stopped before its evacuation? Known from our listing when we
        asked for the evacuation; for one an earlier runner asked for, the listing may have
        caught it already stopped by Nova (>= 2.95), so its instance actions tell."""
        if outcome.attempts > 0:
            return outcome.was_stopped
        try:
            actions = self.nova.instance_actions(self.deadline, outcome.server_id)
        except NovaError:
            return outcome.was_stopped
        seen_evacuate = False
        for name in actions:  # newest first
            if not seen_evacuate:
                seen_evacuate = name == "evacuate"
                continue
            if name in ("stop", "start", "create", "reboot", "rebuild", "unshelve", "resume",
                        "unpause", "suspend", "pause", "shelve"):
                return name == "stop"
        return outcome.was_stopped

    def _failed_migrations(self) -> set[str]:
        """Servers whose newest evacuation from the source failed (one call for all):
        back on the source with no task, that is a failure; otherwise it is the moment
        before Nova moves a rebuilt server (its record names the source a little longer)."""
        newest: dict[str, Migration] = {}
        for migration in self.nova.evacuation_migrations(self.deadline,
                                                         source_host=self.source):
            key = (migration.created_at or "", migration.id or 0)
            known = newest.get(migration.server_id)
            if known is None or key > (known.created_at or "", known.id or 0):
                newest[migration.server_id] = migration
        return {uuid for uuid, m in newest.items() if m.failed}

    def run(self, outcomes: list[Outcome], servers: dict[str, Server]) -> None:
        pending = [o for o in outcomes if o.result == "pending"]
        with concurrent.futures.ThreadPoolExecutor(self.max_parallel) as pool:
            first = [o for o in pending if o.needs_request]
            list(pool.map(lambda o: self._submit(o, servers.get(o.server_id)), first))
            while True:
                live = [o for o in pending if o.result == "pending"]
                if not live:
                    return
                if self.deadline.remaining() < POLL_INTERVAL:
                    for outcome in live:
                        outcome.result = "unfinished"
                        outcome.detail = outcome.detail or "evacuate_timeout reached"
                    return
                time.sleep(POLL_INTERVAL)
                self.heartbeat()
                now = time.monotonic()
                due = [o for o in live if o.needs_request and o.next_try <= now]
                following = [o for o in live if not o.needs_request]
                list(pool.map(self._submit, due))
                if following:
                    self._follow(pool, following)


def requested_since(nova: Nova, deadline: Deadline, host: str, since: float) -> set[str]:
    """Servers whose evacuation from `host` was asked for since `since` (epoch) and did not
    fail: an earlier runner's work. One call.

    Needed because a server's record still names the source host, with no task, for a
    moment after its rebuild finished elsewhere (seen on Nova 34 at >= 2.95): a runner
    listing the host then would ask again, and Nova accepts a second evacuation.
    """
    start = clock.iso_utc(since)[:19]  # without the Z
    return {m.server_id for m in nova.evacuation_migrations(deadline, source_host=host)
            if (m.created_at or "")[:19] >= start and not m.failed}


class Prefetch:
    """The reads an evacuation starts with (the host's servers, the evacuations already
    requested in this incident), started early in the background: they need neither the
    force-down nor the lease, only the power-off, and each round trip saved brings the
    first evacuation request sooner."""

    def __init__(self, nova: Nova, deadline: Deadline, host: str,
                 incident_start: Callable[[], float]) -> None:
        pool = concurrent.futures.ThreadPoolExecutor(2)
        self._servers = pool.submit(nova.servers_on, deadline, host)
        self._earlier = pool.submit(
            lambda: requested_since(nova, deadline, host, incident_start()))
        pool.shutdown(wait=False)

    def servers(self) -> list[Server]:
        return self._servers.result()

    def earlier(self) -> set[str]:
        return self._earlier.result()


def evacuate_servers(nova: Nova, deadline: Deadline, proof: PowerOffConfirmed, mode: str,
                     tag: str, max_parallel: int, retries: int,
                     target_hosts: list[str] | None = None, progress: Progress | None = None,
                     heartbeat: Callable[[], None] | None = None,
                     may_request: Callable[[], bool] | None = None,
                     servers: list[Server] | None = None,
                     earlier: set[str] | None = None) -> Summary:
    """Choose among the servers of the powered-off host (listed in one call unless given),
    evacuate, follow. Returns the summary.

    `earlier`: servers whose evacuation was requested earlier in this incident
    (requested_since): followed, never requested again.
    """
    host = proof.host
    summary = Summary(host=host)
    if servers is None:
        servers = nova.servers_on(deadline, host)
    summary.found = len(servers)
    chosen, skipped = Planner(nova, deadline, mode, tag).plan(servers)
    if earlier:
        # Servers an earlier runner (killed mid-way) already moved off the host: followed
        # too, so that those Nova landed SHUTOFF (>= 2.95) are started again.
        listed = {s.id for s in servers}
        for server_id in sorted(earlier - listed):
            try:
                moved = nova.server(deadline, server_id)
            except NovaError:
                continue
            outcome = Outcome(server_id=server_id, name=moved.name, host=moved.host,
                              status=moved.status,
                              needs_request=False,
                              detail="evacuation requested earlier in this incident")
            chosen.append(outcome)
            servers.append(moved)
        for outcome in chosen:
            if outcome.server_id in earlier and outcome.needs_request:
                outcome.needs_request = False
                outcome.detail = "evacuation requested earlier in this incident"
    summary.selected = len(chosen)
    summary.outcomes = chosen + skipped
    for outcome in skipped:
        if progress:
            progress("finished", outcome)
    if target_hosts:
        _enable_targets(nova, deadline, target_hosts)
    runner = Runner(nova, deadline, proof, max_parallel, retries, target_hosts, progress,
                    heartbeat, may_request)
    runner.run(chosen, {s.id: s for s in servers})
    accepted = [o.accepted_at for o in chosen if o.accepted_at is not None]
    if accepted:
        summary.all_accepted_after = max(accepted) - summary.started
    summary.finished_after = time.monotonic() - summary.started
    for outcome in summary.outcomes:
        LOG.info("server %s (%s): %s%s", outcome.server_id, outcome.name, outcome.result,
                 f" - {outcome.detail}" if outcome.detail else "")
    LOG.info(summary.line())
    return summary


def _enable_targets(nova: Nova, deadline: Deadline, hosts: list[str]) -> None:
    """Reserved hosts are kept disabled so nothing else lands there: enable them first."""
    for svc in nova.services(deadline):
        if svc.host in hosts and svc.status == "disabled":
            LOG.info("enabling reserved target host %s", svc.host)
            nova.update_service(deadline, svc, enable=True)
