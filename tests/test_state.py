"""Tests of nova_ha.lib.state against a memory store and a real CIB file.

The CIB tests run Pacemaker's own cibadmin/crm_attribute on a file (CIB_file); nothing of
Pacemaker is mocked.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from nova_ha.lib import state as state_mod
from nova_ha.lib.clock import iso_utc
from nova_ha.lib.lifecycle import Event, HostState, may_move
from nova_ha.lib.state import (
    ATTR_HISTORY,
    ATTR_LEASE_EXPIRES,
    ATTR_LEASE_OWNER,
    ATTR_STATE,
    HISTORY_MAX,
    MODES,
    CibStateStore,
    HistoryEntry,
    HostRecord,
    MemoryStateStore,
    StateError,
    StateStore,
)
from testbed.cib import feature_set

HAVE_PACEMAKER = shutil.which("cibadmin") is not None and shutil.which("crm_attribute") is not None
needs_pacemaker = pytest.mark.skipif(not HAVE_PACEMAKER, reason="Pacemaker CLI not installed")

T0 = 1_800_000_000.0  # a fixed "now" for deterministic times

CIB_TEMPLATE = """\
<cib crm_feature_set="{feature_set}" validate-with="pacemaker-3.9" epoch="1" num_updates="0"
     admin_epoch="0">
  <configuration>
    <crm_config/>
    <nodes>
      <node id="1" uname="c1"/>
      <node id="2" uname="c2"/>
      <node id="compute1" uname="compute1" type="remote"/>
      <node id="compute2" uname="compute2" type="remote"/>
      <node id="compute3" uname="compute3" type="remote"/>
      <node id="compute4" uname="compute4" type="remote"/>
    </nodes>
    <resources>
      <primitive id="compute9" class="ocf" provider="pacemaker" type="remote">
        <instance_attributes id="compute9-instance_attributes">
          <nvpair id="compute9-server" name="server" value="192.0.2.9"/>
        </instance_attributes>
      </primitive>
    </resources>
    <constraints/>
  </configuration>
  <status/>
