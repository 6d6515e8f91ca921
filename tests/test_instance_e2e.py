"""Instance-level HA for real (issue 14): the instance monitor process against the libvirt
bed's libvirtd and QEMU and the real Nova box, whose host1 runs its servers as libvirt
domains. What a user checks: the server's status and instance actions in Nova, the domain
running again, the events (notify_command) and the host's history (the CIB file the monitor
records in).

One bed, one box and one monitor for the module; the guests boot once, together, at module
start, and each scenario uses its own server. The heartbeat is quick here (every 1 s, 3 missed
in a row) to keep the run short."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.instance_ha import MonitorProcess, NovaView, box_params
from testbed.libvirt_bed import faults
from testbed.libvirt_bed.bed import LibvirtBed, missing_requirements
from testbed.nova_box import NovaBox
from testbed.nova_box.fixtures import require_nova_venv
from testbed.util import need, wait_for

HOST = "host1"
AGENT_BOOT = 120  # tiny guests booting together under TCG on two shared cores
RECOVERY = 90  # failure -> ACTIVE again, with Nova's stop and start on a loaded machine
MAX_RESTARTS = 2
MONITOR_PARAMS = {
    "evacuate": "all",
    "heartbeat": "1",
    "heartbeat_interval": "1",
    "heartbeat_timeout": "2",
    "heartbeat_threshold": "3",
    "max_restarts": str(MAX_RESTARTS),
    "restart_window": "600",
    "recovery_timeout": "120",
    "recovery_retry_window": "300",
}
# Each scenario's own server: a tiny guest (Linux with a guest agent) or a bare one.
TINY = {"panic": {}, "hang": {}, "noagent": {"nha_guest_agent": "false"}}
BARE = ("kill", "stop", "reboot", "delete", "fenced", "loop", "libvirtd", "killed", "novadown")


@pytest.fixture(scope="module")
def bed() -> Iterator[LibvirtBed]:
    missing = missing_requirements()
    need(not missing, f"libvirt bed: {missing} (make deps libvirt-binding libvirt-guest)")
    require_nova_venv()
    with LibvirtBed() as started:
        yield started


@pytest.fixture(scope="module")
def box(bed, tmp_path_factory) -> Iterator[NovaBox]:
    with NovaBox(
        hosts=(HOST, "host2"),
        state_dir=tmp_path_factory.mktemp("nova-box"),
        libvirt_hosts={HOST: bed.uri},
    ) as started:
        yield started


@pytest.fixture(scope="module")
def servers(box) -> dict[str, str]:
    """Role -> server id, all ACTIVE on host1 (the tiny guests still booting)."""
    ids = {}
    for role, meta in TINY.items():
        (ids[role],) = box.create_servers(HOST, 1, role, metadata={"nha_guest": "tiny", **meta})
    ids.update(zip(BARE, box.create_servers(HOST, len(BARE), "bare"), strict=True))
    return ids


@pytest.fixture(scope="module")
def monitor(bed, box, servers, tmp_path_factory) -> Iterator[MonitorProcess]:
    process = MonitorProcess(
        tmp_path_factory.mktemp("monitor"),
        HOST,
        {**box_params(box), "libvirt_uri": bed.uri, **MONITOR_PARAMS},
    )
    process.start()
    yield process
    code = process.stop()
    print(f"\nmonitor log:\n{process.log()[-6000:]}")
    assert code == 0, "the monitor did not stop cleanly on SIGTERM"


@pytest.fixture(scope="module")
def nova(box) -> NovaView:
    return NovaView(box)


@pytest.fixture(scope="module")
def conn(bed):
    connection = bed.connect()
    yield connection
    connection.close()


def domain(conn, server_id: str):
    return conn.lookupByUUIDString(server_id)


def running(conn, server_id: str) -> bool:
    import libvirt

    try:
        return domain(conn, server_id).state()[0] == libvirt.VIR_DOMAIN_RUNNING
    except libvirt.libvirtError:  # libvirtd restarting
        return False


def kill(bed, conn, server_id: str) -> float:
    """kill -9 of the server's QEMU; time.time() of it."""
    return faults.kill_qemu(bed.qemu_pid(domain(conn, server_id).name()))


