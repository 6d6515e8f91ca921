"""The cluster test bed's own tests: a real Pacemaker cluster with pacemaker-remote nodes.

Root and Debian's cluster packages are required (skipped without them, failed under CI).
The figures measured here (start, Online, kill -> fence request, cut link -> fence request)
are printed at the end of the run.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testbed import cluster as bed
from testbed import netns
from testbed.cluster import Cluster, cluster_fixture, to_terminal
from testbed.util import need

cluster = cluster_fixture(scope="class")
cluster2 = cluster_fixture(scope="class", controllers=2)

MEASURED: dict[str, float] = {}
SEEN_PIDS: set[tuple[int, str | None]] = set()  # every daemon PID the beds ran
BEDS: dict[int, Cluster] = {}
HOST_FILES = (
    "/etc/corosync/corosync.conf",
    "/etc/corosync/authkey",
    "/var/lib/pacemaker/cib/cib.xml",
    "/var/log/pacemaker/pacemaker.log",
    "/var/log/corosync/corosync.log",
)


def _fingerprint() -> dict[str, str | None]:
    """What the machine's own cluster files look like (the bed must leave them alone)."""
    out: dict[str, str | None] = {}
    for path in HOST_FILES:
        try:
            out[path] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        except FileNotFoundError:
            out[path] = None
    out["/var/lib/pacemaker/cib/"] = (
        " ".join(sorted(os.listdir("/var/lib/pacemaker/cib")))
        if os.path.isdir("/var/lib/pacemaker/cib")
        else None
    )
    return out


BEFORE: dict[str, str | None] = {}


@pytest.fixture(scope="module", autouse=True)
def report(request):
    BEFORE.update(_fingerprint())  # at the module's start: other modules' tools log too
    yield
    if MEASURED:
        lines = ["", "cluster test bed, measured:"]
        lines += [f"  {k:<48} {v:7.2f} s" for k, v in MEASURED.items()]
        to_terminal(request.config, "\n".join(lines))


def _remember(c: Cluster) -> None:
    BEDS[id(c)] = c
    hosts = list(c.controllers.values()) + [r.host for r in c.remotes.values()]
    for host in hosts:
        for proc in list(host.procs.values()) + ([host.holder] if host.holder else []):
            SEEN_PIDS.add((proc.pid, proc.start))