</cib>
"""


def write_cib(path: Path, feature: str | None = None) -> str:
    path.write_text(CIB_TEMPLATE.format(feature_set=feature or feature_set()))
    return str(path)


@pytest.fixture
def cib_file(tmp_path: Path) -> str:
    return write_cib(tmp_path / "cib.xml")


@pytest.fixture(params=["memory", pytest.param("cib", marks=needs_pacemaker)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> StateStore:
    if request.param == "memory":
        return MemoryStateStore()
    return CibStateStore(write_cib(tmp_path / "cib.xml"))


def crm_attribute(cib: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, CIB_file=cib)
    return subprocess.run(
        ["crm_attribute", "--type", "nodes", "--lifetime", "forever", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )


# --- records -------------------------------------------------------------------------------


def test_missing_record_is_ok(store: StateStore) -> None:
    rec = store.get("compute1")
    assert rec == HostRecord(host="compute1")
    assert rec.state == "ok" and rec.history == [] and rec.lease_owner is None


def test_round_trip(store: StateStore) -> None:
    store.mark(
        "compute1",
        HostState.FENCED,
        Event.FENCED,
        "power off confirmed by c1",
        now=T0,
        service_host="compute1.nova.example",
        mode="all",
    )
    store.mark("compute1", HostState.EVACUATING, Event.EVACUATION_STARTED, found=7, now=T0 + 2)
    written = store.mark(
        "compute1",
        HostState.EVACUATED,
        Event.EVACUATION_FINISHED,
        found=7,
        evacuated=6,
        failed=1,
        now=T0 + 60,
    )
    expected = HostRecord(
        host="compute1",
        state="evacuated",
        since="2027-01-15T08:01:00Z",
        found=7,
        evacuated=6,
        failed=1,
        mode="all",
        service_host="compute1.nova.example",
        history=[
            HistoryEntry("2027-01-15T08:00:00Z", "fenced", "power off confirmed by c1"),
            HistoryEntry("2027-01-15T08:00:02Z", "evacuation_started", ""),
            HistoryEntry(
                "2027-01-15T08:01:00Z", "evacuation_finished", "found=7 evacuated=6 failed=1"
            ),
        ],
    )
    assert written == expected
    assert store.get("compute1") == expected
    assert store.all()["compute1"] == expected


def test_since_changes_only_with_state(store: StateStore) -> None:
    store.mark("compute1", HostState.FENCED, now=T0)
    rec = store.mark("compute1", HostState.FENCED, Event.FENCED, now=T0 + 30)
    assert rec.since == iso_utc(T0)
    rec = store.mark("compute1", HostState.EVACUATING, now=T0 + 40)
    assert rec.since == iso_utc(T0 + 40)


def test_service_host_same_as_node_is_not_stored(store: StateStore) -> None:
    assert store.mark("compute1", HostState.FENCED, service_host="compute1").service_host is None
    assert store.get("compute1").service_host is None


def test_new_incident_restarts_counts(store: StateStore) -> None:
    store.mark("compute1", HostState.FENCED)
    store.mark("compute1", HostState.EVACUATING, found=4, mode="tagged")
    store.mark("compute1", HostState.EVACUATED, evacuated=4)
    store.mark("compute1", HostState.OK, Event.REJOINED)
    assert store.get("compute1").found == 4  # the last incident stays visible after rejoin
    rec = store.mark("compute1", HostState.FENCED, Event.FENCED)
    assert (rec.found, rec.evacuated, rec.failed, rec.mode) == (0, 0, 0, "tagged")


def test_history_bounded_newest_last(store: StateStore) -> None:
    store.mark("compute1", HostState.FENCED, Event.FENCED, "first", now=T0)
    for i in range(HISTORY_MAX + 5):
        store.mark("compute1", HostState.FENCED, Event.FENCED, f"try {i}", now=T0 + i)
    history = store.get("compute1").history
    assert len(history) == HISTORY_MAX
    assert [e.detail for e in history] == [f"try {i}" for i in range(5, HISTORY_MAX + 5)]
    assert history[-1].time == iso_utc(T0 + HISTORY_MAX + 4)


def test_mark_is_idempotent(store: StateStore) -> None:
    first = store.mark("compute1", HostState.FENCED, Event.FENCED, "by c1", now=T0)
    again = store.mark("compute1", HostState.FENCED, Event.FENCED, "by c1", now=T0 + 5)
    assert again == first
    assert len(store.get("compute1").history) == 1
    # The same event with other values is a real update.
    store.mark("compute1", HostState.EVACUATING, Event.EVACUATION_STARTED, found=3)
    store.mark("compute1", HostState.EVACUATING, found=3)
    assert len(store.get("compute1").history) == 2


def test_detail_truncated(store: StateStore) -> None:
    rec = store.mark("compute1", HostState.FENCED, Event.FENCED, "x" * 1000)
    assert len(rec.history[0].detail) == state_mod.DETAIL_MAX


def test_awkward_detail_text_round_trips(store: StateStore) -> None:
    detail = """it's "quoted" <tag> & more, été \u2603 value++"""
    store.mark("compute1", HostState.FENCED, Event.FENCED, detail)
    store.mark("compute1", HostState.EVACUATING, Event.EVACUATION_STARTED)  # CAS on that history
    assert store.get("compute1").history[0].detail == detail


def _reach(store: StateStore, host: str, target: HostState) -> None:
    fenced, evacuating = HostState.FENCED, HostState.EVACUATING
    paths = {
        HostState.OK: [],
        fenced: [fenced],
        evacuating: [fenced, evacuating],
        HostState.EVACUATED: [fenced, evacuating, HostState.EVACUATED],
        HostState.FAILED: [fenced, evacuating, HostState.FAILED],
    }
    for step in paths[target]:
        store.mark(host, step)
    assert store.get(host).state == target


