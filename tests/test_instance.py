"""Instance-level HA, its logic with small fakes: the decision table, the heartbeat, the
journal, the libvirt watcher's reconnect and scan, the recovery through Nova."""

from __future__ import annotations

import json
import os
import threading

import pytest

from nova_ha.instance import decide
from nova_ha.instance.decide import Facts, GuestEvent, InstanceAction
from nova_ha.instance.heartbeat import Heartbeats
from nova_ha.instance.journal import BACKOFF, Journal
from nova_ha.instance.monitor import Context, Monitor
from nova_ha.instance.recover import NotOurs, Recovery
from nova_ha.instance.watch import Guest, LibvirtWatch, agent_channel
from nova_ha.lib import params
from nova_ha.lib.lifecycle import Event, HostState
from nova_ha.lib.state import MemoryStateStore
from nova_ha.openstack.exceptions import Conflict, NotFound, Unavailable
from nova_ha.openstack.views import Server
from tests import fake_libvirt
from tests.helpers import wait_until

HOST = "compute1"
UUID = "6f1c8a52-8e55-4c41-9d2c-1c3f3b0c2a11"
E, A = GuestEvent, InstanceAction


def server(**kwargs: object) -> Server:
    fields = dict(id=UUID, status="ACTIVE", host=HOST, vm_state="active", task_state=None)
    fields.update(kwargs)
    return Server(**fields)  # type: ignore[arg-type]


def facts(**kwargs: object) -> Facts:
    fields: dict[str, object] = dict(server=server(), host=HOST, chosen=True)
    fields.update(kwargs)
    return Facts(**fields)  # type: ignore[arg-type]


# -- libvirt's numbers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "event, detail, expected",
    [
        (5, 5, E.QEMU_CRASHED),  # STOPPED/FAILED: kill -9 of QEMU (measured: 5/5)
        (5, 2, E.PANICKED),  # STOPPED/CRASHED
        (8, 0, E.PANICKED),  # CRASHED/PANICKED
        (5, 0, E.GUEST_SHUTDOWN),
        (5, 1, E.STOPPED_BY_API),  # DESTROYED: Nova's stop, a hard reboot, a delete
        (5, 3, E.MOVED),  # MIGRATED
        (5, 4, E.MOVED),  # SAVED
        (2, 0, None),  # STARTED
        (3, 0, None),  # SUSPENDED
        (6, 1, None),  # SHUTDOWN/GUEST (STOPPED follows)
    ],
)
def test_lifecycle_events_map_to_guest_events(event, detail, expected):
    assert decide.from_lifecycle(event, detail) == expected


def test_scan_states_and_watchdog_actions():
    assert decide.from_state(5, 3) == E.FOUND_CRASHED  # SHUTOFF/CRASHED
    assert decide.from_state(5, 8) == E.FOUND_CRASHED  # SHUTOFF/DAEMON: killed at reconnect
    assert decide.from_state(6, 1) == E.FOUND_CRASHED  # CRASHED/PANICKED (preserved)
    assert decide.from_state(5, 2) is None  # SHUTOFF/DESTROYED: stopped on purpose
    assert decide.from_state(5, 1) is None  # SHUTOFF/SHUTDOWN
    assert decide.from_state(1, 1) is None
    assert decide.from_watchdog(0) is None  # action none
    assert decide.from_watchdog(2) == E.WATCHDOG  # reset


# -- the decision table: every reason ------------------------------------------------------