def assert_recovered(monitor, nova, conn, server_id: str, since: float) -> dict:
    """The monitor restarted the server through Nova: its event, ACTIVE, the domain running,
    a start by the monitor's user in the instance actions, one history entry."""
    event = monitor.wait_event("instance_recovered", server_id, since, RECOVERY)
    nova.wait_status(server_id, "ACTIVE", 30)
    assert running(conn, server_id)
    actions = nova.actions(server_id, since)
    print(f"\n{server_id}: {event['detail']}; instance actions {actions}")
    # The stop: the monitor's, or Nova's own power-state sync (user None) if it came first;
    # the start is the monitor's, once.
    assert actions[0][0] == "stop"
    assert actions[1:] == [("start", nova.user_id)]
    assert [e.name for e in monitor.history(server_id)][-1] == "instance_recovered"
    return event


def assert_no_action(monitor, nova, server_id: str, since: float, quiet: float) -> None:
    """Nothing from the monitor for `quiet` seconds: no event, no action by its user beyond
    the test's own, no pending recovery."""
    time.sleep(quiet)
    assert monitor.events(server=server_id) == []
    assert server_id not in monitor.pending()
    assert monitor.history(server_id) == []


# -- 1-3: failures, recovered through Nova -----------------------------------------------


def test_qemu_killed_is_restarted_through_nova(bed, conn, monitor, nova, servers):
    server = servers["kill"]
    killed_at = kill(bed, conn, server)
    event = assert_recovered(monitor, nova, conn, server, killed_at)
    assert event["detail"].startswith("qemu_crashed")
    failed = monitor.events("instance_failed", server)
    assert len(failed) == 1 and failed[0]["epoch"] - killed_at < 5
    # Nova's own delayed stop of the dead guest (15 s after the kill) does not come back to
    # fight the recovery: the server stays ACTIVE, restarted once.
    time.sleep(max(0.0, killed_at + 17 - time.time()))
    assert nova.status(server) == "ACTIVE" and running(conn, server)
    assert len(monitor.events("instance_recovered", server)) == 1


def test_guest_panic_is_restarted_through_nova(bed, conn, monitor, nova, servers):
    server = servers["panic"]
    faults.wait_agent(domain(conn, server), AGENT_BOOT)
    panicked_at = faults.panic(domain(conn, server))
    event = assert_recovered(monitor, nova, conn, server, panicked_at)
    assert event["detail"].startswith("panicked")


def test_guest_hang_is_restarted_through_nova(bed, conn, monitor, nova, servers):
    server = servers["hang"]
    faults.wait_agent(domain(conn, server), AGENT_BOOT)
    time.sleep(2)  # the monitor's heartbeat has seen it answer
    hung_at = faults.hang(domain(conn, server))
    event = assert_recovered(monitor, nova, conn, server, hung_at)
    assert event["detail"].startswith("heartbeat_lost")
    failed = monitor.events("instance_failed", server)
    # 3 pings missed, 1 s apart: the first awaited 2 s (heartbeat_timeout), the next ones
    # 5 s each (libvirt's own wait for a hung agent, whatever the timeout): ~15 s.
    print(f"\nhang -> instance_failed after {failed[0]['epoch'] - hung_at:.1f}s")
    assert 2 <= failed[0]["epoch"] - hung_at < 30


def test_guest_without_agent_is_left_alone(bed, conn, monitor, nova, servers):
    server = servers["noagent"]
    console = bed.host_path(f"/var/log/libvirt/qemu/{domain(conn, server).name()}.serial.log")
    wait_for(lambda: "nha-guest: no agent" in console.read_text(), AGENT_BOOT, what="no agent")
    since = time.time()
    assert_no_action(monitor, nova, server, since, quiet=6)  # 6 heartbeat rounds
    assert nova.actions(server, since) == [] and running(conn, server)
    # Each round's failed ping is no log line (libvirt's own error printer is off).
    assert "Guest agent is not responding" not in monitor.log()


# -- 4: what the monitor must not fight ---------------------------------------------------


@pytest.mark.parametrize(
    ("role", "action", "status"),
    [("stop", "os-stop", "SHUTOFF"), ("reboot", "reboot", "ACTIVE")],
)
def test_user_stop_and_reboot_are_left_alone(conn, monitor, nova, servers, role, action, status):
    server, since = servers[role], time.time()
    if action == "reboot":
        nova.nova.servers.reboot(server, reboot_type="HARD")
    else:
        nova.nova.servers.stop(server)
    nova.wait_status(server, status, 60)
    assert_no_action(monitor, nova, server, since, quiet=3)
    assert [name for name, _ in nova.actions(server, since)] == [action.removeprefix("os-")]
    assert running(conn, server) == (status == "ACTIVE")


