"""The agents on a real Nova 34 (one process, fake virt driver) with real IPMI (pyghmi's BMC
simulator): run as Pacemaker runs them; outcomes checked in Nova, at the BMC and in the
cluster record. Every test checks that no evacuation was requested before the BMC said off."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import threading
import time

from nova_ha.lib import state
from tests.helpers import (
    COMPUTE_AGENT,
    EVACUATE_AGENT,
    FENCE_AGENT,
    PYTHON,
    run_fence,
    run_ocf,
    stdin_text,
    wait_until,
)
from tests.testbed.observe import Observer

START_META = {"on_node": "host1", "timeout": 300000}
EVACUATE_META = {"timeout": 300000, "interval": 10000}




def _since(bed, t0: float) -> list[dict]:
    return [r for r in bed.cloud.request_log() if r["t"] >= t0]


def _accepted(bed, t0: float) -> collections.Counter:
    return collections.Counter(r["path"].split("/")[-2] for r in _since(bed, t0)
                               if r.get("action") == "evacuate" and r["status"]
                               and 200 <= r["status"] < 300)


def _assert_safe_and_moved(bed, t0: float, ids: list[str]) -> None:
    evacuations = [r for r in _since(bed, t0) if r.get("action") == "evacuate"]
    offs = [t for t, what in bed.bmcs["host1"].power_log if what == "off" and t >= t0]
    assert offs and evacuations and min(r["t"] for r in evacuations) >= offs[0]
    accepted = _accepted(bed, t0)
    assert set(accepted) == set(ids) and all(n == 1 for n in accepted.values()), accepted
    observer = Observer(bed.cloud)
    for server_id in ids:
        server = observer.server(server_id)
        assert server["host"] in ("host2", "host3") and server["status"] == "ACTIVE", server


def _rejoin_and_use_host1(bed, ids: list[str]) -> None:
    """NovaCompute start on host1, then: service up, evacuated servers kept, host usable."""
    done = run_ocf(COMPUTE_AGENT, "start", bed.compute_params("host1"), START_META,
                   env=bed.env(), timeout=330)
    assert done.returncode == 0, done.stderr
    observer = Observer(bed.cloud)
    svc = observer.service("host1")
    assert svc.state == "up" and not svc.forced_down and svc.status == "enabled"
    assert all(m.status == "completed" for m in observer.evacuations("host1")
               if m.instance_uuid in ids)
    for server_id in ids:  # the restarted source did not delete the evacuated servers
        server = observer.server(server_id)
        assert server["host"] != "host1" and server["status"] == "ACTIVE", server
    new = bed.cloud.create_servers("host1", 1, name_prefix="after-rejoin")
    assert observer.server(new[0])["host"] == "host1"
    assert observer.server(new[0])["status"] == "ACTIVE"
    assert state.CibStateStore(bed.cib).get("host1").state == "ok"


def test_fence_evacuates_twenty_servers_then_host_rejoins(box_bed):
    bed = box_bed
    t0 = time.time()
    bed.cloud.create_servers("host1", 20, name_prefix="real")
    ids = [s["id"] for s in Observer(bed.cloud).servers("host1")]
    done = run_fence(bed.fence_params(evacuate_timeout=240), env=bed.env(), timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"{len(ids)} evacuated, 0 failed" in done.stderr
    assert bed.bmcs["host1"].power_state == "off"
    _assert_safe_and_moved(bed, t0, ids)
    observer = Observer(bed.cloud)
    svc = observer.service("host1")
    assert svc.forced_down and svc.status == "disabled"
    assert svc.disabled_reason.startswith("nova-ha: fenced at")
    assert {m.status for m in observer.evacuations("host1") if m.instance_uuid in ids} \
        == {"done"}
    assert state.CibStateStore(bed.cib).get("host1").state == "evacuated"
    # Nova refuses to lift the force-down while 'done' evacuations remain: `on` leaves it.
    assert run_fence(bed.fence_params(action="on"), env=bed.env()).returncode == 0
    assert observer.service("host1").forced_down
    _rejoin_and_use_host1(bed, ids)


def test_killed_stonith_agent_novaevacuate_finishes_and_host_waits(box_bed, tmp_path):
    bed = box_bed
    t0 = time.time()
    bed.cloud.create_servers("host1", 20, name_prefix="kill")
    ids = [s["id"] for s in Observer(bed.cloud).servers("host1")]
    agent = subprocess.Popen([PYTHON, FENCE_AGENT], stdin=subprocess.PIPE,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env=bed.env())
    agent.stdin.write(stdin_text(bed.fence_params(max_parallel=1, evacuate_timeout=240)))
    agent.stdin.close()
    agent.stdin = None
    wait_until(lambda: len(_accepted(bed, t0)) >= 5)
    os.kill(agent.pid, signal.SIGKILL)  # the stonith timeout struck halfway
    agent.communicate(timeout=30)
    assert len(_accepted(bed, t0)) < 20
    record = state.CibStateStore(bed.cib).get("host1")
    assert record.state == "evacuating"

    env = dict(bed.env(), HA_RSCTMP=str(tmp_path))
    params = bed.os_params(evacuate="all", evacuate_timeout=240)
    assert run_ocf(EVACUATE_AGENT, "start", params, env=env).returncode == 0
    # host1 is powered on meanwhile and Pacemaker starts NovaCompute there: it refuses
    # (after start_wait) while NovaEvacuate works, and succeeds when Pacemaker retries it.
    bed.bmcs["host1"].power_state = "on"
    results: dict[str, subprocess.CompletedProcess] = {}
    compute = threading.Thread(target=lambda: results.update(compute=run_ocf(
        COMPUTE_AGENT, "start", bed.compute_params("host1", start_wait=3), START_META,
        env=bed.env(), timeout=330)))
    compute.start()
    done = run_ocf(EVACUATE_AGENT, "monitor", params, EVACUATE_META, env=env, timeout=330)
    assert done.returncode == 0, done.stderr
    assert "taking over" in done.stderr
    compute.join(timeout=330)
    refused = results["compute"]
    assert refused.returncode == 1, refused.stderr
    assert "ocf-exit-reason:not starting nova-compute on host1" in refused.stderr
    assert not bed.cloud.hosts()["host1"]["running"]  # nova-compute was not started
    started = run_ocf(COMPUTE_AGENT, "start", bed.compute_params("host1"), START_META,
                      env=bed.env(), timeout=330)
    assert started.returncode == 0, started.stderr
    _assert_safe_and_moved(bed, t0, ids)
    _rejoin_and_use_host1(bed, ids)


def test_record_mode_fences_only_and_novaevacuate_evacuates(box_bed, tmp_path):
    bed = box_bed
    t0 = time.time()
    bed.cloud.create_servers("host1", 6, name_prefix="rec")
    ids = [s["id"] for s in Observer(bed.cloud).servers("host1")]
    done = run_fence(bed.fence_params(evacuate="record"), env=bed.env(), timeout=120)
    assert done.returncode == 0, done.stderr
    assert not [r for r in _since(bed, t0) if r.get("action") == "evacuate"]
    assert Observer(bed.cloud).service("host1").forced_down
    assert state.CibStateStore(bed.cib).get("host1").state == "fenced"
    env = dict(bed.env(), HA_RSCTMP=str(tmp_path))
    params = bed.os_params(evacuate="all", evacuate_timeout=240)
    assert run_ocf(EVACUATE_AGENT, "start", params, env=env).returncode == 0
    done = run_ocf(EVACUATE_AGENT, "monitor", params, EVACUATE_META, env=env, timeout=330)
    assert done.returncode == 0, done.stderr
    _assert_safe_and_moved(bed, t0, ids)
    assert state.CibStateStore(bed.cib).get("host1").state == "evacuated"
    _rejoin_and_use_host1(bed, ids)


def test_unreachable_bmc_touches_nothing_in_real_nova(box_bed):
    bed = box_bed
    t0 = time.time()
    bed.cloud.create_servers("host1", 2, name_prefix="bmc")
    bed.bmcs["host1"].unreachable = True
    done = run_fence(bed.fence_params(power_timeout=3), env=bed.env(), timeout=120)
    assert done.returncode == 1
    assert not [r for r in _since(bed, t0) if r["method"] == "PUT" or r.get("action")]
    assert not Observer(bed.cloud).service("host1").forced_down


def test_tagged_mode_reads_flavor_image_and_metadata_tags(box_bed):
    bed = box_bed
    before = {s["id"] for s in Observer(bed.cloud).servers("host1")}
    by_flavor = bed.cloud.create_servers("host1", 1, name_prefix="tf",
                                         flavor_extra_specs={"evacuable": "true"})
    by_image = bed.cloud.create_servers("host1", 1, name_prefix="ti", image="evacuable")
    by_meta = bed.cloud.create_servers("host1", 1, name_prefix="tm",
                                       metadata={"evacuable": "yes"})
    plain = bed.cloud.create_servers("host1", 1, name_prefix="tp")
    done = run_fence(bed.fence_params(evacuate="tagged"), env=bed.env(), timeout=300)
    assert done.returncode == 0, done.stderr
    observer = Observer(bed.cloud)
    for server_id in by_flavor + by_image + by_meta:
        server = observer.server(server_id)
        assert server["host"] != "host1" and server["status"] == "ACTIVE", server
    for server_id in plain + sorted(before):
        assert observer.server(server_id)["host"] == "host1"