DECISIONS = [
    # (event, facts, action, words of the reason)
    (E.QEMU_CRASHED, facts(), A.RECOVER, "recovering through Nova"),
    (E.PANICKED, facts(), A.RECOVER, "recovering"),
    (E.WATCHDOG, facts(), A.RECOVER, "recovering"),
    (E.HEARTBEAT_LOST, facts(), A.RECOVER, "recovering"),
    (E.FOUND_CRASHED, facts(), A.RECOVER, "recovering"),
    # Nova's power-state sync stops a crashed server: a crash is still recovered
    (E.QEMU_CRASHED, facts(server=server(task_state="powering-off")), A.RECOVER, "recovering"),
    (E.QEMU_CRASHED, facts(server=server(status="SHUTOFF", vm_state="stopped")), A.RECOVER, ""),
    (E.FOUND_CRASHED, facts(server=server(status="SHUTOFF", vm_state="stopped")), A.RECOVER, ""),
    # users and Nova
    (E.STOPPED_BY_API, facts(), A.IGNORE, "stopped through libvirt's API"),
    (E.MOVED, facts(), A.IGNORE, "migrated or saved on purpose"),
    (E.GUEST_SHUTDOWN, facts(), A.IGNORE, "shut itself down"),
    (E.GUEST_SHUTDOWN, facts(recover_guest_shutdown=True), A.RECOVER, "recovering"),
    (
        E.GUEST_SHUTDOWN,
        facts(recover_guest_shutdown=True, server=server(task_state="powering-off")),
        A.IGNORE,
        "task powering-off",
    ),
    (E.QEMU_CRASHED, facts(server=None), A.IGNORE, "no server with this domain's UUID"),
    (
        E.QEMU_CRASHED,
        facts(server=server(vm_state="deleted", status="DELETED")),
        A.IGNORE,
        "deleted",
    ),
    (E.QEMU_CRASHED, facts(server=server(task_state="deleting")), A.IGNORE, "task deleting"),
    (E.HEARTBEAT_LOST, facts(server=server(task_state="rebooting")), A.IGNORE, "task rebooting"),
    (E.HEARTBEAT_LOST, facts(server=server(task_state="migrating")), A.IGNORE, "task migrating"),
    (E.QEMU_CRASHED, facts(server=server(task_state="resize_migrating")), A.IGNORE, "resize"),
    (E.QEMU_CRASHED, facts(server=server(task_state="shelving")), A.IGNORE, "shelving"),
    (E.QEMU_CRASHED, facts(server=server(task_state="rescuing")), A.IGNORE, "rescuing"),
    (E.QEMU_CRASHED, facts(server=server(task_state="rebuilding")), A.IGNORE, "rebuilding"),
    (E.QEMU_CRASHED, facts(server=server(host="compute2")), A.IGNORE, "on compute2"),
    (E.QEMU_CRASHED, facts(server=server(vm_state="resized")), A.IGNORE, "vm_state resized"),
    (E.QEMU_CRASHED, facts(server=server(vm_state="rescued")), A.IGNORE, "vm_state rescued"),
    (E.QEMU_CRASHED, facts(server=server(vm_state="shelved")), A.IGNORE, "vm_state shelved"),
    (
        E.QEMU_CRASHED,
        facts(server=server(vm_state="error", status="ERROR")),
        A.IGNORE,
        "vm_state error",
    ),
    (
        E.HEARTBEAT_LOST,
        facts(server=server(vm_state="stopped", status="SHUTOFF")),
        A.IGNORE,
        "shows it stopped",
    ),
    (
        E.WATCHDOG,
        facts(server=server(vm_state="stopped", status="SHUTOFF")),
        A.IGNORE,
        "shows it stopped",
    ),
    # the host path owns the host
    (E.QEMU_CRASHED, facts(host_state=HostState.FENCED), A.IGNORE, "host is fenced"),
    (E.QEMU_CRASHED, facts(host_state=HostState.EVACUATING), A.IGNORE, "host is evacuating"),
    (E.QEMU_CRASHED, facts(compute_up=False), A.IGNORE, "nova-compute of this host is down"),
    # policy
    (E.QEMU_CRASHED, facts(chosen=False), A.IGNORE, "not chosen"),
    (E.QEMU_CRASHED, facts(recent_restarts=3, max_restarts=3), A.GIVE_UP, "crash loop: 3"),
    (E.QEMU_CRASHED, facts(recent_restarts=2, max_restarts=3), A.RECOVER, "recovering"),
]


