"""The agents on a real Nova 34 (one process, fake virt driver) with real IPMI (pyghmi's BMC
simulator): run as Pacemaker runs them; outcomes checked in Nova, at the BMC and in the
cluster record. Every test checks that no evacuation was requested before the BMC said off."""

from __future__ import annotations

import collections
import os
import re
import signal
import time

from nova_ha.lib import state
from testbed.observe import Observer
from tests.helpers import COMPUTE_AGENT, run_fence, run_ocf, wait_until

START_META = {"on_node": "host1", "timeout": 300000}


def _since(bed, t0: float) -> list[dict]:
    return [r for r in bed.cloud.request_log() if r["t"] >= t0]


def _accepted(bed, t0: float) -> collections.Counter:
    return collections.Counter(
        r["path"].split("/")[-2]
        for r in _since(bed, t0)
        if r.get("action") == "evacuate" and r["status"] and 200 <= r["status"] < 300
    )


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
    done = run_ocf(
        COMPUTE_AGENT, "start", bed.compute_params("host1"), START_META, env=bed.env(), timeout=330
    )
    assert done.returncode == 0, done.stderr
    observer = Observer(bed.cloud)
    svc = observer.service("host1")
    assert svc.state == "up" and not svc.forced_down and svc.status == "enabled"
    assert all(
        m.status == "completed" for m in observer.evacuations("host1") if m.instance_uuid in ids
    )
    for server_id in ids:  # the restarted source did not delete the evacuated servers
        server = observer.server(server_id)
        assert server["host"] != "host1" and server["status"] == "ACTIVE", server
    new = bed.cloud.create_servers("host1", 1, name_prefix="after-rejoin")
    assert observer.server(new[0])["host"] == "host1"
    assert observer.server(new[0])["status"] == "ACTIVE"
    assert state.CibStateStore(bed.cib).get("host1").state == "ok"


def _per_host(observer: Observer) -> collections.Counter:
    return collections.Counter(s["host"] for s in observer.servers() if s["host"] != "host1")


