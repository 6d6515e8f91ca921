"""NovaCompute's safe rejoin and NovaEvacuate's recovery, against the Nova simulator, with
the agents run as Pacemaker runs them and the record in an offline CIB."""

from __future__ import annotations

import collections
import os
import signal
import time

from nova_ha.lib import state
from nova_ha.lib.lifecycle import Event, HostState
from testbed.observe import Observer
from tests.helpers import COMPUTE_AGENT, EVACUATE_AGENT, run_fence, run_ocf, wait_until

START_META = {"on_node": "host1", "timeout": 120000}


def _record(bed, host="host1") -> state.HostRecord:
    return state.CibStateStore(bed.cib).get(host)


def _accepted_per_server(bed) -> collections.Counter:
    return collections.Counter(
        r["path"].split("/")[-2]
        for r in bed.requests(action="evacuate")
        if 200 <= (r["status"] or 0) < 300
    )


def _evacuate_params(bed, **extra) -> dict:
    values = dict(bed.os_params(), evacuate="all", max_parallel=4, evacuate_timeout=60)
    values.update(extra)
    return values


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for init to reap it is not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _assert_rejoined(bed, ids):
    observer = Observer(bed.cloud)
    svc = observer.service("host1")
    assert svc.state == "up" and svc.forced_down is False and svc.status == "enabled"
    for server_id in ids:  # evacuated servers survived the source's restart
        server = observer.server(server_id)
        assert server["host"] != "host1" and server["status"] == "ACTIVE", server
    assert all(m.status == "completed" for m in observer.evacuations("host1"))
    record = _record(bed)
    assert record.state == "ok" and record.history[-1].name == "rejoined"


def test_compute_start_waits_for_evacuations_then_rejoins(sim_bed):
    bed = sim_bed
    ids = bed.cloud.create_servers("host1", 8)
    bed.cloud.evacuate_delay = 2.0
    with bed.evacuation_service(max_parallel=4) as service:
        fence = run_fence(bed.fence_params(), env=bed.env())
        assert fence.returncode == 0, fence.stderr
        # The fence action is over; the host is repaired and boots while its evacuations
        # still run beside Pacemaker.
        wait_until(lambda: _accepted_per_server(bed))
        bed.bmcs["host1"].power_state = "on"
        compute = run_ocf(
            COMPUTE_AGENT,
            "start",
            bed.compute_params("host1", start_wait=60),
            START_META,
            env=bed.env(),
        )
        assert compute.returncode == 0, compute.stderr
        assert "waiting before starting nova-compute" in compute.stderr
        service.wait_settled("host1")
    starts = [(t, racing) for t, host, racing in bed.cloud.compute_starts if host == "host1"]
    assert len(starts) == 1 and starts[0][1] == 0  # started once, no evacuation under way
    _assert_rejoined(bed, ids)
    assert all(n == 1 for n in _accepted_per_server(bed).values())


def test_compute_start_refuses_while_never_safe(sim_bed):
    bed = sim_bed
    bed.cloud.create_servers("host1", 2)
    assert run_fence(bed.fence_params(evacuate="record"), env=bed.env()).returncode == 0
    # start_wait bounds the wait, not the (long) start timeout: Pacemaker must get the
    # failure back soon, since it runs no other transition while the start runs.
    began = time.monotonic()
    done = run_ocf(
        COMPUTE_AGENT,
        "start",
        bed.compute_params("host1", start_wait=2),
        {"on_node": "host1", "timeout": 120000},
        env=bed.env(),
    )
    assert time.monotonic() - began < 30
    assert done.returncode == 1
    assert "ocf-exit-reason:not starting nova-compute on host1" in done.stderr
    assert "recorded 'fenced'" in done.stderr
    assert not bed.cloud.hosts()["host1"]["running"]  # nothing was started


def _service_pid(env: dict) -> int | None:
    """The evacuation service's PID, from NovaEvacuate's pid file."""
    try:
        with open(os.path.join(env["HA_RSCTMP"], "nova-ha-NovaEvacuate.pid")) as pid_file:
            return int(pid_file.read().split()[0])
    except (OSError, ValueError):
        return None