class TestOneController:
    def test_controller_online(self, cluster: Cluster):
        nodes = cluster.nodes()
        assert nodes["c1"]["online"] == "true"
        assert nodes["_dc"]["name"] == "c1"
        MEASURED["one controller: start -> Online"] = cluster.timings["cluster_start"]
        assert cluster.timings["cluster_start"] < 30  # dc-deadtime=2s in the first CIB
        props = cluster.run(
            "crm_attribute --type crm_config --name dc-deadtime --query --quiet"
        ).stdout.strip()
        assert props == "2s"
        _remember(cluster)

    def test_tools(self, cluster: Cluster, tmp_path):
        """The helpers reach the live cluster: pcs (live and -f), cibadmin, stonith_admin."""
        assert "fence_nha_testbed" not in cluster.stonith_admin("--list-installed").stdout
        cluster.install_test_agent()
        assert "fence_nha_testbed" in cluster.stonith_admin("--list-installed").stdout
        cib = tmp_path / "cib.xml"
        cib.write_text(cluster.cibadmin("--query").stdout)
        os.chmod(tmp_path, 0o755)
        cluster.pcs("property", "set", "batch-limit=30", cib_file=cib)
        assert 'name="batch-limit" value="30"' in cib.read_text()
        assert "batch-limit" not in cluster.cibadmin("--query").stdout
        cluster.pcs("property", "set", "batch-limit=0")  # live
        assert cluster.run("crm_attribute -t crm_config -n batch-limit -q -G").stdout.strip() == "0"
        cluster.crm_attribute("--type", "crm_config", "--name", "batch-limit", "--delete")

    def test_remotes_online(self, cluster: Cluster):
        # With stonith-enabled=true, Pacemaker starts nothing (remote connections
        # included) until a stonith device exists.
        cluster.add_test_stonith()
        r1 = cluster.add_remote("remote1")
        r2 = cluster.add_remote("remote2", via="pcs")
        for r in (r1, r2):
            assert cluster.is_online(r.name)
            assert r.pid and r.pid in netns.namespace_pids(r.netns)
            assert cluster.nodes()[r.name]["type"] == "remote"
        assert cluster.run_on_remote("remote1", "hostname").stdout.strip() == "remote1"
        assert r1.address != r2.address
        MEASURED["remote1: add -> Online"] = cluster.timings["remote_online:remote1"]
        MEASURED["remote2: add (pcs) -> Online"] = cluster.timings["remote_online:remote2"]
        assert not cluster.fence_records()
        _remember(cluster)

    def test_kill_remoted_gets_fenced(self, cluster: Cluster):
        time.sleep(1)  # let the monitors settle
        at = cluster.kill_remote("remote1", signal.SIGKILL)
        rec = cluster.wait_fence_request("remote1", after=at, timeout=30)
        MEASURED["kill -9 remoted -> fence request"] = rec.at - at
        assert rec.action == "reboot" and rec.result == "ok"
        cluster.wait_node("remote1", online=False, timeout=30)
        history = cluster.fence_history("remote1")
        assert "reboot of remote1 successful" in history, history
        assert cluster.is_online("remote2")
        assert [r.target for r in cluster.fence_records()] == ["remote1"]

    def test_start_remote_rejoins(self, cluster: Cluster):
        killed = cluster.kill_namespace_processes("remote1")  # powered off: holder too
        assert killed
        assert not netns.namespace_pids(cluster.remotes["remote1"].netns)
        took = cluster.start_remote("remote1", wait=True, timeout=60)
        MEASURED["power-on (start_remote) -> Online"] = took
        assert cluster.is_online("remote1")
        _remember(cluster)

    def test_cut_link_gets_fenced(self, cluster: Cluster):
        r2 = cluster.remotes["remote2"]
        at = cluster.cut_link("remote2")
        rec = cluster.wait_fence_request("remote2", after=at, timeout=60)
        MEASURED[
            f"cut link -> fence request (monitor {r2.monitor_interval}/{r2.monitor_timeout})"
        ] = rec.at - at
        cluster.wait_node("remote2", online=False, timeout=30)
        assert r2.pid  # "fenced", but nothing powered it off: it still runs
        cluster.kill_namespace_processes("remote2")
        cluster.restore_link("remote2")
        cluster.start_remote("remote2", wait=True, timeout=60)
        assert cluster.is_online("remote1") and cluster.is_online("remote2")
        _remember(cluster)

    def test_failing_fence_is_retried(self, cluster: Cluster, tmp_path):
        """The test device's fail_file: while it exists, fencing fails (and Pacemaker
        retries); once it is gone, the node is fenced."""
        fail = tmp_path / "fail"
        fail.touch()
        cluster.crm_resource(
            "--resource",
            "st-testbed",
            "--set-parameter",
            "fail_file",
            "--parameter-value",
            str(fail),
        )
        time.sleep(1)
        at = cluster.kill_remote("remote1")

        def results() -> list[str]:
            return [r.result for r in cluster.fence_records("remote1") if r.at >= at]

        cluster.wait_for(lambda: results()[:1] == ["failed"], 30, "a failed fence request")
        assert cluster.nodes()["remote1"]["unclean"] == "true"
        fail.unlink()
        took = cluster.wait_for(lambda: "ok" in results(), 60, "a successful retry")
        MEASURED["failed fence: fail_file removed -> retried OK"] = took
        cluster.wait_node("remote1", online=False, timeout=30)
        cluster.crm_resource("--resource", "st-testbed", "--delete-parameter", "fail_file")
        cluster.start_remote("remote1", wait=True, timeout=60)


