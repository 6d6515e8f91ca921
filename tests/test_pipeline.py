"""The recovery pipeline, step by step: the fence path's steps and its proof type, the
evacuation service's supervision of workers, and the record writes an incident costs (the
decisions themselves: tests/test_lifecycle.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field

import pytest

from nova_ha.lib import evacuation_service as svc
from nova_ha.lib import fence_path, handover, params, proof, state
from nova_ha.lib.evacuation_service import EXIT_INTERRUPTED, Service, Worker
from nova_ha.lib.lifecycle import Event, HostState
from testbed.observe import Observer
from tests.helpers import run_fence

NOW = 1_800_000_000.0
SERVICE = handover.SERVICE_OWNER


# -- the service's supervision, with fake workers ---------------------------------------------


@dataclass
class FakeProcess:
    pid: int
    code: int | None = None
    given: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.stdin = self

    def write(self, data: bytes) -> None:
        if self.code is not None:
            raise BrokenPipeError
        self.given.append(data.decode().strip())

    def close(self) -> None:
        pass

    def flush(self) -> None:
        pass

    def poll(self) -> int | None:
        return self.code

    def terminate(self) -> None:
        self.code = -15

    def kill(self) -> None:
        self.code = -9

    def wait(self, timeout: float | None = None) -> int:
        return self.code or 0


class Spawner:
    def __init__(self) -> None:
        self.workers: list[FakeProcess] = []

    def __call__(self, raw) -> Worker:
        process = FakeProcess(100 + len(self.workers))
        self.workers.append(process)
        return Worker(process)  # type: ignore[arg-type]


def _service(store: state.StateStore, **values) -> tuple[Service, Spawner]:
    spawner = Spawner()
    parsed = params.parse({"evacuate": "all", "max_fenced_hosts": "0", **values}, params.EVACUATE)
    return Service(parsed, {}, store, spawn=spawner), spawner


def _fenced(store: state.StateStore, node: str) -> None:
    store.mark(
        node,
        HostState.FENCED,
        Event.FENCED,
        "power-off confirmed",
        mode="all",
        grant=(SERVICE, 70.0),
    )


def test_service_gives_a_fenced_host_to_the_warm_spare_at_once():
    store = state.MemoryStateStore()
    service, spawner = _service(store)
    assert service.tick() == []  # nothing to do: one warm spare made
    assert len(spawner.workers) == 1 and spawner.workers[0].given == []
    _fenced(store, "compute1")
    lines = service.tick()
    assert lines == ["compute1: recorded fenced and handed over; evacuating (worker 100)"]
    assert spawner.workers[0].given == ["compute1"]  # the spare took it
    assert len(spawner.workers) == 2  # and a new spare waits
    assert service.tick() == []  # busy: not given twice


def _working_compute1() -> tuple[Service, list[float]]:
    """A service on a clock the test moves, its worker busy with compute1."""
    store = state.MemoryStateStore()
    clock = [NOW]
    service, _ = _service(store)
    service.clock = lambda: clock[0]
    _fenced(store, "compute1")
    service.tick()
    return service, clock


def test_a_dead_worker_is_replaced_at_once_and_crash_loops_back_off():
    service, clock = _working_compute1()
    for attempt in range(svc.CRASH_LIMIT):
        busy = service.busy["compute1"].process
        busy.code = -9  # killed
        lines = service.tick()
        assert any("died (signal 9)" in line and "taking over in 1 s" in line for line in lines), (
            lines
        )
        clock[0] += svc.TAKEOVER_GRACE  # its in-flight request has landed in Nova
        service.tick()
        assert service.busy["compute1"].process is not busy, attempt
    service.busy["compute1"].process.code = 1
    lines = service.tick()
    assert any("pausing 60 s" in line for line in lines), lines
    assert "compute1" not in service.busy


def test_nova_unreachable_is_retried_with_backoff():
    service, clock = _working_compute1()
    service.busy["compute1"].process.code = EXIT_INTERRUPTED
    assert any("trying again in 5 s" in line for line in service.tick())
    assert "compute1" not in service.busy
    clock[0] += 6
    service.tick()
    assert "compute1" in service.busy


def test_hosts_are_worked_in_parallel_up_to_max_hosts():
    store = state.MemoryStateStore()
    service, spawner = _service(store, max_hosts="2")
    for node in ("compute1", "compute2", "compute3"):
        _fenced(store, node)
    lines = service.tick()
    assert sorted(service.busy) == ["compute1", "compute2"]
    assert "compute3: waiting for a free worker (2 busy)" in lines
    service.busy["compute1"].process.code = 0
    store.mark(
        "compute1",
        HostState.EVACUATED,
        Event.EVACUATION_FINISHED,
        "done",
        owner=SERVICE,
        release=True,
    )
    service.tick()
    assert sorted(service.busy) == ["compute2", "compute3"]


def test_a_bad_record_is_reported_and_the_others_are_worked():
    store = state.MemoryStateStore()
    service, _ = _service(store)
    _fenced(store, "compute1")
    store._hosts["compute2"] = {state.ATTR_STATE: "exploded"}
    lines = service.tick()
    assert any(
        line.startswith("skipping compute2: its record does not decode") for line in lines
    ), lines
    assert "compute1" in service.busy


def test_the_guard_holds_a_wave_and_gives_the_lease_back():
    store = state.MemoryStateStore()
    service, _ = _service(store, max_fenced_hosts="1", fenced_window="600")
    service._count_computes = lambda: 10  # type: ignore[method-assign]
    for node in ("compute1", "compute2"):
        _fenced(store, node)
    lines = service.tick()
    assert not service.busy
    assert sum("held by the mass-failure guard" in line for line in lines) == 2, lines
    for node in ("compute1", "compute2"):
        record = store.get(node)
        assert record.history[-1].name == "evacuation_blocked"
        assert record.lease_owner is None  # an operator's 'nova-ha evacuate' need not wait
    assert service.tick() == []  # held once per incident


# -- the fence path's steps ---------------------------------------------------------------------


def test_only_the_power_off_step_makes_a_proof():
    with pytest.raises(TypeError):
        fence_path.PowerOffConfirmed("compute1", "compute1", "me")


@pytest.mark.parametrize(
    "state_name, proved",
    [("ok", False), ("fenced", True), ("evacuating", True), ("evacuated", True), ("failed", True)],
)
def test_a_record_of_a_fenced_host_carries_the_proof(state_name, proved):
    record = state.HostRecord("compute1", state=HostState(state_name))
    made = proof.from_record(record, "compute1.example")
    assert (made is not None) == proved
    if made is not None:
        assert (made.node, made.host) == ("compute1", "compute1.example")


def _topology_fence(**values) -> fence_path.HostFence:
    parsed = params.parse(
        {
            "port": "compute1",
            "evacuate": "all",
            "os_auth_url": "http://x",
            "os_username": "u",
            "os_password": "p",
            "os_project_name": "p",
            **values,
        },
        params.FENCE,
    )
    return fence_path.HostFence(parsed, "compute1")


def test_record_is_one_write_that_hands_the_lease_over():
    fence = _topology_fence()
    proof = fence.power_off()  # no BMC parameters: an earlier topology level confirmed it
    assert proof is not None and proof.by == "an earlier fencing level"
    store = CountingStore()
    record = fence.record(proof, store)
    assert store.writes == 1
    assert record is not None and record.state == "fenced" and record.lease_owner == SERVICE
    assert record.lease_expires == pytest.approx(time.time() + 40 + 30, abs=5)
    # Another runner's live lease is respected: recorded, but not handed over.
    store.acquire_lease("compute2", "nova-ha@c1:1", 600)
    other = fence_path.HostFence(_topology_fence().parsed, "compute2")
    proof2 = other.power_off()
    kept = other.record(proof2, store)
    assert kept is not None and kept.state == "fenced" and kept.lease_owner == "nova-ha@c1:1"
    assert other.hand_over(proof2, kept) == "left to nova-ha@c1:1, who holds the host's lease"


def test_hand_over_wakes_a_local_service(tmp_path, monkeypatch):
    monkeypatch.setenv("NOVA_HA_RUN_DIR", str(tmp_path))
    fence = _topology_fence()
    proof = fence.power_off()
    record = fence.record(proof, state.MemoryStateStore())
    assert fence.hand_over(proof, record).endswith("(it sees the record at its next read)")
    sock = handover.listen()
    try:
        assert fence.hand_over(proof, record) == "handed over to NovaEvacuate (woken on this node)"
        assert handover.received(sock) == ["compute1"]
    finally:
        sock.close()


class CountingStore(state.MemoryStateStore):
    """Counts the writes (each one a scheduler run in a live cluster)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def _swap(self, change, handle):
        done = super()._swap(change, handle)
        self.writes += bool(done and change.update)
        return done