def _service_processes(env: dict) -> list[int]:
    """The PIDs of the evacuation service's process group (service and workers)."""
    from nova_ha.lib import daemon_agent

    pid = _service_pid(env)
    return daemon_agent._group_members(pid) if pid else []


def test_record_mode_then_novaevacuate_then_rejoin(sim_bed):
    bed = sim_bed
    ids = bed.cloud.create_servers("host1", 6)
    assert run_fence(bed.fence_params(evacuate="record"), env=bed.env()).returncode == 0
    assert not bed.requests(action="evacuate") and _record(bed).state == "fenced"
    env = bed.env()
    params = _evacuate_params(bed)
    meta = {"timeout": 20000, "interval": 10000}
    assert run_ocf(EVACUATE_AGENT, "monitor", params, meta, env=env).returncode == 7
    assert run_ocf(EVACUATE_AGENT, "start", params, env=env).returncode == 0
    assert run_ocf(EVACUATE_AGENT, "start", params, env=env).returncode == 0  # idempotent
    wait_until(lambda: _record(bed).state == "evacuated", timeout=60)
    done = run_ocf(EVACUATE_AGENT, "monitor", params, meta, env=env)
    assert done.returncode == 0, done.stderr
    assert min(r["t"] for r in bed.requests(action="evacuate")) >= bed.off_time("host1")
    record = _record(bed)
    assert record.evacuated == 6 and record.lease_owner is None
    processes = _service_processes(env)
    assert len(processes) >= 2  # the service and its warm spare
    compute = run_ocf(
        COMPUTE_AGENT, "start", bed.compute_params("host1"), START_META, env=bed.env()
    )
    assert compute.returncode == 0, compute.stderr
    _assert_rejoined(bed, ids)
    assert run_ocf(EVACUATE_AGENT, "stop", params, env=env).returncode == 0
    assert not [p for p in processes if _alive(p)]  # no orphan
    assert run_ocf(EVACUATE_AGENT, "monitor", params, meta, env=env).returncode == 7
    assert run_ocf(EVACUATE_AGENT, "stop", params, env=env).returncode == 0  # idempotent


def test_killed_service_is_restarted_and_resumes_without_requesting_twice(sim_bed):
    """The service dies (kill -9) mid-evacuation: its monitor says 'not running', Pacemaker
    stops (ending the orphaned workers) and starts it, and the new service resumes."""
    bed = sim_bed
    ids = bed.cloud.create_servers("host1", 20)
    bed.cloud.evacuate_delay = 1.5
    bed.cloud.latency = 0.3  # a slow cloud: the requests trickle out, two at a time
    env = bed.env()
    params = _evacuate_params(bed, max_parallel=2)
    meta = {"timeout": 20000, "interval": 10000}
    assert run_ocf(EVACUATE_AGENT, "start", params, env=env).returncode == 0
    assert run_fence(bed.fence_params(), env=bed.env()).returncode == 0
    wait_until(lambda: len(_accepted_per_server(bed)) >= 6, timeout=60)
    service = _service_pid(env)
    assert service in _service_processes(env)
    os.kill(service, signal.SIGKILL)
    wait_until(lambda: not _alive(service), 10, interval=0.05)  # the kernel takes a moment
    bed.cloud.latency = 0.0
    assert 0 < len(_accepted_per_server(bed)) < 20
    # The service is dead but its worker goes on: 'failed', so that Pacemaker stops it,
    # and the stop ends the orphaned worker: never two workers on one host.
    orphans = [p for p in _service_processes(env) if _alive(p)]
    assert orphans
    assert run_ocf(EVACUATE_AGENT, "monitor", params, meta, env=env).returncode == 1
    assert run_ocf(EVACUATE_AGENT, "stop", params, env=env).returncode == 0
    assert not [p for p in orphans if _alive(p)]
    assert run_ocf(EVACUATE_AGENT, "start", params, env=env).returncode == 0
    try:
        wait_until(lambda: _record(bed).state == "evacuated", timeout=90)
    except AssertionError:
        raise AssertionError(
            f"not evacuated: {_record(bed)}\n{_service_log(env)[-4000:]}"
        ) from None
    finally:
        run_ocf(EVACUATE_AGENT, "stop", params, env=env)
    observer = Observer(bed.cloud)
    for server_id in ids:
        server = observer.server(server_id)
        assert server["host"] != "host1" and server["status"] == "ACTIVE", server
    per_server = _accepted_per_server(bed)
    assert set(per_server) == set(ids) and all(n == 1 for n in per_server.values())
    assert _record(bed).lease_owner is None