@pytest.mark.parametrize("event, given, action, words", DECISIONS)
def test_decision_table(event, given, action, words):
    decision = decide.decide(event, given)
    assert decision.action == action
    assert words in decision.reason


def test_prejudge_needs_no_nova():
    assert decide.prejudge(E.STOPPED_BY_API, False).action == A.IGNORE
    assert decide.prejudge(E.GUEST_SHUTDOWN, True) is None
    assert decide.prejudge(E.QEMU_CRASHED, False) is None


# -- the heartbeat -------------------------------------------------------------------------


def test_heartbeat_fails_after_threshold_once():
    beats = Heartbeats(3)
    beats.started(UUID)
    beats.answered(UUID)
    assert [beats.missed(UUID, running=True) for _ in range(5)] == [
        False,
        False,
        True,
        False,
        False,
    ]


def test_heartbeat_never_answered_is_not_failed():
    beats = Heartbeats(3)
    beats.started(UUID)
    assert not any(beats.missed(UUID, running=True) for _ in range(10))


def test_heartbeat_paused_or_migrating_restarts_the_run():
    beats = Heartbeats(3)
    beats.answered(UUID)
    assert not beats.missed(UUID, running=True)
    assert not beats.missed(UUID, running=True)
    assert not beats.missed(UUID, running=False)  # paused: the run starts again
    assert beats.misses(UUID) == 0
    assert not beats.missed(UUID, running=True)
    assert not beats.missed(UUID, running=True)
    assert beats.missed(UUID, running=True)


def test_heartbeat_restart_needs_a_new_answer():
    beats = Heartbeats(1)
    beats.answered(UUID)
    assert beats.missed(UUID, running=True)
    beats.started(UUID)  # Nova started it again
    assert not beats.missed(UUID, running=True)  # has not answered since
    beats.answered(UUID)
    assert beats.missed(UUID, running=True)
    beats.keep_only(set())
    assert beats.watched() == 0


# -- the journal ---------------------------------------------------------------------------


def test_journal_survives_a_restart_and_backs_off(tmp_path):
    path = str(tmp_path / "state" / "journal.json")
    journal = Journal(path, restart_window=3600)
    journal.add(UUID, "qemu_crashed", "libvirt event 5/5", now=1000.0)
    assert journal.add(UUID, "panicked", "again", now=1001.0).event == "qemu_crashed"
    journal.attempt_failed(UUID, "Nova unreachable", now=1002.0)
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"

    again = Journal(path, restart_window=3600)  # the monitor restarted
    [pending] = again.pending()
    assert (pending.server_id, pending.attempts, pending.last_error) == (
        UUID,
        1,
        "Nova unreachable",
    )
    assert pending.next_try == 1002.0 + BACKOFF[0]
    assert again.due(1003.0) == [] and again.due(1002.0 + BACKOFF[0]) == [pending]
    again.finish(UUID)
    assert Journal(path, restart_window=3600).pending() == []


def test_journal_counts_restarts_in_the_window(tmp_path):
    journal = Journal(str(tmp_path / "j.json"), restart_window=100)
    for t in (10.0, 50.0, 90.0):
        journal.restarted(UUID, t)
    assert journal.recent_restarts(UUID, 95.0) == 3
    assert journal.recent_restarts(UUID, 120.0) == 2  # 10.0 left the window
    assert Journal(str(tmp_path / "j.json"), 100).recent_restarts(UUID, 120.0) == 2


def test_damaged_journal_is_set_aside(tmp_path):
    path = tmp_path / "j.json"
    path.write_text('{"pending": [{"server_id": 3}')
    assert Journal(str(path), 100).pending() == []
    assert (tmp_path / "j.json.damaged").exists()


def test_journal_is_bounded(tmp_path, monkeypatch):
    from nova_ha.instance import journal as module

    monkeypatch.setattr(module, "MAX_PENDING", 2)
    journal = Journal(str(tmp_path / "j.json"), 100)
    assert journal.add("a", "qemu_crashed", "", 1.0) and journal.add("b", "qemu_crashed", "", 1.0)
    assert journal.add("c", "qemu_crashed", "", 1.0) is None
    assert len(json.loads((tmp_path / "j.json").read_text())["pending"]) == 2