def test_delete_is_left_alone(conn, monitor, nova, servers):
    import libvirt

    server, since = servers["delete"], time.time()
    nova.nova.servers.delete(server)

    def gone() -> bool:
        return server not in [d.UUIDString() for d in conn.listAllDomains()]

    wait_for(gone, 60, what="the domain undefined")
    assert_no_action(monitor, nova, server, since, quiet=3)
    with pytest.raises(libvirt.libvirtError):
        domain(conn, server)


def test_crash_on_a_fenced_host_is_left_to_the_host_path(bed, conn, monitor, nova, servers):
    """nova-ha's own evacuation: the host's record says fenced, so a guest dying there is
    the host path's (its evacuation), not the instance monitor's."""
    from nova_ha.lib.lifecycle import Event, HostState

    store = monitor.store()
    store.mark(HOST, HostState.FENCED, Event.FENCED, "test: host path at work")
    try:
        server = servers["fenced"]
        killed_at = kill(bed, conn, server)
        judged = f"guest {server}: qemu_crashed: ignore"
        wait_for(lambda: judged in monitor.log(), 30, what="the crash judged")
        assert "the host is fenced" in monitor.log()
        assert monitor.events(server=server) == []
        assert [name for name, user in nova.actions(server, killed_at) if user] == []
    finally:
        store.reset(HOST, "test: back to ok")
    nova.nova.servers.delete(server)  # not found crashed again by a later scan


# -- 5: a crash loop ----------------------------------------------------------------------


def test_crash_loop_is_capped(bed, conn, monitor, nova, servers):
    server = servers["loop"]
    for _ in range(MAX_RESTARTS):
        assert_recovered(monitor, nova, conn, server, kill(bed, conn, server))
    killed_at = kill(bed, conn, server)
    event = monitor.wait_event("instance_recovery_failed", server, killed_at, 30)
    assert "crash loop" in event["detail"]
    assert [e.name for e in monitor.history(server)][-1] == "instance_recovery_failed"
    # Left as it is: Nova's own stop of the dead guest comes, no start by the monitor.
    nova.wait_status(server, "SHUTOFF", 60)
    assert [name for name, user in nova.actions(server, killed_at) if user] == []
    assert not running(conn, server)
    assert len(monitor.events("instance_recovered", server)) == MAX_RESTARTS
    assert monitor.store().get(HOST).instance_recoveries >= MAX_RESTARTS
    nova.nova.servers.delete(server)


# -- 6-8: the monitor's own faults ----------------------------------------------------------


def test_crash_while_libvirtd_restarts_is_found_at_reconnect(bed, conn, monitor, nova, servers):
    server = servers["libvirtd"]
    pid = bed.qemu_pid(domain(conn, server).name())
    mark = monitor.log_size()
    bed.stop_libvirtd()
    killed_at = faults.kill_qemu(pid)
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), 10, what="QEMU gone")
    bed.start_libvirtd()
    conn = bed.connect()  # the module's connection ended with libvirtd
    try:
        event = assert_recovered(monitor, nova, conn, server, killed_at)
        assert event["detail"].startswith("found_crashed")
        assert "connected to" in monitor.log(since=mark)
    finally:
        conn.close()


def test_crash_while_the_monitor_is_down_is_found_at_start(bed, monitor, nova, servers):
    server = servers["killed"]
    conn = bed.connect()
    try:
        monitor.kill()
        pid = bed.qemu_pid(domain(conn, server).name())
        killed_at = faults.kill_qemu(pid)
        wait_for(lambda: not running(conn, server), 10, what="domain shut off")
        monitor.start()
        event = assert_recovered(monitor, nova, conn, server, killed_at)
        assert event["detail"].startswith("found_crashed")
    finally:
        conn.close()


def test_crash_while_nova_is_down_is_recovered_when_it_returns(bed, box, monitor, nova, servers):
    server = servers["novadown"]
    conn = bed.connect()
    box.set_api_down(True)
    try:
        killed_at = kill(bed, conn, server)
        failed = f"guest {server}: attempt 1 failed"
        wait_for(lambda: failed in monitor.log(), 60, what="a failed attempt")
        assert server in monitor.pending()  # kept in the journal until done
        time.sleep(5)
    finally:
        box.set_api_down(False)
    try:
        assert_recovered(monitor, nova, conn, server, killed_at)
        assert server not in monitor.pending()
        print(f"\nrecovered {time.time() - killed_at:.1f}s after the kill (API down ~10 s)")
    finally:
        conn.close()