def test_fence_evacuates_twenty_servers_then_host_rejoins(box_bed):
    bed = box_bed
    t0 = time.time()
    bed.cloud.create_servers("host1", 20, name_prefix="real")
    observer = Observer(bed.cloud)
    ids = [s["id"] for s in observer.servers("host1")]
    before = _per_host(observer)
    done = bed.fence(evacuate_timeout=240, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"{len(ids)} evacuated, 0 failed" in done.stderr
    assert bed.bmcs["host1"].power_state == "off"
    _assert_safe_and_moved(bed, t0, ids)
    # One action per server: asked below 2.95, each landed ACTIVE without a start.
    for server_id in ids:
        assert observer.actions(server_id) == ["evacuate", "create"], server_id
    # Spread (target_policy=spread by default): the two targets end up balanced, counting
    # what they held before (placement's usage).
    after = _per_host(observer)
    gap_before = abs(before["host2"] - before["host3"])
    assert abs(after["host2"] - after["host3"]) <= max(2, gap_before - len(ids) + 2), after
    svc = observer.service("host1")
    assert svc.forced_down and svc.status == "disabled"
    assert svc.disabled_reason.startswith("nova-ha: fenced at")
    assert {m.status for m in observer.evacuations("host1") if m.instance_uuid in ids} == {"done"}
    assert state.CibStateStore(bed.cib).get("host1").state == "evacuated"
    # Nova refuses to lift the force-down while 'done' evacuations remain: `on` leaves it.
    assert run_fence(bed.fence_params(action="on"), env=bed.env()).returncode == 0
    assert observer.service("host1").forced_down
    _rejoin_and_use_host1(bed, ids)


def _busy_worker(log: str, node: str) -> int | None:
    """The PID of the worker the service gave `node` to, from its log line."""
    found = re.findall(rf"{node}: .*; evacuating \(worker (\d+)\)", log)
    return int(found[-1]) if found else None


def test_killed_worker_is_replaced_at_once_and_host_waits(box_bed):
    """The fence action returns once the host is safe; the evacuation service's worker is
    killed halfway: the service replaces it at once, the new worker asks Nova what was
    requested already and requests each server once. Meanwhile NovaCompute on the powered-on
    host refuses to start; it starts once the evacuation is over."""
    bed = box_bed
    t0 = time.time()
    bed.cloud.create_servers("host1", 20, name_prefix="kill")
    ids = [s["id"] for s in Observer(bed.cloud).servers("host1")]
    with bed.evacuation_service(max_parallel=1, evacuate_timeout=240) as service:
        done = run_fence(bed.fence_params(), env=bed.env(), timeout=60)
        assert done.returncode == 0, done.stderr
        assert "handed over to NovaEvacuate (woken on this node)" in done.stderr
        wait_until(lambda: len(_accepted(bed, t0)) >= 5)
        worker = _busy_worker(service.log(), "host1")
        assert worker is not None, service.log()
        os.kill(worker, signal.SIGKILL)
        killed = time.time()
        assert len(_accepted(bed, t0)) < 20
        replaced = wait_until(
            lambda: _busy_worker(service.log(), "host1") != worker, 10, interval=0.05
        )
        assert replaced and "died (signal 9)" in service.log()
        # host1 is powered on meanwhile and Pacemaker starts NovaCompute there: it refuses
        # (after start_wait) while the evacuation runs.
        bed.bmcs["host1"].power_state = "on"
        refused = run_ocf(
            COMPUTE_AGENT,
            "start",
            bed.compute_params("host1", start_wait=1),
            START_META,
            env=bed.env(),
            timeout=330,
        )
        assert refused.returncode == 1, refused.stderr
        assert "ocf-exit-reason:not starting nova-compute on host1" in refused.stderr
        assert not bed.cloud.hosts()["host1"]["running"]  # nova-compute was not started
        service.wait_settled("host1", 300)
        after_kill = [r["t"] for r in _since(bed, killed) if r.get("action") == "evacuate"]
        assert after_kill, "nothing requested after the worker was killed"
    _assert_safe_and_moved(bed, t0, ids)
    record = state.CibStateStore(bed.cib).get("host1")
    assert record.state == "evacuated" and record.lease_owner is None
    assert [e.name for e in record.history][-2:] == ["fenced", "evacuation_finished"]
    _rejoin_and_use_host1(bed, ids)


def test_record_mode_fences_only_and_novaevacuate_evacuates(box_bed):
    bed = box_bed
    t0 = time.time()
    bed.cloud.create_servers("host1", 6, name_prefix="rec")
    ids = [s["id"] for s in Observer(bed.cloud).servers("host1")]
    done = run_fence(bed.fence_params(evacuate="record"), env=bed.env(), timeout=120)
    assert done.returncode == 0, done.stderr
    assert not [r for r in _since(bed, t0) if r.get("action") == "evacuate"]
    assert Observer(bed.cloud).service("host1").forced_down
    assert state.CibStateStore(bed.cib).get("host1").state == "fenced"
    with bed.evacuation_service(evacuate_timeout=240) as service:
        service.wait_settled("host1", 300)
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
    by_flavor = bed.cloud.create_servers(
        "host1", 1, name_prefix="tf", flavor_extra_specs={"evacuable": "true"}
    )
    by_image = bed.cloud.create_servers("host1", 1, name_prefix="ti", image="evacuable")
    by_meta = bed.cloud.create_servers("host1", 1, name_prefix="tm", metadata={"evacuable": "yes"})
    plain = bed.cloud.create_servers("host1", 1, name_prefix="tp")
    done = bed.fence(evacuate="tagged", timeout=300)
    assert done.returncode == 0, done.stderr
    observer = Observer(bed.cloud)
    for server_id in by_flavor + by_image + by_meta:
        server = observer.server(server_id)
        assert server["host"] != "host1" and server["status"] == "ACTIVE", server
    for server_id in plain + sorted(before):
        assert observer.server(server_id)["host"] == "host1"