# -- the libvirt watcher with a fake connection -----------------------------------------------


class Sink:
    def __init__(self) -> None:
        self.events: list[tuple[str, GuestEvent, str]] = []
        self.started: list[str] = []
        self.woken = 0

    def guest_event(self, uuid: str, event: GuestEvent, detail: str) -> None:
        self.events.append((uuid, event, detail))

    def guest_started(self, uuid: str) -> None:
        self.started.append(uuid)

    def guest_stopped(self, uuid: str) -> None:
        pass

    def wake(self) -> None:
        self.woken += 1


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setattr(fake_libvirt, "connections", [])
    monkeypatch.setattr(fake_libvirt, "refuse", 0)
    return fake_libvirt


def test_watch_connects_registers_and_maps_events(fake):
    sink = Sink()
    watch = LibvirtWatch("qemu:///system", sink, module=fake)
    assert watch.ensure()
    [conn] = fake.connections
    assert conn.readonly and conn.keepalive == (5, 3) and set(conn.callbacks) == {0, 3}
    conn.domains[UUID] = fake.FakeDomain(UUID)
    conn.lifecycle(UUID, 5, 5)  # QEMU killed
    conn.lifecycle(UUID, 5, 1)  # destroyed: reported too, decided as ignored
    conn.lifecycle(UUID, 2, 0)  # started
    conn.callbacks[3](conn, conn.domains[UUID], 2, None)  # watchdog reset
    assert [(e, d) for _, e, d in sink.events] == [
        (E.QEMU_CRASHED, "libvirt event 5/5"),
        (E.STOPPED_BY_API, "libvirt event 5/1"),
        (E.WATCHDOG, "watchdog action 2"),
    ]
    assert sink.started == [UUID]


def test_watch_loop_keeps_libvirt_errors_off_stderr(fake, monkeypatch, capfd):
    monkeypatch.setattr(fake, "error_handler", None)
    LibvirtWatch("qemu:///system", Sink(), module=fake).start_loop()
    assert fake.registered.is_set()
    # libvirt calls it for every error (a ping of a guest without an agent): nothing printed.
    fake.error_handler(None, (86, 10, "Guest agent is not responding"))
    assert capfd.readouterr() == ("", "")


def test_watch_reconnects_with_backoff_then_scans(fake):
    clock = [100.0]
    sink = Sink()
    watch = LibvirtWatch("qemu:///system", sink, module=fake, clock=lambda: clock[0])
    assert watch.ensure()
    first = fake.connections[0]
    first.lose()  # libvirtd restarted
    assert sink.woken == 1
    fake.refuse = 2
    assert not watch.ensure()  # refused: the next try after a pause
    assert not watch.ensure()  # too early
    clock[0] += 1.0
    assert not watch.ensure()  # refused again: a longer pause
    clock[0] += 1.5
    assert not watch.ensure()
    clock[0] += 0.5

    def crashed_meanwhile(uri: str) -> object:
        conn = fake.FakeConnection(uri, True)
        conn.domains = {
            UUID: fake.FakeDomain(UUID, state=5, reason=3),  # shut off, crashed
            "other": fake.FakeDomain("other", state=5, reason=2),  # destroyed
            "running": fake.FakeDomain("running"),
        }
        fake.connections.append(conn)
        return conn

    fake.openReadOnly = crashed_meanwhile
    try:
        assert watch.ensure()
    finally:
        del fake.openReadOnly
    assert [(u, e) for u, e, _ in sink.events] == [(UUID, E.FOUND_CRASHED)]
    assert watch.failures == 0