@pytest.mark.parametrize("source", list(HostState))
@pytest.mark.parametrize("target", list(HostState))
def test_transition_table(source: HostState, target: HostState) -> None:
    store = MemoryStateStore()
    _reach(store, "compute1", source)
    before = store.get("compute1")
    if may_move(source, target):
        assert store.mark("compute1", target, Event.REJOINED).state == target
    else:
        with pytest.raises(StateError, match=f"invalid transition {source} -> {target}"):
            store.mark("compute1", target, Event.REJOINED)
        assert store.get("compute1") == before


def test_invalid_transitions_rejected(store: StateStore) -> None:
    with pytest.raises(StateError) as err:
        store.mark("compute1", HostState.EVACUATING)
    assert "compute1" in str(err.value) and ATTR_STATE in str(err.value)
    assert err.value.host == "compute1" and err.value.attribute == ATTR_STATE
    store.mark("compute1", HostState.FENCED)
    with pytest.raises(StateError):
        store.mark("compute1", HostState.OK)
    store.mark("compute1", HostState.EVACUATING)
    with pytest.raises(StateError):
        store.mark("compute1", HostState.OK)
    assert store.get("compute1").state == "evacuating"
    # A second fencing is always allowed.
    assert store.mark("compute1", HostState.FENCED, Event.FENCED, "again").state == "fenced"


@pytest.mark.parametrize(
    ("kwargs", "attribute"),
    [
        ({"state": "gone"}, ATTR_STATE),
        ({"state": "fenced"}, ATTR_STATE),  # the string, not a HostState
        ({"state": HostState.FENCED, "event": "exploded"}, ATTR_HISTORY),
        ({"state": HostState.FENCED, "event": "fenced"}, ATTR_HISTORY),
        ({"state": HostState.FENCED, "mode": "some"}, "nova-ha-mode"),
        ({"state": HostState.FENCED, "found": -1}, "nova-ha-found"),
        ({"state": HostState.FENCED, "failed": 1.5}, "nova-ha-failed"),
    ],
)
def test_bad_arguments(kwargs: dict, attribute: str) -> None:
    store = MemoryStateStore()
    with pytest.raises(StateError) as err:
        store.mark("compute1", **kwargs)
    assert err.value.attribute == attribute
    with pytest.raises(StateError):
        store.get("bad host'name")


def test_reset(store: StateStore) -> None:
    store.mark("compute1", HostState.FENCED, Event.FENCED, now=T0, service_host="nova-c1")
    assert store.acquire_lease("compute1", "NovaEvacuate@c2", 60, now=T0)
    store.mark(
        "compute1",
        HostState.EVACUATING,
        Event.EVACUATION_STARTED,
        found=3,
        failed=1,
        mode="all",
        now=T0 + 1,
    )
    rec = store.reset("compute1", "disk replaced, by alice", now=T0 + 100)
    assert rec.state == "ok" and rec.since == iso_utc(T0 + 100)
    assert (rec.found, rec.evacuated, rec.failed, rec.mode) == (0, 0, 0, None)
    assert rec.lease_owner is None and rec.lease_expires is None
    assert rec.service_host == "nova-c1"  # a naming fact, not incident state
    assert [e.name for e in rec.history] == ["fenced", "evacuation_started", "reset"]
    assert rec.history[-1].detail == "disk replaced, by alice"
    assert store.get("compute1") == rec
    # The lease is free again for anyone.
    assert store.acquire_lease("compute1", "fence_nova_evacuate@c1:99", 60, now=T0 + 101)


def test_owner_guard_on_mark(store: StateStore) -> None:
    store.mark("compute1", HostState.FENCED)
    assert store.acquire_lease("compute1", "NovaEvacuate@c2", 30, now=T0)
    store.mark("compute1", HostState.EVACUATING, owner="NovaEvacuate@c2")
    assert store.acquire_lease("compute1", "NovaEvacuate@c1", 30, now=T0 + 100)  # takeover
    with pytest.raises(StateError, match="lease not held by NovaEvacuate@c2"):
        store.mark("compute1", HostState.EVACUATED, owner="NovaEvacuate@c2")
    assert store.get("compute1").state == "evacuating"


