"""NovaCompute's safe rejoin and NovaEvacuate's recovery, against the Nova simulator, with
the agents run as Pacemaker runs them and the record in an offline CIB."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import time

from nova_ha.lib import state
from tests.helpers import (
    COMPUTE_AGENT,
    EVACUATE_AGENT,
    FENCE_AGENT,
    PYTHON,
    ocf_env,
    run_fence,
    run_ocf,
    stdin_text,
    wait_until,
)
from tests.testbed.observe import Observer

START_META = {"on_node": "host1", "timeout": 120000}


def _record(bed, host="host1") -> state.HostRecord:
    return state.CibStateStore(bed.cib).get(host)




def _accepted_per_server(bed) -> collections.Counter:
    return collections.Counter(r["path"].split("/")[-2] for r in bed.requests(action="evacuate")
                               if 200 <= (r["status"] or 0) < 300)


def _evacuate_params(bed, **extra) -> dict:
    values = dict(bed.os_params(), evacuate="all", max_parallel=4, evacuate_timeout=60)
    values.update(extra)
    return values


def _start_fence(bed, **extra) -> subprocess.Popen:
    agent = subprocess.Popen([PYTHON, FENCE_AGENT], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=bed.env())
    agent.stdin.write(stdin_text(bed.fence_params(**extra)))
    agent.stdin.close()
    agent.stdin = None  # written and closed, as the fencer does: communicate() must not touch it
    return agent


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
    fence = _start_fence(bed, max_parallel=4)
    # Pacemaker starts resources on the node only once it is recorded fenced; the host is
    # repaired and boots while its evacuations still run.
    wait_until(lambda: _record(bed).state == "evacuating")
    bed.bmcs["host1"].power_state = "on"
    compute = subprocess.Popen([PYTHON, COMPUTE_AGENT, "start"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               env=ocf_env(bed.compute_params("host1", start_wait=60),
                                           START_META, bed.env()))
    fence_out = fence.communicate(timeout=120)[1]
    assert fence.returncode == 0, fence_out
    out, err = compute.communicate(timeout=120)
    assert compute.returncode == 0, err
    assert "waiting before starting nova-compute" in err
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
    done = run_ocf(COMPUTE_AGENT, "start", bed.compute_params("host1", start_wait=2),
                   {"on_node": "host1", "timeout": 120000}, env=bed.env())
    assert time.monotonic() - began < 30
    assert done.returncode == 1
    assert "ocf-exit-reason:not starting nova-compute on host1" in done.stderr
    assert "recorded 'fenced'" in done.stderr
    assert not bed.cloud.hosts()["host1"]["running"]  # nothing was started


def test_record_mode_then_novaevacuate_then_rejoin(sim_bed, tmp_path):
    bed = sim_bed
    ids = bed.cloud.create_servers("host1", 6)
    assert run_fence(bed.fence_params(evacuate="record"), env=bed.env()).returncode == 0
    assert not bed.requests(action="evacuate") and _record(bed).state == "fenced"
    env = dict(bed.env(), HA_RSCTMP=str(tmp_path))
    params = _evacuate_params(bed)
    meta = {"timeout": 120000, "interval": 10000}
    assert run_ocf(EVACUATE_AGENT, "monitor", params, meta, env=env).returncode == 7
    assert run_ocf(EVACUATE_AGENT, "start", params, env=env).returncode == 0
    done = run_ocf(EVACUATE_AGENT, "monitor", params, meta, env=env)
    assert done.returncode == 0, done.stderr
    assert min(r["t"] for r in bed.requests(action="evacuate")) >= bed.off_time("host1")
    record = _record(bed)
    assert record.state == "evacuated" and record.evacuated == 6
    assert "resumed host1" in done.stderr
    again = run_ocf(EVACUATE_AGENT, "monitor", params, meta, env=env)  # nothing left to do
    assert again.returncode == 0 and "resumed" not in again.stderr
    compute = run_ocf(COMPUTE_AGENT, "start", bed.compute_params("host1"), START_META,
                      env=bed.env())
    assert compute.returncode == 0, compute.stderr
    _assert_rejoined(bed, ids)
    assert run_ocf(EVACUATE_AGENT, "stop", params, env=env).returncode == 0
    assert run_ocf(EVACUATE_AGENT, "monitor", params, meta, env=env).returncode == 7


def test_novaevacuate_takes_over_from_a_killed_stonith_agent(sim_bed, tmp_path):
    bed = sim_bed
    ids = bed.cloud.create_servers("host1", 20)
    bed.cloud.evacuate_delay = 1.5
    bed.cloud.latency = 0.3  # a slow cloud: the requests trickle out, two at a time
    fence = _start_fence(bed, max_parallel=2)
    wait_until(lambda: len(_accepted_per_server(bed)) >= 6, timeout=60)
    os.kill(fence.pid, signal.SIGKILL)  # the stonith timeout struck
    fence.communicate(timeout=30)
    bed.cloud.latency = 0.0
    accepted_before = len(_accepted_per_server(bed))
    assert 0 < accepted_before < 20
    record = _record(bed)
    assert record.state == "evacuating" and record.lease_owner.endswith(f":{fence.pid}")
    env = dict(bed.env(), HA_RSCTMP=str(tmp_path))
    params = _evacuate_params(bed)
    assert run_ocf(EVACUATE_AGENT, "start", params, env=env).returncode == 0
    done = run_ocf(EVACUATE_AGENT, "monitor", params, {"timeout": 120000, "interval": 10000},
                   env=env)
    assert done.returncode == 0, done.stderr
    assert "taking over" in done.stderr
    observer = Observer(bed.cloud)
    for server_id in ids:
        server = observer.server(server_id)
        assert server["host"] != "host1" and server["status"] == "ACTIVE", server
    per_server = _accepted_per_server(bed)
    assert set(per_server) == set(ids) and all(n == 1 for n in per_server.values())
    record = _record(bed)
    assert record.state == "evacuated" and record.lease_owner is None


def test_live_lease_of_another_runner_is_respected(sim_bed, tmp_path):
    bed = sim_bed
    bed.cloud.create_servers("host1", 2)
    assert run_fence(bed.fence_params(evacuate="record"), env=bed.env()).returncode == 0
    store = state.CibStateStore(bed.cib)
    assert store.acquire_lease("host1", "NovaEvacuate@other-controller", ttl=300)
    store.mark("host1", "evacuating", "evacuation_started", "by other",
               owner="NovaEvacuate@other-controller")
    env = dict(bed.env(), HA_RSCTMP=str(tmp_path))
    params = _evacuate_params(bed)
    run_ocf(EVACUATE_AGENT, "start", params, env=env)
    done = run_ocf(EVACUATE_AGENT, "monitor", params, {"timeout": 60000, "interval": 10000},
                   env=env)
    assert done.returncode == 0, done.stderr
    assert not bed.requests(action="evacuate")


def test_novaevacuate_monitor_fails_without_nova(sim_bed, tmp_path):
    bed = sim_bed
    env = dict(bed.env(), HA_RSCTMP=str(tmp_path))
    params = _evacuate_params(bed, os_api_timeout=2)
    run_ocf(EVACUATE_AGENT, "start", params, env=env)
    bed.cloud.set_api_down(True)
    done = run_ocf(EVACUATE_AGENT, "monitor", params, {"timeout": 20000, "interval": 10000},
                   env=env)
    assert done.returncode == 1
    assert "ocf-exit-reason:cannot reach Nova" in done.stderr


def test_operator_disable_is_kept_on_rejoin(sim_bed):
    bed = sim_bed
    observer = Observer(bed.cloud)
    observer.nova.services.disable_log_reason(observer.service("host2").id, "hardware check")
    bed.cloud.crash("host2")
    done = run_ocf(COMPUTE_AGENT, "start", bed.compute_params("host2"),
                   {"on_node": "host2", "timeout": 60000}, env=bed.env())
    assert done.returncode == 0, done.stderr
    svc = observer.service("host2")
    assert svc.status == "disabled" and svc.disabled_reason == "hardware check"
    assert _record(bed, "host2").state == "ok"
