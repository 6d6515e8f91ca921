"""Faults of the real Nova 34 box: slow rebuilds (``NovaBox.set_rebuild_delay``).

A real cloud's evacuation takes seconds per server (the rebuild on the target); the box's
fake driver takes none unless told. These tests evacuate two servers at once from a crashed,
forced-down host through python-novaclient and watch them through the API.
"""

import threading
import time

import pytest

from nova_ha.openstack.views import REBUILD_TASKS
from testbed.nova_box import ControlError
from testbed.observe import Observer, back_in_service
from tests.test_nova_box import delete_servers

SOURCE = "host1"
REBUILD_STATES = tuple(sorted(REBUILD_TASKS))
POLL = 0.2


def evacuate_two(box):
    """Create two servers on SOURCE, crash it, force it down, evacuate both (one request
    each, from two clients at once, no target host, microversion 2.60: they land ACTIVE),
    then poll both servers every POLL s until they are off SOURCE with no task.

    Returns ``(ids, sent, rounds, landed, api_latency)``: ``sent`` is the monotonic time both
    requests were released, ``rounds`` a list of ``(t, {id: (status, task, host)})``,
    ``landed`` ``{id: (t, server)}``, ``api_latency`` the slowest GET during the wait."""
    observer = Observer(box)
    nova = observer.nova
    ids = box.create_servers(SOURCE, 2, name_prefix="slow")
    try:
        box.crash(SOURCE)
        nova.services.force_down(observer.service(SOURCE).id, True)

        clients = [Observer(box).nova for _ in ids]
        go = threading.Barrier(len(ids) + 1)
        errors = []

        def evacuate(client, sid):
            go.wait()
            try:
                resp, _ = client.servers.evacuate(sid)
                assert resp.status_code == 200, resp.status_code
            except Exception as e:  # pragma: no cover - reported below
                errors.append((sid, e))

        threads = [
            threading.Thread(target=evacuate, args=(c, s))
            for c, s in zip(clients, ids, strict=True)
        ]
        for t in threads:
            t.start()
        go.wait()
        sent = time.monotonic()
        for t in threads:
            t.join(30)
        assert not errors, errors

        rounds, landed, api_latency = [], {}, 0.0
        deadline = sent + 90
        while len(landed) < len(ids):
            assert time.monotonic() < deadline, f"evacuations not over: {rounds[-1:]}"
            seen = {}
            for sid in ids:
                t0 = time.monotonic()
                s = nova.servers.get(sid)
                t1 = time.monotonic()
                api_latency = max(api_latency, t1 - t0)
                state = (
                    s.status,
                    getattr(s, "OS-EXT-STS:task_state"),
                    getattr(s, "OS-EXT-SRV-ATTR:host"),
                )
                seen[sid] = state
                assert s.status != "ERROR", (sid, getattr(s, "fault", None))
                # Nova clears the task a moment before it moves the host: wait for both.
                if sid not in landed and state[1] is None and state[2] != SOURCE:
                    landed[sid] = (t1, s)
            rounds.append((time.monotonic(), seen))
            time.sleep(POLL)
        return ids, sent, rounds, landed, api_latency
    except BaseException:
        back_in_service(box, SOURCE)
        delete_servers(nova, ids)
        raise


@pytest.fixture
def cleanup(nova_box):
    """Put SOURCE back in service and delete the test's servers afterwards."""
    ids = []
    yield ids
    nova = Observer(nova_box).nova
    back_in_service(nova_box, SOURCE)
    delete_servers(nova, ids)


def sightings(rounds, sid, states=REBUILD_STATES):
    return [t for t, seen in rounds if seen[sid][1] in states]


# -- the control ------------------------------------------------------------------
def test_rebuild_delay_control(nova_box):
    assert nova_box.rebuild_delay() == 0
    assert nova_box.set_rebuild_delay(1.5) == {"seconds": 1.5}
    assert nova_box.rebuild_delay() == 1.5
    assert nova_box.info()["rebuild_delay"] == 1.5
    with pytest.raises(ValueError):
        nova_box.set_rebuild_delay(-1)
    with pytest.raises(ControlError) as err:
        nova_box.control("POST", "/rebuild_delay", {"seconds": "soon"})
    assert err.value.status == 400
    assert nova_box.rebuild_delay() == 1.5
    # Left on on purpose: the plugin's autouse fixture resets it (next test).


def test_rebuild_delay_does_not_leak_between_tests(nova_box):
    # Runs after test_rebuild_delay_control, which left 1.5 s on.
    assert nova_box.rebuild_delay() == 0


# -- slow and fast evacuations --------------------------------------------------------
def test_slow_rebuilds_hold_evacuations_in_rebuild(nova_box, cleanup):
    delay = 3.0
    nova_box.set_rebuild_delay(delay)
    ids, sent, rounds, landed, api_latency = evacuate_two(nova_box)
    cleanup.extend(ids)

    took = {sid: landed[sid][0] - sent for sid in ids}
    print(
        f"\nrebuild delay {delay}s: evacuations took "
        + ", ".join(f"{t:.2f}s" for t in took.values())
        + f"; slowest API GET meanwhile {api_latency:.2f}s; {len(rounds)} poll rounds"
    )
    for sid in ids:
        s = landed[sid][1]
        assert s.status == "ACTIVE"
        assert getattr(s, "OS-EXT-SRV-ATTR:host") in ("host2", "host3")
        # The whole delay is spent rebuilding: the task is a rebuild one from the request
        # until >= delay later, and the server spawns (rebuild_spawning) for most of it.
        assert took[sid] >= delay
        seen = sightings(rounds, sid)
        assert seen and seen[-1] - sent >= delay - 2 * POLL - api_latency
        spawning = sightings(rounds, sid, ("rebuild_spawning",))
        assert spawning[-1] - spawning[0] >= delay - 1.0, spawning
        assert {seen[sid][1] for _, seen in rounds} <= {*REBUILD_STATES, None}
    # The two rebuilds wait at the same time (each in its own thread), not one after the
    # other, and the API answers meanwhile. One after the other they would never both be
    # spawning; the margin is for a loaded machine (polls every POLL, API latency).
    both = [t for t, seen in rounds if all(seen[sid][1] == "rebuild_spawning" for sid in ids)]
    assert both and both[-1] - both[0] >= delay / 2, both
    assert api_latency < 1.5
    # The targets' heartbeats went on.
    observer = Observer(nova_box)
    for host in {getattr(landed[sid][1], "OS-EXT-SRV-ATTR:host") for sid in ids}:
        assert observer.service(host).state == "up"


def test_no_rebuild_delay_is_fast_again(nova_box, cleanup):
    nova_box.set_rebuild_delay(3)
    nova_box.set_rebuild_delay(0)
    assert nova_box.rebuild_delay() == 0
    ids, sent, rounds, landed, api_latency = evacuate_two(nova_box)
    cleanup.extend(ids)

    took = {sid: landed[sid][0] - sent for sid in ids}
    print("\nno rebuild delay: evacuations took " + ", ".join(f"{t:.2f}s" for t in took.values()))
    for sid in ids:
        s = landed[sid][1]
        assert s.status == "ACTIVE"
        assert getattr(s, "OS-EXT-SRV-ATTR:host") in ("host2", "host3")
        assert took[sid] < 2.5