# --- leases -------------------------------------------------------------------------------

A = "fence_nova_evacuate@c1:4242"
B = "NovaEvacuate@c2"


def test_lease_acquire_renew_release(store: StateStore) -> None:
    assert store.acquire_lease("compute1", A, 30, now=T0)
    rec = store.get("compute1")
    assert (rec.lease_owner, rec.lease_expires) == (A, T0 + 30)
    assert rec.lease_live(T0 + 10)
    assert store.acquire_lease("compute1", A, 30, now=T0 + 10)  # ours: renewed
    assert store.get("compute1").lease_expires == T0 + 40
    assert store.renew_lease("compute1", A, 60, now=T0 + 20)
    assert store.get("compute1").lease_expires == T0 + 80
    assert not store.renew_lease("compute1", B, 60, now=T0 + 20)
    assert not store.release_lease("compute1", B)
    assert store.get("compute1").lease_owner == A
    assert store.release_lease("compute1", A)
    assert store.get("compute1").lease_owner is None
    assert not store.release_lease("compute1", A)
    assert not store.renew_lease("compute1", A, 60, now=T0 + 21)  # released: nothing to renew
    assert store.acquire_lease("compute1", B, 30, now=T0 + 21)


def test_lease_refused_while_live_taken_when_stale(store: StateStore) -> None:
    assert store.acquire_lease("compute1", A, 30, now=T0)
    assert not store.acquire_lease("compute1", B, 30, now=T0 + 1)
    assert not store.acquire_lease("compute1", B, 30, now=T0 + 30)
    # Expired, but still within the skew allowance: refused.
    assert not store.acquire_lease("compute1", B, 30, now=T0 + 30 + store.skew)
    # A died: its lease is stale past expiry + skew, B takes over.
    assert store.acquire_lease("compute1", B, 30, now=T0 + 30 + store.skew + 0.01)
    rec = store.get("compute1")
    assert rec.lease_owner == B
    assert rec.lease_expires == pytest.approx(T0 + 70.01)
    assert not store.renew_lease("compute1", A, 30, now=T0 + 41)


def test_lease_independent_of_record(store: StateStore) -> None:
    store.mark("compute1", HostState.FENCED)
    assert store.acquire_lease("compute1", A, 30, now=T0)
    store.mark("compute1", HostState.EVACUATING, found=2, owner=A)
    assert store.renew_lease("compute1", A, 30, now=T0 + 5)
    assert store.get("compute1").found == 2
    assert store.get("compute2").lease_owner is None  # hosts are separate
    assert store.acquire_lease("compute2", B, 30, now=T0)


@pytest.mark.parametrize(
    ("a_off", "b_off"), [(-9.0, 0.0), (9.0, 0.0), (0.0, -9.0), (0.0, 9.0), (4.0, -5.0), (-5, 4.5)]
)
def test_clock_skew_within_allowance(a_off: float, b_off: float) -> None:
    """A's and B's clocks are a_off and b_off s off true time, |a_off - b_off| <= skew.

    A takes the lease at true time T0 for 30 s and stops working at its own expiry, i.e. at
    true time T0 + 30. B must not get the lease before that moment.
    """
    store = MemoryStateStore(skew=10.0)
    assert store.acquire_lease("compute1", A, 30, now=T0 + a_off)
    for true_time in (T0, T0 + 29, T0 + 30):
        assert not store.acquire_lease("compute1", B, 30, now=true_time + b_off)
    # Once B's clock is past A's expiry + skew, the stale lease is B's.
    expiry = T0 + a_off + 30
    assert not store.acquire_lease("compute1", B, 30, now=expiry + 10.0)
    assert store.acquire_lease("compute1", B, 30, now=expiry + 10.001)


