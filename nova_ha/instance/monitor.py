"""The instance monitor: one long-running process on each compute node.

Threads: libvirt's event loop (``watch``) only queues what it hears; the main loop keeps
the connection up, touches the liveness file, counts the heartbeats and hands each failure
to a small pool of recovery workers. A heartbeat round pings in threads of its own and
queues its answers: libvirt holds a ping to a hung guest's agent 5 s whatever its timeout,
and the main loop must not wait for that before it handles a crash. A failure is first
written to the journal, so neither Nova being unreachable nor the monitor being killed
loses it: a worker gathers the facts, asks ``decide``, and recovers through Nova
(``recover``); an attempt that cannot reach Nova stays pending and is retried, within
recovery_retry_window. Each outcome is one event to the operators and one history entry in
the host's record; nothing is written per heartbeat. At rest the main loop sleeps in one
queue wait, until the next thing due.
"""

from __future__ import annotations

import concurrent.futures
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nova_ha.errors import NovaHaError
from nova_ha.instance import decide, recover
from nova_ha.instance.decide import Facts, GuestEvent, InstanceAction
from nova_ha.instance.heartbeat import Heartbeats
from nova_ha.instance.journal import Journal, Pending
from nova_ha.instance.watch import Guest, LibvirtWatch
from nova_ha.lib import log, params
from nova_ha.lib.lifecycle import Event, HostState

if TYPE_CHECKING:
    from nova_ha.lib.notify import Notifier
    from nova_ha.lib.state import StateStore
    from nova_ha.openstack.compute import Nova
    from nova_ha.openstack.transport import Deadline

LOG = log.get("instance-monitor")

ALIVE_EVERY = 5.0  # seconds between two touches of the liveness file
RECOVERY_WORKERS = 4  # servers recovered at once
PING_WORKERS = 8  # guests pinged at once
Job = Callable[[], None]  # what the other threads queue for the main loop
JOURNAL_NAME = "instance-journal.json"


@dataclass(frozen=True)
class Context:
    """What the monitor works with: the settings, this node, and its clients."""

    parsed: params.Parsed
    node: str  # the Pacemaker node name
    nova: Nova
    store: StateStore | None  # None: no cluster (nothing recorded, host assumed ok)
    notifier: Notifier

    @property
    def host(self) -> str:
        """This node as Nova names its compute host."""
        return self.parsed.settings.naming.nova_host(self.node)