def test_watch_guests_and_ping(fake):
    watch = LibvirtWatch("qemu:///system", Sink(), readonly=False, module=fake)
    watch.ensure()
    conn = fake.connections[0]
    assert not conn.readonly  # the agent's ping needs a read-write connection
    conn.domains = {
        "a": fake.FakeDomain("a"),
        "b": fake.FakeDomain("b", state=3, reason=2),  # paused for a migration
        "c": fake.FakeDomain("c", agent=False),
    }
    guests = {g.uuid: g for g in watch.guests()}
    assert (guests["a"].running, guests["a"].has_agent) == (True, True)
    assert (guests["b"].running, guests["c"].has_agent) == (False, False)
    assert watch.ping("a", 2.0)
    conn.domains["a"].answers = False
    assert not watch.ping("a", 2.0)
    assert not watch.ping("gone", 2.0)


class HungAgentWatch:
    """A connected watch with one guest whose ping hangs (libvirt holds a ping to a hung
    agent 5 s) until released."""

    conn, next_try = object(), 0.0

    def __init__(self) -> None:
        self.pinging, self.release = threading.Event(), threading.Event()

    def ensure(self) -> bool:
        return True

    def guests(self) -> list[Guest]:
        return [Guest(UUID, running=True, has_agent=True)]

    def ping(self, uuid: str, timeout: float) -> bool:
        self.pinging.set()
        self.release.wait(10)
        return False


def test_a_slow_heartbeat_round_does_not_hold_a_crash(tmp_path):
    parsed = params.parse({"heartbeat": "1", "state_dir": str(tmp_path)}, params.INSTANCE)
    watch = HungAgentWatch()
    monitor = Monitor(Context(parsed, HOST, None, None, None), lambda sink: watch)  # type: ignore[arg-type,return-value]
    dispatched: list[str] = []
    monitor.dispatch = lambda pending: dispatched.append(pending.server_id)  # type: ignore[method-assign]
    stopping = threading.Event()
    loop = threading.Thread(target=monitor.run, args=(None, stopping.is_set))
    loop.start()
    try:
        assert watch.pinging.wait(5)
        crashed = "0b6f5f1e-7a7e-4d38-9a0c-3c1b2f9e4d10"
        monitor.guest_event(crashed, E.QEMU_CRASHED, "libvirt event 5/5")
        # Handed to a worker while the ping still hangs (again and again here: the stub
        # worker never ends it).
        assert set(wait_until(lambda: dispatched, 5)) == {crashed}
        assert monitor.round_running
    finally:
        watch.release.set()
        stopping.set()
        monitor.wake()
        loop.join(10)
        monitor.close()
    assert not loop.is_alive()


def test_agent_channel_in_domain_xml():
    assert agent_channel(fake_libvirt.FakeDomain(UUID).XMLDesc(0))
    assert not agent_channel(fake_libvirt.FakeDomain(UUID, agent=False).XMLDesc(0))
    assert not agent_channel("<domain")


# -- the recovery through Nova -----------------------------------------------------------------


class FakeNova:
    """Nova's server API as the recovery sees it: a stop lands SHUTOFF, a start ACTIVE,
    after `lag` looks; faults on demand."""

    timeout = 1.0

    def __init__(self, status: str = "ACTIVE", lag: int = 1) -> None:
        self.view = server(status=status, vm_state="active" if status == "ACTIVE" else "stopped")
        self.calls: list[str] = []
        self.lag, self.looks = lag, 0
        self.target: tuple[str, str] | None = None
        self.fail: Exception | None = None

    def server(self, deadline: object, server_id: str) -> Server:
        if self.fail:
            raise self.fail
        self.looks += 1
        if self.target and self.looks >= self.lag:
            status, vm_state = self.target
            self.view = server(status=status, vm_state=vm_state)
            self.target = None
        return self.view

    def stop_server(self, deadline: object, server_id: str) -> None:
        self.calls.append("stop")
        self.view = server(task_state="powering-off")
        self.target, self.looks = ("SHUTOFF", "stopped"), 0

    def start_server(self, deadline: object, server_id: str) -> None:
        self.calls.append("start")
        if self.view.status == "ACTIVE":
            raise Conflict("already active", 409)
        self.view = server(status="SHUTOFF", vm_state="stopped", task_state="powering-on")
        self.target, self.looks = ("ACTIVE", "active"), 0