def test_clock_skew_beyond_allowance_is_unsafe() -> None:
    """Documents the assumption: with A's clock 15 s behind, B takes over while A still works."""
    store = MemoryStateStore(skew=10.0)
    assert store.acquire_lease("compute1", A, 30, now=T0 - 15)
    assert store.acquire_lease("compute1", B, 30, now=T0 + 26)  # A stops only at T0 + 30


def test_configurable_skew() -> None:
    store = MemoryStateStore(skew=0.0)
    assert store.acquire_lease("compute1", A, 30, now=T0)
    assert store.acquire_lease("compute1", B, 30, now=T0 + 30.001)


def test_bad_lease_arguments() -> None:
    store = MemoryStateStore()
    with pytest.raises(StateError):
        store.acquire_lease("compute1", "has space", 30)
    with pytest.raises(StateError):
        store.acquire_lease("compute1", A, 0)


# --- memory store specifics ---------------------------------------------------------------


def test_memory_store_threads() -> None:
    """Concurrent marks from threads lose no history event (CAS on the record)."""
    import threading

    store = MemoryStateStore(history_max=100)
    store.mark("compute1", HostState.FENCED)
    barrier = threading.Barrier(4)

    def work(i: int) -> None:
        barrier.wait()
        for k in range(20):
            store.mark("compute1", HostState.FENCED, Event.FENCED, f"t{i}-{k}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.get("compute1").history) == 80


def test_memory_all() -> None:
    store = MemoryStateStore()
    store.mark("compute1", HostState.FENCED)
    store.acquire_lease("compute2", A, 30)
    records = store.all()
    assert set(records) == {"compute1", "compute2"}
    assert records["compute1"].state == "fenced" and records["compute2"].lease_owner == A


# --- CIB store specifics ------------------------------------------------------------------


@needs_pacemaker
def test_cib_persistent_node_attributes(cib_file: str) -> None:
    store = CibStateStore(cib_file)
    store.mark("compute1", HostState.FENCED, Event.FENCED, now=T0)
    store.acquire_lease("compute1", A, 30, now=T0)
    root = etree.parse(cib_file).getroot()
    node = root.find("configuration/nodes/node[@uname='compute1']")
    assert node is not None and node.get("type") == "remote"
    pairs = {nv.get("name"): nv.get("value") for nv in node.findall("instance_attributes/nvpair")}
    assert pairs[ATTR_STATE] == "fenced"
    assert pairs[ATTR_LEASE_OWNER] == A
    assert float(pairs[ATTR_LEASE_EXPIRES]) == T0 + 30
    # Nothing in the status section: these are persistent (configuration) attributes.
    assert root.find("status//nvpair") is None
    # Pacemaker's own tool sees the same values...
    got = crm_attribute(cib_file, "--node", "compute1", "--name", ATTR_STATE, "--query", "--quiet")
    assert got.returncode == 0 and got.stdout.strip() == "fenced"
    # ...and what it writes, the store reads.
    assert (
        crm_attribute(
            cib_file, "--node", "compute2", "--name", ATTR_STATE, "--update", "failed"
        ).returncode
        == 0
    )
    assert store.get("compute2").state == "failed"


@needs_pacemaker
def test_cib_persists_across_store_objects(cib_file: str) -> None:
    first = CibStateStore(cib_file)
    first.mark("compute3", HostState.FENCED, Event.FENCED, "by c1", now=T0, mode="record")
    first.acquire_lease("compute3", B, 45, now=T0)
    expected = first.get("compute3")
    del first
    second = CibStateStore(cib_file=cib_file)
    assert second.get("compute3") == expected
    assert second.all()["compute3"] == expected
    assert expected.lease_expires == T0 + 45


@needs_pacemaker
def test_cib_cleared_attributes_are_removed(cib_file: str) -> None:
    store = CibStateStore(cib_file)
    store.mark("compute1", HostState.FENCED)
    store.acquire_lease("compute1", A, 30)
    store.release_lease("compute1", A)
    got = crm_attribute(cib_file, "--node", "compute1", "--name", ATTR_LEASE_OWNER, "--query")
    assert got.returncode == 105  # absent, not an empty value
    names = {nv.get("name") for nv in etree.parse(cib_file).iter("nvpair")}
    assert ATTR_LEASE_OWNER not in names and ATTR_STATE in names


@needs_pacemaker
def test_cib_all_is_one_query(cib_file: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = CibStateStore(cib_file)
    store.mark("compute1", HostState.FENCED, Event.FENCED)
    store.mark("compute2", HostState.FENCED)
    store.mark("compute2", HostState.EVACUATING, found=2)
    store.mark("compute9", HostState.FENCED)  # a remote node only known from its resource
    calls: list[list[str]] = []
    real_run = subprocess.run

    def counting_run(cmd: list[str], *args: object, **kwargs: object) -> object:
        calls.append(cmd)
        return real_run(cmd, *args, **kwargs)

    monkeypatch.setattr(state_mod.subprocess, "run", counting_run)
    records = store.all()
    assert len(calls) == 1 and calls[0][1:] == ["--query", "--scope", "nodes"]
    # Remote nodes are computes even without a record; controllers are left out.
    assert set(records) == {"compute1", "compute2", "compute3", "compute4", "compute9"}
    assert records["compute2"].state == "evacuating" and records["compute2"].found == 2
    assert records["compute3"] == HostRecord(host="compute3")


@needs_pacemaker
def test_cib_remote_node_added_like_crm_attribute(cib_file: str) -> None:
    store = CibStateStore(cib_file)
    assert store.get("compute9").state == "ok"
    store.mark("compute9", HostState.FENCED, Event.FENCED)
    node = etree.parse(cib_file).getroot().find("configuration/nodes/node[@uname='compute9']")
    assert node is not None and node.get("id") == "compute9" and node.get("type") == "remote"
    got = crm_attribute(cib_file, "--node", "compute9", "--name", ATTR_STATE, "--query", "--quiet")
    assert got.stdout.strip() == "fenced"


@needs_pacemaker
def test_cib_node_names_case_insensitive(cib_file: str) -> None:
    store = CibStateStore(cib_file)
    store.mark("Compute1", HostState.FENCED)
    assert store.get("compute1").state == "fenced"


@needs_pacemaker
def test_cib_errors_are_state_errors(cib_file: str, tmp_path: Path) -> None:
    store = CibStateStore(cib_file)
    with pytest.raises(StateError, match="host nowhere: not a node of this cluster"):
        store.mark("nowhere", HostState.FENCED)
    missing = CibStateStore(str(tmp_path / "absent.xml"))
    started = time.monotonic()
    with pytest.raises(StateError, match="host compute1: cibadmin --query failed"):
        missing.get("compute1")
    assert time.monotonic() - started < 5  # a missing file is not retried
    with pytest.raises(StateError, match="not found"):
        CibStateStore(cib_file, cibadmin="/nonexistent/cibadmin").get("compute1")


@needs_pacemaker
def test_cib_newer_feature_set_is_explained(tmp_path: Path) -> None:
    # Pacemaker refuses writes to a CIB from a newer version (exit 76); say why.
    store = CibStateStore(write_cib(tmp_path / "cib.xml", feature="99.0.0"))
    assert store.get("compute1").state == "ok"  # reading still works
    with pytest.raises(StateError, match="crm_feature_set newer"):
        store.mark("compute1", HostState.FENCED)


@needs_pacemaker
def test_cib_damaged_record(cib_file: str) -> None:
    store = CibStateStore(cib_file)
    store.mark("compute1", HostState.FENCED, Event.FENCED)
    assert (
        crm_attribute(
            cib_file, "--node", "compute1", "--name", ATTR_HISTORY, "--update", "{not json"
        ).returncode
        == 0
    )
    with pytest.raises(StateError) as err:
        store.get("compute1")
    assert str(err.value).startswith(f"host compute1, attribute {ATTR_HISTORY}:")
    # A damaged history does not block leases, and reset repairs the record.
    assert store.acquire_lease("compute1", A, 30)
    rec = store.reset("compute1", "repair")
    assert rec.state == "ok" and [e.name for e in rec.history] == ["reset", "reset"]
    assert store.get("compute1") == rec
    assert (
        crm_attribute(
            cib_file, "--node", "compute1", "--name", ATTR_STATE, "--update", "weird"
        ).returncode
        == 0
    )
    with pytest.raises(StateError, match=f"attribute {ATTR_STATE}: unknown state 'weird'"):
        store.all()


@needs_pacemaker
def test_cib_xpath_literal_handles_both_quotes(cib_file: str) -> None:
    store = CibStateStore(cib_file)
    store.mark("compute1", HostState.FENCED, Event.FENCED, """both ' and " quotes""")
    rec = store.mark("compute1", HostState.EVACUATING)  # its CAS must match that history exactly
    assert rec.state == "evacuating"
    assert store.get("compute1").history[0].detail == """both ' and " quotes"""


# --- races between processes on the CIB file ---------------------------------------------


def _race_acquire(cib: str, idx: int, rounds: int, barrier: object, results: object) -> None:
    try:
        store = CibStateStore(cib)
        for r in range(rounds):
            owner = f"racer{idx}@p:{r}"
            barrier.wait(60)
            won = store.acquire_lease("compute1", owner, 300)
            holder = store.get("compute1").lease_owner if won else None
            results.put((r, idx, won, holder))
            barrier.wait(60)
            if won:
                store.release_lease("compute1", owner)
            barrier.wait(60)
    except BaseException as exc:  # report instead of leaving the parent waiting
        results.put(("error", idx, repr(exc), None))
        barrier.abort()


@needs_pacemaker
def test_cib_lease_race_exactly_one_winner(cib_file: str) -> None:
    ctx = multiprocessing.get_context("fork")
    racers, rounds = 3, 15
    barrier = ctx.Barrier(racers)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_race_acquire, args=(cib_file, i, rounds, barrier, results))
        for i in range(racers)
    ]
    for p in procs:
        p.start()
    got = []
    for _ in range(racers * rounds):
        item = results.get(timeout=120)
        assert item[0] != "error", item
        got.append(item)
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    winners = Counter(r for r, _, won, _ in got if won)
    assert all(winners[r] == 1 for r in range(rounds)), winners
    for r, idx, won, holder in got:
        if won:
            assert holder == f"racer{idx}@p:{r}"