class Monitor:
    """The monitor's state and its steps; `run` is the main loop."""

    def __init__(self, ctx: Context, watch_factory: Callable[[Monitor], LibvirtWatch]) -> None:
        self.ctx = ctx
        self.settings = ctx.parsed.settings.instance
        self.queue: queue.Queue[Job] = queue.Queue()
        self.heartbeats = Heartbeats(self.settings.heartbeat_threshold)
        path = os.path.join(self.settings.state_dir, JOURNAL_NAME)
        self.journal = Journal(path, self.settings.restart_window)
        self.lock = threading.Lock()  # the journal and the in-flight set
        self.in_flight: set[str] = set()
        self.workers = concurrent.futures.ThreadPoolExecutor(RECOVERY_WORKERS, "recovery")
        self.pingers = concurrent.futures.ThreadPoolExecutor(PING_WORKERS, "ping")
        self.rounds = concurrent.futures.ThreadPoolExecutor(1, "heartbeat")
        self.watch = watch_factory(self)
        self.next_round = 0.0
        self.round_running = False

    # -- the sink of the libvirt thread: queue only --

    def guest_event(self, uuid: str, event: GuestEvent, detail: str) -> None:
        self.queue.put(lambda: self.failure(uuid, event, detail))

    def guest_started(self, uuid: str) -> None:
        self.queue.put(lambda: self.heartbeats.started(uuid))

    def guest_stopped(self, uuid: str) -> None:
        self.queue.put(lambda: self.heartbeats.gone(uuid))

    def wake(self) -> None:
        self.queue.put(lambda: None)

    # -- the main loop --

    def run(self, alive_file: str | None, stopping: Callable[[], bool]) -> None:
        next_alive = 0.0
        while not stopping():
            now = time.monotonic()
            self.watch.ensure()
            if now >= next_alive:
                _touch(alive_file)
                next_alive = now + ALIVE_EVERY
            if self.settings.heartbeat and now >= self.next_round and not self.round_running:
                self.round_running = True
                self.rounds.submit(self.heartbeat_round)
            self.retry_due()
            self.drain(self._wait_for(next_alive))

    def _wait_for(self, next_alive: float) -> float:
        """Seconds until the next thing to do (the queue wakes the loop before)."""
        times = [next_alive]
        if self.watch.conn is None:  # connected, a lost connection wakes the loop
            times.append(self.watch.next_try)
        if self.settings.heartbeat and not self.round_running:
            times.append(self.next_round)
        due = self.journal.next_due()
        if due is not None:
            times.append(time.monotonic() + max(0.0, due - time.time()))
        return max(0.05, min(times) - time.monotonic())

    def drain(self, timeout: float) -> None:
        """Handle what the libvirt thread queued, waiting up to `timeout` for the first."""
        try:
            job = self.queue.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            job()
            try:
                job = self.queue.get_nowait()
            except queue.Empty:
                return

    def failure(self, uuid: str, event: GuestEvent, detail: str) -> None:
        """A guest event: judged on libvirt's word alone when that is enough, else kept
        in the journal and handed to a worker."""
        early = decide.prejudge(event, self.settings.recover_guest_shutdown)
        if early is not None:
            LOG.info("guest %s: %s (%s): %s", uuid, event, detail, early.reason)
            return
        with self.lock:
            if event == GuestEvent.FOUND_CRASHED and self.journal.left_alone(uuid):
                # Given up earlier (a crash loop): every scan finds it again, no news.
                LOG.debug("guest %s: %s, left alone since it was given up", uuid, event)
                return
            self.journal.ran_again(uuid)  # a live event: the guest had run again
            pending = self.journal.add(uuid, event, detail, time.time())
        if pending is None:
            LOG.error("guest %s: %s, but the journal is full: not recovered", uuid, event)
            self._outcome(uuid, Event.INSTANCE_RECOVERY_FAILED, f"{event}: journal full")
            return
        LOG.warning("guest %s: %s (%s): recovery pending", uuid, event, detail)
        self.dispatch(pending)

    def retry_due(self) -> None:
        with self.lock:
            due = self.journal.due(time.time())
        for pending in due:
            self.dispatch(pending)

    def dispatch(self, pending: Pending) -> None:
        with self.lock:
            if pending.server_id in self.in_flight:
                return
            self.in_flight.add(pending.server_id)
        self.workers.submit(self._work, pending)

    # -- the heartbeat --

    def heartbeat_round(self) -> None:
        """The heartbeat thread: one ping for each running guest with an agent (in
        parallel, each bounded by heartbeat_timeout, or libvirt's 5 s for a hung agent);
        the answers go to the main loop."""
        guests: list[Guest] = []
        answers: dict[str, bool] = {}
        try:
            guests = [g for g in self.watch.guests() if g.has_agent]
            timeout = self.settings.heartbeat_timeout
            running = [g.uuid for g in guests if g.running]
            pings = self.pingers.map(lambda uuid: self.watch.ping(uuid, timeout), running)
            answers = dict(zip(running, pings, strict=True))
        except Exception as err:  # the round ends whatever happens: the next one comes
            LOG.warning("heartbeat round failed: %s: %s", type(err).__name__, err)
        self.queue.put(lambda: self.heartbeat_answers(guests, answers))

    def heartbeat_answers(self, guests: list[Guest], answers: dict[str, bool]) -> None:
        """The main loop: count a round's answers; a guest that failed is handled like any
        failure. The next round comes heartbeat_interval after this one ended."""
        self.round_running = False
        self.next_round = time.monotonic() + self.settings.heartbeat_interval
        self.heartbeats.keep_only({g.uuid for g in guests})
        for guest in guests:
            if answers.get(guest.uuid):
                self.heartbeats.answered(guest.uuid)
            elif self.heartbeats.missed(guest.uuid, guest.running):
                misses = self.settings.heartbeat_threshold
                self.failure(guest.uuid, GuestEvent.HEARTBEAT_LOST, f"{misses} pings missed")

    # -- a worker: facts, decision, recovery --

    def _work(self, pending: Pending) -> None:
        try:
            self._work_once(pending)
        except Exception as err:  # a worker never dies silently: retried or given up
            self._attempt_failed(pending, f"{type(err).__name__}: {err}")
        finally:
            with self.lock:
                self.in_flight.discard(pending.server_id)
            self.wake()

    def _work_once(self, pending: Pending) -> None:
        from nova_ha.openstack.exceptions import NovaError
        from nova_ha.openstack.transport import Deadline

        uuid, event = pending.server_id, GuestEvent(pending.event)
        try:
            facts = self.facts(uuid, Deadline(3 * self.ctx.nova.timeout + 5))
        except NovaHaError as err:
            self._attempt_failed(pending, f"cannot read Nova's view: {err}")
            return
        decision = decide.decide(event, facts)
        LOG.info("guest %s: %s: %s: %s", uuid, event, decision.action, decision.reason)
        if decision.action == InstanceAction.IGNORE:
            self._finish(uuid)
            return
        if pending.attempts == 0:
            self._notify(uuid, Event.INSTANCE_FAILED, f"{event}: {decision.reason}")
        if decision.action == InstanceAction.GIVE_UP:
            with self.lock:
                self.journal.gave_up(uuid, time.time())
            self._finish(uuid)
            self._outcome(uuid, Event.INSTANCE_RECOVERY_FAILED, f"{event}: {decision.reason}")
            return
        try:
            phases = self._recovery().run(uuid)
        except recover.NotOurs as err:
            LOG.info("guest %s: recovery ended: %s", uuid, err)
            self._finish(uuid)
            return
        except NovaError as err:
            self._attempt_failed(pending, str(err))
            return
        with self.lock:
            self.journal.restarted(uuid, time.time())
        self._finish(uuid)
        self._outcome(uuid, Event.INSTANCE_RECOVERED, f"{event}: {phases.line()}", True)

    def _recovery(self) -> recover.Recovery:
        return recover.Recovery(self.ctx.nova, self.ctx.host, self.settings.recovery_timeout)

    def facts(self, uuid: str, deadline: Deadline) -> Facts:
        """Nova's view of the server and of this host's nova-compute, the host's record,
        whether the server is chosen, its recent restarts."""
        from nova_ha.lib.evacuation import Planner
        from nova_ha.openstack.exceptions import NotFound

        nova, ctx = self.ctx.nova, self.ctx
        try:
            server = nova.server(deadline, uuid)
        except NotFound:
            server = None
        service = nova.service(deadline, ctx.host)
        choice = ctx.parsed.settings.evacuation
        chosen = server is not None and (
            choice.mode == "all" or Planner(nova, deadline, choice.mode, choice.tag).tagged(server)
        )
        with self.lock:
            restarts = self.journal.recent_restarts(uuid, time.time())
        return Facts(
            server=server,
            host=ctx.host,
            chosen=chosen,
            host_state=ctx.store.get(ctx.node).state if ctx.store else HostState.OK,
            compute_up=service.state == "up" and not service.forced_down,
            recent_restarts=restarts,
            max_restarts=self.settings.max_restarts,
            recover_guest_shutdown=self.settings.recover_guest_shutdown,
        )

    def _attempt_failed(self, pending: Pending, error: str) -> None:
        with self.lock:
            again = self.journal.attempt_failed(pending.server_id, error, time.time())
        if again is None:
            return
        if pending.attempts == 0:
            self._notify(pending.server_id, Event.INSTANCE_FAILED, f"{pending.event}: {error}")
        if time.time() - again.first < self.settings.retry_window:
            wait = again.next_try - time.time()
            LOG.warning(
                "guest %s: attempt %d failed (%s); again in %.0f s",
                pending.server_id,
                again.attempts,
                error,
                wait,
            )
            return
        self._finish(pending.server_id)
        detail = f"{pending.event}: given up after {again.attempts} attempts: {error}"
        self._outcome(pending.server_id, Event.INSTANCE_RECOVERY_FAILED, detail)

    def _finish(self, uuid: str) -> None:
        with self.lock:
            self.journal.finish(uuid)

    # -- what the operators see --

    def _notify(self, uuid: str, kind: Event, detail: str) -> None:
        self.ctx.notifier.send(kind, self.ctx.node, host=self.ctx.host, detail=detail, server=uuid)

    def _outcome(self, uuid: str, kind: Event, detail: str, recovered: bool = False) -> None:
        """An outcome: the operators' event, and one entry in the host's history."""
        report = LOG.info if kind == Event.INSTANCE_RECOVERED else LOG.warning
        report("guest %s: %s: %s", uuid, kind, detail)
        self._notify(uuid, kind, detail)
        if self.ctx.store is None:
            return
        try:
            self.ctx.store.note(self.ctx.node, kind, f"{uuid} {detail}", recovered=recovered)
        except NovaHaError as err:
            LOG.warning("could not record %s of %s: %s", kind, uuid, err)

    def close(self) -> None:
        self.workers.shutdown(wait=False, cancel_futures=True)
        self.pingers.shutdown(wait=False, cancel_futures=True)
        self.rounds.shutdown(wait=False, cancel_futures=True)


def _touch(path: str | None) -> None:
    if path:
        try:
            with open(path, "w") as alive:
                alive.write(f"{time.time():.3f} {os.getpid()}\n")
        except OSError as err:
            LOG.warning("cannot touch %s: %s", path, err)


def catch_signals() -> Callable[[], bool]:
    """SIGTERM and SIGINT end the main loop at its next wake-up (at most ALIVE_EVERY)."""
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))
    signal.signal(signal.SIGINT, lambda signum, frame: stopping.append(signum))
    return lambda: bool(stopping)


def open_store() -> Any:
    """The cluster's record store, or None off a cluster (no cibadmin)."""
    import shutil

    from nova_ha.lib import state

    return state.CibStateStore() if shutil.which("cibadmin") else None