def test_an_incident_costs_two_record_writes(sim_bed):
    """Fence (one write: fenced + lease), then the service's worker (one write: outcome +
    lease released): counted on the CIB's epoch."""
    bed = sim_bed
    bed.cloud.create_servers("host1", 4)
    before = _epoch(bed.cib)
    done = bed.fence()
    assert done.returncode == 0, done.stderr
    assert _epoch(bed.cib) - before == 2
    record = state.CibStateStore(bed.cib).get("host1")
    assert record.state == "evacuated" and record.lease_owner is None


def _epoch(cib: str) -> int:
    from xml.etree import ElementTree as ET

    # Each write of the configuration section (where the records live) bumps the epoch.
    return int(ET.parse(cib).getroot().get("epoch", "0"))


def test_service_module_starts_without_heavy_imports():
    code = (
        "import sys; import nova_ha.lib.evacuation_service, nova_ha.lib.evacuate_agent; "
        "print(sorted(m for m in ('keystoneauth1','lxml','pyghmi','requests') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "[]"


def test_cib_out_of_reach_costs_the_fence_under_a_second(sim_bed):
    """With no cluster running, cibadmin answers 'not connected': the fence records nothing,
    evacuates itself (it holds the proof), and is not slower by more than a second than the
    same fence with no CIB tool at all."""
    bed = sim_bed
    env = {k: v for k, v in bed.env().items() if k != "CIB_file"}
    probe = subprocess.run(
        ["cibadmin", "--query", "--scope", "crm_config"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if probe.returncode == 0:
        pytest.skip("a cluster runs on this machine: its CIB is in reach")
    without_tool = dict(
        env,
        PATH=":".join(
            d
            for d in env.get("PATH", "").split(":")
            if d and not os.path.exists(os.path.join(d, "cibadmin"))
        ),
    )
    took = {}
    observer = Observer(bed.cloud)
    for host, run_env in (("host1", without_tool), ("host2", env)):
        ids = bed.cloud.create_servers(host, 2)
        began = time.monotonic()
        done = run_fence(bed.fence_params(host), env=run_env)
        took[host] = time.monotonic() - began
        assert done.returncode == 0, done.stderr
        assert "no cluster record to hand over with" in done.stderr
        assert all(observer.server(i)["host"] != host for i in ids)
        for server_id in ids:  # the same work for both fences: two servers each
            observer.nova.servers.delete(server_id)
    assert "the CIB is out of reach" in done.stderr
    assert took["host2"] - took["host1"] < 1.0, took


def test_one_bad_record_does_not_stop_the_others(sim_bed, tmp_path):
    """A record hand-edited into something this version does not know (or written by a
    newer one): reported, skipped; every other host is still worked and shown."""
    import json

    from tests.test_cli import _config, _nova_ha

    bed = sim_bed
    ids = bed.cloud.create_servers("host1", 2)
    assert run_fence(bed.fence_params(evacuate="record"), env=bed.env()).returncode == 0
    edit = subprocess.run(
        [
            "crm_attribute",
            "--type",
            "nodes",
            "--node",
            "host2",
            "--name",
            state.ATTR_STATE,
            "--update",
            "quarantined",
        ],
        env=bed.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert edit.returncode == 0, edit.stderr
    with bed.evacuation_service() as service:
        service.wait_settled("host1")
        log = service.log()
    assert "skipping host2: its record does not decode" in log
    assert all(Observer(bed.cloud).server(i)["host"] != "host1" for i in ids)
    config = _config(tmp_path, bed.os_params())
    status = _nova_ha(bed, "status", "--json", "--no-power", "--config", config)
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert any("host2" in p and "does not read" in p for p in data["problems"]), data
    rows = {row["node"]: row for row in data["hosts"]}
    assert rows["host1"]["record"]["state"] == "evacuated"
    history = _nova_ha(bed, "history", "--config", config)
    assert history.returncode == 0 and "host1" in history.stdout
    assert "record of host2 does not read" in history.stderr