def _race_mark(cib: str, idx: int, count: int, barrier: object) -> None:
    store = CibStateStore(cib)
    barrier.wait(60)
    for k in range(count):
        store.mark("compute2", HostState.FENCED, Event.FENCED, f"p{idx}-{k}")


@needs_pacemaker
def test_cib_concurrent_marks_lose_no_event(cib_file: str) -> None:
    CibStateStore(cib_file).mark("compute2", HostState.FENCED, Event.FENCED)
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_race_mark, args=(cib_file, i, 8, barrier)) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    details = [e.detail for e in CibStateStore(cib_file).get("compute2").history]
    assert sorted(details[1:]) == sorted(f"p{i}-{k}" for i in range(2) for k in range(8))


# --- property: any sequence of operations keeps the record valid ------------------------

OWNERS = ["fence_nova_evacuate@c1:1", "NovaEvacuate@c2", "NovaEvacuate@c3"]

operation = st.one_of(
    st.tuples(
        st.just("mark"),
        st.sampled_from(list(HostState)),
        st.none() | st.sampled_from(list(Event)),
        st.none() | st.integers(0, 50),
        st.none() | st.sampled_from(MODES),
    ),
    st.tuples(st.just("acquire"), st.sampled_from(OWNERS), st.floats(1, 60)),
    st.tuples(st.just("renew"), st.sampled_from(OWNERS), st.floats(1, 60)),
    st.tuples(st.just("release"), st.sampled_from(OWNERS)),
    st.tuples(st.just("reset"), st.text(max_size=30)),
)
steps = st.lists(st.tuples(operation, st.floats(0, 40)), max_size=30)