def recovery(nova: FakeNova) -> Recovery:
    return Recovery(nova, HOST, timeout=5.0, poll=0.01, sleep=lambda s: None)  # type: ignore[arg-type]


def test_recovery_stops_starts_and_follows_to_active():
    nova = FakeNova(lag=3)
    phases = recovery(nova).run(UUID)
    assert nova.calls == ["stop", "start"] and nova.view.status == "ACTIVE"
    assert list(phases.marks) == ["stop asked", "shutoff", "start asked", "active"]


def test_recovery_of_a_server_nova_shows_shutoff_only_starts_it():
    nova = FakeNova(status="SHUTOFF")
    recovery(nova).run(UUID)
    assert nova.calls == ["start"]


def test_recovery_stops_when_the_server_is_no_longer_ours():
    nova = FakeNova()
    nova.fail = NotFound("gone", 404)
    with pytest.raises(NotOurs, match="deleted"):
        recovery(nova).run(UUID)
    nova = FakeNova()
    nova.view = server(host="compute2")
    with pytest.raises(NotOurs, match="compute2"):
        recovery(nova).run(UUID)
    nova = FakeNova()
    nova.view = server(task_state="resize_prep")
    with pytest.raises(NotOurs, match="resize_prep"):
        recovery(nova).run(UUID)


def test_recovery_times_out_as_unavailable():
    nova = FakeNova(lag=10**9)  # never lands SHUTOFF
    with pytest.raises(Unavailable, match="not SHUTOFF in time"):
        Recovery(nova, HOST, timeout=0.05, poll=0.01, sleep=lambda s: None).run(UUID)  # type: ignore[arg-type]


# -- the host's record ---------------------------------------------------------------------


def test_note_adds_history_and_counts_without_changing_state():
    store = MemoryStateStore()
    store.mark(HOST, HostState.FENCED, Event.FENCED, "by c1")
    record = store.note(HOST, Event.INSTANCE_RECOVERED, f"{UUID} qemu_crashed", recovered=True)
    assert record.state == HostState.FENCED and record.instance_recoveries == 1
    store.note(HOST, Event.INSTANCE_RECOVERY_FAILED, f"{UUID} crash loop")
    again = store.get(HOST)
    assert [e.name for e in again.history] == [
        "fenced",
        "instance_recovered",
        "instance_recovery_failed",
    ]
    assert again.instance_recoveries == 1 and again.state == HostState.FENCED
    assert store.reset(HOST).instance_recoveries == 1


def test_a_server_given_up_is_no_news_to_the_next_scan(tmp_path):
    """A crash loop was capped: the guest stays shut off, and every scan (monitor start,
    libvirtd reconnect) finds it crashed again. That raises nothing more; a live crash (the
    guest ran again, started by someone) is handled as any other."""
    parsed = params.parse({"state_dir": str(tmp_path)}, params.INSTANCE)
    monitor = Monitor(Context(parsed, HOST, None, None, None), lambda sink: HungAgentWatch())  # type: ignore[arg-type,return-value]
    dispatched: list[str] = []
    monitor.dispatch = lambda pending: dispatched.append(pending.server_id)  # type: ignore[method-assign]
    try:
        monitor.journal.gave_up(UUID, 100.0)
        monitor.failure(UUID, E.FOUND_CRASHED, "scan: shut off, crashed")
        assert dispatched == [] and monitor.journal.pending() == []
        monitor.failure(UUID, E.QEMU_CRASHED, "libvirt event 5/5")
        assert dispatched == [UUID] and not monitor.journal.left_alone(UUID)
        # the journal keeps who was given up across a monitor restart
        monitor.journal.gave_up(UUID, 200.0)
        assert Journal(monitor.journal.path, restart_window=3600).left_alone(UUID)
    finally:
        monitor.close()