def test_live_lease_of_another_runner_is_respected(sim_bed):
    bed = sim_bed
    bed.cloud.create_servers("host1", 2)
    assert run_fence(bed.fence_params(evacuate="record"), env=bed.env()).returncode == 0
    store = state.CibStateStore(bed.cib)
    # Another runner (an operator's nova-ha evacuate, say) holds the lease.
    assert store.release_lease("host1", "NovaEvacuate")
    assert store.acquire_lease("host1", "nova-ha@other-controller:1", ttl=300)
    with bed.evacuation_service() as service:
        time.sleep(3)  # three looks at the records
        log = service.log()
    assert not bed.requests(action="evacuate")
    assert "host1" not in log.split("evacuation service started", 1)[-1]


def test_nova_down_is_retried_and_monitor_stays_healthy(sim_bed):
    """Restarting NovaEvacuate would not bring Nova back: its monitor stays 0 while the
    service retries (5 s, 15 s, ...) and finishes once Nova answers."""
    bed = sim_bed
    ids = bed.cloud.create_servers("host1", 2)
    bed.cloud.crash("host1")
    bed.bmcs["host1"].power_state = "off"
    store = state.CibStateStore(bed.cib)
    # What a fence leaves: forced down in Nova, recorded, lease handed over.
    observer = Observer(bed.cloud)
    observer.nova.services.force_down(observer.service("host1").id, True)
    store.mark(
        "host1",
        HostState.FENCED,
        Event.FENCED,
        "power-off confirmed",
        mode="all",
        grant=("NovaEvacuate", 90),
    )
    bed.cloud.set_api_down(True)
    env = bed.env()
    params = _evacuate_params(bed, os_api_timeout=1, evacuate_timeout=4)
    assert run_ocf(EVACUATE_AGENT, "start", params, env=env).returncode == 0
    try:
        wait_until(lambda: "Nova could not be reached" in _service_log(env), timeout=30)
        done = run_ocf(
            EVACUATE_AGENT, "monitor", params, {"timeout": 20000, "interval": 10000}, env=env
        )
        assert done.returncode == 0, done.stderr
        assert _record(bed).state == "fenced"
        bed.cloud.set_api_down(False)
        wait_until(lambda: _record(bed).state == "evacuated", timeout=60)
    finally:
        run_ocf(EVACUATE_AGENT, "stop", params, env=env)
    assert all(observer.server(i)["host"] != "host1" for i in ids)


def _service_log(env: dict) -> str:
    try:
        return open(os.path.join(env["NOVA_HA_LOG_DIR"], "NovaEvacuate.log")).read()
    except OSError:
        return ""


def test_operator_disable_is_kept_on_rejoin(sim_bed):
    bed = sim_bed
    observer = Observer(bed.cloud)
    observer.nova.services.disable_log_reason(observer.service("host2").id, "hardware check")
    bed.cloud.crash("host2")
    done = run_ocf(
        COMPUTE_AGENT,
        "start",
        bed.compute_params("host2"),
        {"on_node": "host2", "timeout": 60000},
        env=bed.env(),
    )
    assert done.returncode == 0, done.stderr
    svc = observer.service("host2")
    assert svc.status == "disabled" and svc.disabled_reason == "hardware check"
    assert _record(bed, "host2").state == "ok"