def check_sequence(store: StateStore, ops: list) -> None:
    host = "compute1"
    now = T0
    model_state = HostState.OK
    model_lease: tuple[str, float] | None = None
    for op, advance in ops:
        now += advance
        before = store.get(host)
        kind = op[0]
        if kind == "mark":
            _, target, event, count, mode = op
            allowed = may_move(model_state, target)
            try:
                store.mark(host, target, event, found=count, mode=mode, now=now)
                assert allowed
                model_state = target
            except StateError:
                assert not allowed
                assert store.get(host) == before
        elif kind in ("acquire", "renew"):
            _, owner, ttl = op
            free = (
                model_lease is None or model_lease[0] == owner or now > model_lease[1] + store.skew
            )
            ours = model_lease is not None and model_lease[0] == owner
            expect = free if kind == "acquire" else ours
            got = getattr(store, f"{kind}_lease")(host, owner, ttl, now=now)
            assert got == expect
            if got:
                model_lease = (owner, float(f"{now + ttl:.3f}"))
        elif kind == "release":
            ours = model_lease is not None and model_lease[0] == op[1]
            assert store.release_lease(host, op[1]) == ours
            if ours:
                model_lease = None
        else:
            store.reset(host, op[1], now=now)
            model_state, model_lease = HostState.OK, None
        rec = store.get(host)
        assert rec.state == model_state and isinstance(rec.state, HostState)
        assert len(rec.history) <= store.history_max
        assert min(rec.found, rec.evacuated, rec.failed) >= 0
        assert rec.mode is None or rec.mode in MODES
        assert all(e.name in list(Event) for e in rec.history)
        assert (rec.lease_owner, rec.lease_expires) == (model_lease or (None, None))
        assert rec.since is None or time.strptime(rec.since, "%Y-%m-%dT%H:%M:%SZ")