class TestTwoControllers:
    def test_both_online(self, cluster2: Cluster):
        nodes = cluster2.nodes()
        assert nodes["c1"]["online"] == nodes["c2"]["online"] == "true"
        assert cluster2.nodes(node="c2")["c1"]["online"] == "true"
        MEASURED["two controllers: start -> Online"] = cluster2.timings["cluster_start"]
        # Each controller has its own /etc/corosync, hostname and network namespace.
        assert cluster2.run("hostname", node="c2").stdout.strip() == "c2"
        assert "192.168.124.12" in cluster2.run("ip -o addr", node="c2").stdout
        _remember(cluster2)

    def test_remote_and_controller_failover(self, cluster2: Cluster):
        cluster2.add_test_stonith()
        cluster2.add_remote("remote1")
        MEASURED["two controllers: remote add -> Online"] = cluster2.timings[
            "remote_online:remote1"
        ]
        _remember(cluster2)
        mon = cluster2.crm_mon()
        where = mon.find("resources/resource[@id='remote1']/node").get("name")
        victim = where  # kill the controller that holds the remote connection
        survivor = "c2" if victim == "c1" else "c1"
        at = cluster2.kill_controller(victim)
        rec = cluster2.wait_fence_request(victim, after=at, timeout=30)
        MEASURED["kill controller -> fence request"] = rec.at - at
        cluster2.wait_node(victim, online=False, timeout=30, node=survivor)
        cluster2.wait_for(
            lambda: cluster2.is_online("remote1", node=survivor),
            60,
            "remote1 online through the survivor",
        )
        MEASURED["kill controller -> remote Online via survivor"] = time.time() - at
        mon = cluster2.crm_mon(node=survivor)
        assert mon.find("summary/current_dc").get("name") == survivor
        assert cluster2.resources(mon=mon)["remote1"]["nodes"] == [survivor]
        assert not any(r.target == "remote1" for r in cluster2.fence_records())
        # Power the controller on again: it rejoins.
        MEASURED["controller power-on -> Online"] = cluster2.start_controller(victim)
        cluster2.wait_for(
            lambda: cluster2.nodes(node=survivor).get(victim, {}).get("online") == "true",
            30,
            f"{victim} online in {survivor}'s view",
        )
        assert cluster2.is_online("remote1")


CRASHING_RUN = """
import json, os, signal, sys
from testbed.cluster import Cluster
c = Cluster()
c.start()
c.add_test_stonith()
c.add_remote("remote1")
pids = [p.pid for h in list(c.controllers.values()) + [c.remotes["remote1"].host]
        for p in [h.holder, *h.procs.values()]]
print(json.dumps(pids), flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # no teardown: as when pytest itself is killed
"""


def test_crashed_run_is_cleaned_up():
    """A run that died without its teardown is removed by the next start (which calls
    cleanup_leftovers first)."""
    missing = bed.missing_requirements()
    need(not missing, "cluster test bed: " + ", ".join(missing))
    res = subprocess.run(
        [sys.executable, "-c", CRASHING_RUN],
        cwd=bed.ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == -signal.SIGKILL, res.stderr
    pids = json.loads(res.stdout.splitlines()[-1])
    left = [p for p in bed._bed_pids()]
    try:
        assert set(pids) <= set(left)  # the daemons outlived their parent
        assert len(left) >= len(pids) + 6  # pacemakerd's children too
        assert "nha-remote1" in netns.list_namespaces()
        assert bed.TEST_AGENT.exists() and bed.STATE.exists()
    finally:
        removed = bed.cleanup_leftovers()
    assert any(r.startswith("netns nha-remote1") for r in removed)
    deadline = time.monotonic() + 5
    while any(bed._start_time(p) for p in left) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(bed._start_time(p) for p in left)
    assert not bed._bed_pids()
    assert not netns.list_namespaces() and not netns.list_links()
    assert not bed.TEST_AGENT.exists() and not bed.STATE.exists()
    SEEN_PIDS.update((p, None) for p in left)


def test_teardown_leaves_nothing():
    """Runs after the beds above were torn down (class scope): nothing of them is left."""
    if not SEEN_PIDS:
        pytest.skip("no bed ran")
    assert not [p for p, s in SEEN_PIDS if bed._alive(p, s)]
    assert not netns.list_namespaces()
    assert not netns.list_links()
    assert not bed.TEST_AGENT.exists()
    assert not bed.STATE.exists()

    def daemons() -> list[str]:
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and bed._start_time(int(entry)):  # zombies excluded
                try:
                    comm = Path(f"/proc/{entry}/comm").read_text().strip()
                except OSError:
                    continue
                if comm.startswith(("corosync", "pacemaker")):
                    found.append(f"{comm} (pid {entry})")
        return found

    deadline = time.monotonic() + 5
    while daemons() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not daemons()
    assert _fingerprint() == BEFORE
    for c in BEDS.values():
        if "cluster_stop" in c.timings:
            MEASURED[f"{c.n_controllers} controller(s): stop"] = c.timings["cluster_stop"]