@settings(max_examples=300, deadline=None)
@given(steps)
def test_property_memory(ops: list) -> None:
    check_sequence(MemoryStateStore(history_max=5), ops)


@needs_pacemaker
@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=st.lists(st.tuples(operation, st.floats(0, 40)), max_size=8))
def test_property_cib(tmp_path: Path, ops: list) -> None:
    cib = write_cib(tmp_path / "prop-cib.xml")  # fresh file for every example
    check_sequence(CibStateStore(cib, history_max=5), ops)


def test_live_cluster_no_match_message_is_recognised() -> None:
    from nova_ha.lib.state import _no_match

    assert _no_match("Call failed: No such device or address")
    assert _no_match("Call cib_query failed: No such device or address")
    assert _no_match("Call cib_modify failed: No such device or address")
    assert not _no_match("Call cib_modify failed: Protocol not supported")


def test_a_targets_fence_time_is_found_by_its_nova_host_name() -> None:
    """The runner asks by Nova's host name; records are by node (service_host tells)."""
    from nova_ha.lib import clock, recovery

    store = MemoryStateStore()
    at = 1_800_000_000.0
    store.mark("node-b", HostState.FENCED, Event.FENCED, service_host="b.example", now=at)
    store.mark("compute1", HostState.FENCED, Event.FENCED, now=at + 60)
    assert recovery.host_fenced_at(store, "b.example") == clock.epoch(clock.iso_utc(at))
    assert recovery.host_fenced_at(store, "compute1") == clock.epoch(clock.iso_utc(at + 60))
    assert recovery.host_fenced_at(store, "node-b") is None  # not its Nova name
    assert recovery.host_fenced_at(store, "compute9") is None
    assert recovery.host_fenced_at(None, "compute1") is None
