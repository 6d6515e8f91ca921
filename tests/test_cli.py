"""The nova-ha command against the Nova simulator (and the real Nova box), with the records
in an offline CIB: status, history, reset, evacuate, and where the parameters come from."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
import time
from xml.sax.saxutils import quoteattr

from lxml import etree

from nova_ha import cli
from nova_ha.cli import sources
from nova_ha.cli.context import load_context, read_config
from nova_ha.cli.output import ProgressBar
from nova_ha.cli.status import build_rows, collect_status, render_status
from nova_ha.lib import guard, params, state
from nova_ha.lib.lifecycle import Event, HostState
from testbed.observe import Observer
from tests.helpers import PYTHON, ROOT, run_fence

OTHER_PROJECT = "0123456789abcdef0123456789abcdef"


# ---- helpers --------------------------------------------------------------------------------


def _config(tmp_path, values: dict, name: str = "nova-ha.conf") -> str:
    path = tmp_path / name
    path.write_text(
        "# written by the test\n\n" + "".join(f"{k} = {v}\n" for k, v in values.items())
    )
    path.chmod(0o600)
    return str(path)


def _empty_config(tmp_path) -> str:
    return _config(tmp_path, {}, "empty.conf")


def _nova_ha(
    bed_or_env, *args: str, timeout: float = 120, stdout: int | None = None
) -> subprocess.CompletedProcess:
    env = bed_or_env if isinstance(bed_or_env, dict) else bed_or_env.env()
    env = dict(env, PYTHONPATH=ROOT)
    return subprocess.run(
        [PYTHON, "-m", "nova_ha.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd="/",
    )


def _add_fence_devices(bed, **os_overrides) -> None:
    """One fence_nova_evacuate device per host, as `pcs stonith create` makes them: the
    OpenStack credentials and the host's BMC, in the CIB."""
    for host, bmc in bed.bmcs.items():
        values = dict(
            bed.os_params(**os_overrides),
            pcmk_host_list=host,
            ip="127.0.0.1",
            ipport=bmc.port,
            username=bmc.username,
            password=bmc.password,
            evacuate="record",
            max_parallel=4,
        )
        pairs = "".join(
            f'<nvpair id="fence-{host}-{k}" name="{k}" value={quoteattr(str(v))}/>'
            for k, v in values.items()
        )
        xml = (
            f'<primitive id="fence-{host}" class="stonith" type="fence_nova_evacuate">'
            f'<instance_attributes id="fence-{host}-ia">{pairs}</instance_attributes>'
            f"</primitive>"
        )
        done = subprocess.run(
            ["cibadmin", "--create", "--scope", "resources", "--xml-text", xml],
            env=bed.env(),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr


def _store(bed) -> state.CibStateStore:
    return state.CibStateStore(bed.cib)


def _requests(bed, suffix: str, method: str = "GET") -> list[dict]:
    return [
        r
        for r in bed.cloud.request_log()
        if r["method"] == method and r["path"].rstrip("/").endswith(suffix)
    ]


def _rows(output: str) -> dict[str, dict]:
    return {row["node"]: row for row in json.loads(output)["hosts"]}


# ---- status ---------------------------------------------------------------------------------


def test_status_asks_each_source_once_with_credentials_from_the_cib(sim_bed, tmp_path):
    bed = sim_bed
    ids = bed.cloud.create_servers("host1", 5)
    bed.cloud.create_servers("host2", 3, project_id=OTHER_PROJECT)  # another tenant's
    _add_fence_devices(bed)
    done = bed.fence(evacuate="all")
    assert done.returncode == 0, done.stderr
    bed.cloud.clear_log()
    # No credential on the command line or in a config file: the fence devices' are used.
    done = _nova_ha(bed, "status", "--json", "--config", _empty_config(tmp_path))
    assert done.returncode == 0, done.stderr
    rows = _rows(done.stdout)
    assert sorted(rows) == ["host1", "host2", "host3"]
    host1 = rows["host1"]
    assert host1["nova"]["forced_down"] is True and host1["nova"]["status"] == "disabled"
    assert host1["nova"]["state"] == "down"
    assert host1["nova"]["disabled_reason"].startswith("nova-ha: fenced at ")
    assert host1["record"]["state"] == "evacuated" and host1["record"]["evacuated"] == 5
    assert host1["record"]["lease_owner"] is None and host1["servers"]["total"] == 0
    assert host1["power"] == "off" and rows["host2"]["power"] == "on"
    assert rows["host2"]["record"]["state"] == "ok"
    assert sum(r["servers"]["total"] for r in rows.values()) == 8  # all tenants
    moved = {Observer(bed.cloud).server(i)["host"] for i in ids}
    assert moved <= {"host2", "host3"}
    assert host1["pacemaker"] == "unknown"  # an offline CIB: no live cluster to ask
    assert any("Pacemaker: unknown" in p for p in json.loads(done.stdout)["problems"])
    # one call per kind of data, none per host
    assert len(_requests(bed, "/os-services")) == 1
    assert len(_requests(bed, "/servers/detail")) == 1
    assert not [r for r in bed.cloud.request_log() if "host=" in (r.get("query") or "")]
    assert not [
        r for r in bed.cloud.request_log() if r["method"] != "GET" and "/identity/" not in r["path"]
    ]


def test_status_reads_the_records_with_one_cib_query(sim_bed, tmp_path, monkeypatch):
    bed = sim_bed
    monkeypatch.setenv("CIB_file", bed.cib)
    store = _store(bed)
    for host in ("host1", "host2"):
        store.mark(host, HostState.FENCED, Event.FENCED, "test", mode="all")
    args = cli.parser().parse_args(
        ["status", "--no-cib", "--config", _config(tmp_path, bed.os_params())]
    )
    ctx = load_context(args)
    data = collect_status(ctx, with_power=False)
    assert ctx.store().commands_run == 1
    rows = {r["node"]: r for r in data["hosts"]}
    assert rows["host1"]["record"]["state"] == "fenced" and rows["host3"]["record"]["state"] == "ok"
    # two of three hosts fenced at once: the default guard (25%, at least 1) holds them
    assert rows["host1"]["held"] and rows["host2"]["held"] and not rows["host3"]["held"]
    assert rows["host1"]["guard"]["wave"] == ["host1", "host2"]
    text = render_status(data, colour=False)
    assert "fenced HELD" in text and "nova-ha evacuate HOST" in text


def test_status_pages_through_every_server(sim_bed, tmp_path):
    from nova_ha.openstack.compute import Nova
    from nova_ha.openstack.transport import Deadline

    bed = sim_bed
    bed.cloud.create_servers("host2", 700)
    bed.cloud.create_servers("host3", 450, project_id=OTHER_PROJECT)
    parsed = params.parse(bed.os_params(), params.CLI)
    servers = Nova.from_params(parsed).all_servers(Deadline(60))
    assert len(servers) == 1150 and len({s.id for s in servers}) == 1150
    assert len(_requests(bed, "/servers/detail")) == 2  # 1000 + 150, following Nova's link


def test_status_table_is_plain_unless_a_terminal(sim_bed, tmp_path):
    bed = sim_bed
    bed.cloud.create_servers("host1", 2)
    bed.cloud.create_servers("host2", 1, status="ERROR")
    config = _config(tmp_path, bed.os_params())
    assert run_fence(bed.fence_params(evacuate="none"), env=bed.env()).returncode == 0
    plain = _nova_ha(bed, "status", "--config", config)
    assert plain.returncode == 0, plain.stderr
    assert "\x1b[" not in plain.stdout
    lines = plain.stdout.splitlines()
    assert lines[0].split() == [
        "NODE",
        "PACEMAKER",
        "NOVA",
        "SERVERS",
        "NOVA-HA",
        "SINCE",
        "LEASE",
        "FOUND/EVAC/FAIL",
        "RESTARTED",
    ]
    host1 = next(line for line in lines if line.startswith("host1"))
    assert "down, forced down, disabled by nova-ha" in host1 and " evacuated " in host1
    assert "1 (1 ERROR)" in next(line for line in lines if line.startswith("host2"))
    coloured = _nova_ha(bed, "status", "--config", config, "--color=always")
    assert "\x1b[31m" in coloured.stdout and "\x1b[32m" in coloured.stdout
    # on a terminal: colours without asking
    main, secondary = pty.openpty()
    env = dict(bed.env(), PYTHONPATH=ROOT)
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(
        [PYTHON, "-m", "nova_ha.cli", "status", "--config", config],
        stdout=secondary,
        stderr=subprocess.PIPE,
        env=env,
        cwd="/",
    )
    os.close(secondary)
    output = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    os.close(main)
    assert proc.wait(timeout=60) == 0
    assert b"\x1b[31m" in output


def test_status_when_nova_and_the_cluster_cannot_be_asked(tmp_path, cib_file):
    store = state.CibStateStore(cib_file)
    store.mark("host1", HostState.FENCED, Event.FENCED, "test", mode="all")
    config = _config(
        tmp_path,
        {
            "os_auth_url": "http://127.0.0.1:9/v3",
            "os_username": "a",
            "os_password": "pw-never-shown",
            "os_project_name": "p",
            "os_api_timeout": "1",
        },
    )
    env = dict(os.environ, CIB_file=cib_file)
    done = _nova_ha(env, "status", "--config", config, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "note: Nova:" in done.stdout and "note: Pacemaker: unknown" in done.stdout
    host1 = next(line for line in done.stdout.splitlines() if line.startswith("host1"))
    assert host1.split()[:5] == ["host1", "unknown", "-", "?", "fenced"]
    assert "pw-never-shown" not in done.stdout + done.stderr
    # no cluster record either: still an answer, not a traceback
    env["CIB_file"] = str(tmp_path / "missing.xml")
    done = _nova_ha(env, "status", "--json", "--config", config, timeout=60)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["hosts"] == [] and any(p.startswith("cluster records:") for p in data["problems"])


_CRM_MON = b"""<pacemaker-result api-version="2.25" request="crm_mon --output-as=xml -1">
  <summary><stack type="corosync"/><current_dc present="true" name="c1"/></summary>
  <nodes>
    <node name="c1" id="1" online="true" standby="false" maintenance="false" unclean="false"
          type="member"/>
    <node name="compute1" id="compute1" online="false" standby="false" maintenance="false"
          unclean="false" type="remote"/>
    <node name="compute2" id="compute2" online="false" standby="false" maintenance="false"
          unclean="true" type="remote"/>
    <node name="compute3" id="compute3" online="true" standby="true" maintenance="false"
          unclean="false" type="remote"/>
    <node name="compute4" id="compute4" online="false" standby="false" maintenance="false"
          unclean="false" type="remote"/>
  </nodes>
  <fence_history status="0">
    <fence_event action="off" target="compute1" client="pacemaker-controld.1" origin="c1"
                 status="success" delegate="c1" completed="2026-11-22 14:03:00Z"/>
    <fence_event action="reboot" target="compute1" client="stonith_admin.2" origin="c1"
                 status="failed" completed="2026-11-22 13:00:00Z"/>
    <fence_event action="off" target="compute4" client="stonith_admin.2" origin="c1"
                 status="failed"/>
  </fence_history>
  <status code="0" message="OK"/>
</pacemaker-result>"""


def test_pacemaker_states_from_crm_mon():
    nodes, why = sources.parse_crm_mon(_CRM_MON)
    assert why == ""
    assert {n: v["state"] for n, v in nodes.items()} == {
        "c1": "online",
        "compute1": "fenced",
        "compute2": "unclean",
        "compute3": "standby",
        "compute4": "offline",
    }
    assert nodes["compute1"]["last_fenced"] == "2026-11-22 14:03:00Z"
    offline_cib = subprocess.run(
        ["crm_mon", "--output-as=xml", "-1"],
        capture_output=True,
        env=dict(os.environ, CIB_file="/nonexistent.xml"),
    )
    assert sources.parse_crm_mon(offline_cib.stdout)[0] is None
    stopped = b"""<pacemaker-result api-version="2.25" request="crm_mon --output-as=xml -1">
  <status code="102" message="Not connected">
    <errors>
      <error>error: Could not connect to launcher: Connection refused</error>
      <error>crm_mon: Connection to cluster failed: Connection refused</error>
    </errors>
  </status>
</pacemaker-result>"""  # crm_mon 2.1.5 on a node whose cluster is stopped
    assert sources.parse_crm_mon(stopped, 102) == (
        None,
        "crm_mon: error: Could not connect to launcher: Connection refused",
    )
    assert sources.parse_crm_mon(b"not xml", 102, "crm_mon: connection refused") == (
        None,
        "crm_mon: crm_mon: connection refused",
    )


def test_rows_join_pacemaker_nova_and_records_by_node_name():
    from nova_ha.openstack.views import Server, Service

    store = state.MemoryStateStore()
    store.mark(
        "compute1", HostState.FENCED, Event.FENCED, "x", mode="all", service_host="compute1.dc"
    )
    services = [
        Service("1", "compute1.dc", "disabled", "down", True, "nova-ha: fenced"),
        Service("2", "compute2.dc", "enabled", "up", False, None),
    ]
    servers = [
        Server("a", host="compute2.dc", status="ACTIVE"),
        Server("b", host=None, status="ERROR"),
    ]
    nodes, _ = sources.parse_crm_mon(_CRM_MON)
    parsed = params.parse({"domain": "dc"}, params.CLI)
    rows = {
        r["node"]: r
        for r in build_rows(store.all(), nodes, services, servers, {"compute1": "off"}, parsed)
    }
    assert sorted(rows) == ["compute1", "compute2", "compute3", "compute4"]  # not c1
    assert rows["compute1"]["nova_host"] == "compute1.dc" and rows["compute1"]["power"] == "off"
    assert rows["compute2"]["servers"] == {"total": 1, "by_status": {"ACTIVE": 1}}
    assert rows["compute2"]["pacemaker"] == "unclean" and rows["compute2"]["record"] is None
    text = render_status({"hosts": list(rows.values()), "problems": []}, colour=False)
    assert text.splitlines()[1].startswith("compute1 (compute1.dc)  fenced     off  ")


# ---- history --------------------------------------------------------------------------------


def test_history_newest_first(sim_bed, tmp_path):
    bed = sim_bed
    store = _store(bed)
    t = 1_800_000_000
    store.mark("host1", HostState.FENCED, Event.FENCED, "power off", now=t)
    store.mark("host2", HostState.FENCED, Event.FENCED, "power off", now=t + 1)
    store.mark("host1", HostState.EVACUATING, Event.EVACUATION_STARTED, "by x", now=t + 2)
    store.mark(
        "host1", HostState.EVACUATED, Event.EVACUATION_FINISHED, now=t + 3, found=2, evacuated=2
    )
    store.mark("host1", HostState.OK, Event.REJOINED, "service up", now=t + 4)
    config = _empty_config(tmp_path)
    done = _nova_ha(bed, "history", "--config", config, "--no-cib")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["TIME", "NODE", "EVENT", "DETAIL"]
    assert [line.split()[2] for line in lines[1:]] == [
        "rejoined",
        "evacuation_finished",
        "evacuation_started",
        "fenced",
        "fenced",
    ]
    assert lines[4].split()[1] == "host2"
    assert "found=2 evacuated=2 failed=0" in lines[2]
    only = json.loads(_nova_ha(bed, "history", "host2", "--json", "--config", config).stdout)
    assert only == [
        {"time": "2027-01-15T08:00:01Z", "node": "host2", "event": "fenced", "detail": "power off"}
    ]
    assert (
        len(json.loads(_nova_ha(bed, "history", "-n", "2", "--json", "--config", config).stdout))
        == 2
    )
    assert (
        "no recorded event for host3"
        in _nova_ha(bed, "history", "host3", "--config", config).stdout
    )


# ---- reset ----------------------------------------------------------------------------------


def test_reset_refuses_a_live_lease_unless_forced_and_says_what_changed(sim_bed, tmp_path, webhook):
    bed = sim_bed
    store = _store(bed)
    store.mark("host1", HostState.FENCED, Event.FENCED, "power off", mode="all")
    assert store.acquire_lease("host1", "NovaEvacuate@other-controller", ttl=300)
    store.mark(
        "host1",
        HostState.EVACUATING,
        Event.EVACUATION_STARTED,
        "by other",
        owner="NovaEvacuate@other-controller",
    )
    store.mark(
        "host1",
        HostState.EVACUATING,
        found=4,
        evacuated=1,
        failed=1,
        owner="NovaEvacuate@other-controller",
    )
    config = _config(tmp_path, {"notify_url": webhook.url})
    refused = _nova_ha(bed, "reset", "host1", "--config", config)
    assert refused.returncode == 1
    assert "refusing: NovaEvacuate@other-controller holds the lease" in refused.stderr
    assert "--force" in refused.stderr
    record = store.get("host1")
    assert record.state == "evacuating" and record.lease_owner == "NovaEvacuate@other-controller"
    done = _nova_ha(bed, "reset", "host1", "--force", "--note", "disk replaced", "--config", config)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "host1: state evacuating -> ok" in out
    assert "counts found=4 evacuated=1 failed=1 cleared" in out
    assert "mode all cleared" in out
    assert "lease of NovaEvacuate@other-controller (live) released" in out
    assert "history kept (2 events), 'reset' event added" in out
    record = store.get("host1")
    assert record.state == "ok" and record.lease_owner is None and record.found == 0
    assert record.history[-1].name == "reset"
    assert record.history[-1].detail.startswith("disk replaced by ")
    assert record.history[-1].detail.endswith("(forced)")
    event = webhook.wait(1)[0]
    assert event["event"] == "reset" and event["node"] == "host1"
    assert event["previous_state"] == "evacuating" and event["source"] == params.CLI
    again = _nova_ha(bed, "reset", "host1", "--config", config)
    assert again.returncode == 0 and "nothing to reset" in again.stdout


def test_reset_needs_no_force_once_the_lease_expired(sim_bed, tmp_path):
    bed = sim_bed
    store = _store(bed)
    store.mark("host2", HostState.FENCED, Event.FENCED, "power off", mode="all")
    store.mark("host2", HostState.FAILED, Event.EVACUATION_FAILED, "no valid host", failed=2)
    assert store.acquire_lease("host2", "fence_nova_evacuate@c1:1", ttl=1, now=time.time() - 3600)
    done = _nova_ha(bed, "reset", "host2", "--config", _empty_config(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "state failed -> ok" in done.stdout and "(expired) released" in done.stdout
    unknown = _nova_ha(bed, "reset", "nosuchhost", "--config", _empty_config(tmp_path))
    assert unknown.returncode == 1
    assert (
        "nosuchhost is not a compute node of this cluster (known: host1, host2, host3)"
        in unknown.stderr
    )
    assert _nova_ha(bed, "reset", "HOST2", "--config", _empty_config(tmp_path)).stdout.startswith(
        "host2: nothing to reset"
    )


# ---- evacuate -------------------------------------------------------------------------------


def test_evacuate_refuses_hosts_that_are_not_fenced(sim_bed, tmp_path):
    bed = sim_bed
    bed.cloud.create_servers("host1", 2)
    config = _config(tmp_path, bed.os_params())
    store = _store(bed)
    refused = _nova_ha(bed, "evacuate", "host1", "--config", config)
    assert refused.returncode == 1
    assert "refusing: host1 is recorded 'ok'" in refused.stderr
    assert "power-off is not confirmed" in refused.stderr
    store.mark("host2", HostState.FENCED, Event.FENCED, "x", mode="all")
    store.mark("host2", HostState.EVACUATED, Event.EVACUATION_FINISHED, found=0)
    refused = _nova_ha(bed, "evacuate", "host2", "--config", config)
    assert refused.returncode == 1 and "already evacuated" in refused.stderr
    store.mark("host3", HostState.FENCED, Event.FENCED, "x", mode="all")
    assert store.acquire_lease("host3", "NovaEvacuate@other-controller", ttl=300)
    store.mark(
        "host3",
        HostState.EVACUATING,
        Event.EVACUATION_STARTED,
        "by other",
        owner="NovaEvacuate@other-controller",
    )
    refused = _nova_ha(bed, "evacuate", "host3", "--config", config)
    assert refused.returncode == 1
    assert "being evacuated by NovaEvacuate@other-controller" in refused.stderr
    unknown = _nova_ha(bed, "evacuate", "host9", "--config", config)
    assert unknown.returncode == 1 and "host9 is not a compute node" in unknown.stderr
    assert not [r for r in bed.cloud.request_log() if "/compute/" in r["path"]]  # Nova untouched


def test_evacuate_by_hand_after_record_only_fencing(sim_bed, tmp_path):
    bed = sim_bed
    ids = bed.cloud.create_servers("host1", 6)
    assert run_fence(bed.fence_params(evacuate="record"), env=bed.env()).returncode == 0
    assert not bed.requests(action="evacuate")
    # The fence handed the host over to NovaEvacuate, which is not running here.
    refused = _nova_ha(bed, "evacuate", "host1", "--config", _config(tmp_path, bed.os_params()))
    assert refused.returncode == 1 and "--take-over" in refused.stderr, refused.stderr
    done = _nova_ha(
        bed,
        "evacuate",
        "host1",
        "--take-over",
        "--config",
        _config(tmp_path, dict(bed.os_params(), max_parallel=3)),
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "host1: recorded 'fenced'; 6 servers on host1; evacuating (all, at most 3" in out
    assert sum(1 for line in out.splitlines() if line.strip().startswith("evacuated ")) == 6
    assert "6 evacuated, 0 failed" in out and "\x1b[" not in out
    assert min(r["t"] for r in bed.requests(action="evacuate")) >= bed.off_time("host1")
    observer = Observer(bed.cloud)
    for server_id in ids:
        server = observer.server(server_id)
        assert server["host"] != "host1" and server["status"] == "ACTIVE", server
    record = _store(bed).get("host1")
    assert record.state == "evacuated" and record.evacuated == 6
    assert record.lease_owner is None
    assert record.history[-1].name == "evacuation_finished"
    assert f"by {params.CLI}@" in record.history[-1].detail


def test_evacuate_by_hand_while_the_guard_holds_the_host(sim_bed, tmp_path, webhook):
    bed = sim_bed
    ids = bed.cloud.create_servers("host1", 3)
    assert run_fence(bed.fence_params(evacuate="record"), env=bed.env()).returncode == 0
    store = _store(bed)
    for host in ("host2", "host3"):  # the same wave (their computes are fine in the sim)
        store.mark(host, HostState.FENCED, Event.FENCED, "power off", mode="record")
    parsed = params.parse({"max_fenced_hosts": "2"}, params.CLI)
    assert guard.check(store.all(), parsed.settings.evacuation, "host1").blocked
    config = _config(tmp_path, dict(bed.os_params(), max_fenced_hosts=2, notify_url=webhook.url))
    done = _nova_ha(bed, "evacuate", "host1", "--take-over", "--config", config)
    assert done.returncode == 0, done.stderr
    assert "note: the mass-failure guard holds host1" in done.stdout
    assert all(Observer(bed.cloud).server(i)["host"] != "host1" for i in ids)
    events = {e["event"]: e for e in webhook.wait(2)}  # each delivered by its own child
    assert set(events) == {"evacuation_started", "evacuation_finished"}
    event = events["evacuation_finished"]
    assert event["evacuated"] == 3
    assert event["node"] == "host1" and {s["id"] for s in event["servers"]} == set(ids)


def test_progress_bar_on_a_terminal_and_lines_otherwise():
    import io

    from nova_ha.lib.evacuation import Outcome
    from nova_ha.lib.server_lifecycle import ServerState

    class Tty(io.StringIO):
        def isatty(self):
            return True

    stream = Tty()
    bar = ProgressBar(3, stream=stream)
    a, b, c = Outcome("a", "vm-a"), Outcome("b", "vm-b"), Outcome("c", "vm-c")
    for outcome in (a, b, c):
        bar("accepted", outcome)
    bar("finished", Outcome("a", "vm-a", ServerState.RUNNING))
    bar("finished", Outcome("b", "vm-b", ServerState.FAILED, detail="no valid host"))
    bar.close()
    text = stream.getvalue()
    assert text.startswith("\r  [") and text.endswith("\n")
    assert "2/3 done, 1 evacuated, 1 failed, 1 in flight" in text
    plain = io.StringIO()
    bar = ProgressBar(3, stream=plain, tty=False)
    bar("accepted", c)
    bar("finished", Outcome("c", "vm-c", ServerState.RUNNING, detail="ACTIVE on host2"))
    bar.close()
    assert plain.getvalue() == "  evacuated  vm-c (c) - ACTIVE on host2\n"


# ---- where the parameters come from ---------------------------------------------------------


def test_config_file_syntax_and_warnings(tmp_path, capsys, monkeypatch, cib_file):
    monkeypatch.setenv("CIB_file", cib_file)
    path = tmp_path / "conf"
    path.write_text(
        "# comment\n; other comment\n\nos_cloud = 'overcloud'\n"
        'max_parallel=8\nos_password = "p w"\nbogus_name = 1\n'
    )
    path.chmod(0o644)
    assert read_config(str(path)) == [
        ("os_cloud", "overcloud"),
        ("max_parallel", "8"),
        ("os_password", "p w"),
        ("bogus_name", "1"),
    ]
    args = cli.parser().parse_args(["history", "--config", str(path), "--no-cib"])
    ctx = load_context(args)
    assert ctx.parsed["max_parallel"] == 8 and ctx.parsed["os_password"] == "p w"
    assert any("readable by others" in w for w in ctx.warnings)
    assert any("ignoring unknown parameter 'bogus_name'" in w for w in ctx.warnings)
    path.write_text("os_cloud overcloud\n")
    assert cli.main(["history", "--config", str(path), "--no-cib"]) == 2
    assert "line 1: expected 'name = value'" in capsys.readouterr().err
    path.write_text("max_parallel = many\nmax_fenced_hosts = lots\n")
    assert cli.main(["history", "--config", str(path), "--no-cib"]) == 2
    err = capsys.readouterr().err
    assert "parameter 'max_parallel'" in err and "parameter 'max_fenced_hosts'" in err
    assert cli.main(["history", "--config", str(tmp_path / "none"), "--no-cib"]) == 2


def test_os_cloud_from_clouds_yaml(sim_bed, tmp_path):
    bed = sim_bed
    clouds = bed.clouds_yaml(tmp_path / "clouds.yaml", "testcloud")
    env = dict(bed.env(), OS_CLIENT_CONFIG_FILE=clouds)
    done = _nova_ha(
        env, "status", "--json", "--os-cloud", "testcloud", "--config", _empty_config(tmp_path)
    )
    assert done.returncode == 0, done.stderr
    assert not [p for p in json.loads(done.stdout)["problems"] if p.startswith("Nova")]
    assert _rows(done.stdout)["host1"]["nova"]["state"] == "up"


def test_config_file_wins_over_the_cib_devices(sim_bed, tmp_path):
    bed = sim_bed
    _add_fence_devices(bed, os_password="wrong-password")
    config = _config(tmp_path, {"os_password": bed.cloud.password})
    done = _nova_ha(bed, "status", "--json", "--no-power", "--config", config)
    assert done.returncode == 0, done.stderr
    assert not [p for p in json.loads(done.stdout)["problems"] if p.startswith("Nova")]
    assert all(r["power"] is None for r in _rows(done.stdout).values())  # --no-power
    wrong = _nova_ha(bed, "status", "--json", "--config", _empty_config(tmp_path))
    problems = json.loads(wrong.stdout)["problems"]
    assert any(p.startswith("Nova:") and "401" in p for p in problems)
    assert "wrong-password" not in wrong.stdout + wrong.stderr


def test_device_parameters_and_cibsecret(tmp_path, monkeypatch):
    resources = etree.fromstring(b"""<resources>
      <primitive id="fence-c1" class="stonith" type="fence_nova_evacuate">
        <instance_attributes id="a">
          <nvpair id="a1" name="pcmk_host_list" value="c1"/>
          <nvpair id="a2" name="ip" value="10.0.0.1"/>
          <nvpair id="a3" name="os_password" value="lrm://"/>
          <nvpair id="a4" name="auth_url" value="http://keystone/v3"/>
          <nvpair id="a5" name="evacuate" value="record"/>
        </instance_attributes>
      </primitive>
      <group id="g"><primitive id="nova-evacuate" class="ocf" provider="nova-ha"
                                type="NovaEvacuate">
        <instance_attributes id="b"><nvpair id="b1" name="evacuate" value="tagged"/>
        </instance_attributes></primitive></group>
      <primitive id="fence-ipmi-c2" class="stonith" type="fence_ipmilan">
        <instance_attributes id="c"><nvpair id="c1" name="pcmk_host_list" value="c2"/>
          <nvpair id="c2" name="ipaddr" value="10.0.0.2"/></instance_attributes>
      </primitive>
      <primitive id="fence-many" class="stonith" type="fence_ipmilan">
        <instance_attributes id="d"><nvpair id="d1" name="pcmk_host_list" value="c3 c4"/>
          <nvpair id="d2" name="ip" value="10.0.0.3"/></instance_attributes>
      </primitive>
    </resources>""")
    secrets = tmp_path / "secrets"
    (secrets / "fence-c1").mkdir(parents=True)
    (secrets / "fence-c1" / "os_password").write_text("from-cibsecret\n")
    monkeypatch.setattr(sources, "CIBSECRET_DIR", str(secrets))
    assert dict(sources.device_params(resources)) == {
        "evacuate": "tagged",
        "os_password": "from-cibsecret",
        "os_auth_url": "http://keystone/v3",
    }
    devices = sources.bmc_devices(resources)
    assert sorted(devices) == ["c1", "c2"] and devices["c2"]["ipaddr"] == "10.0.0.2"


# ---- the real Nova --------------------------------------------------------------------------


def test_status_against_the_real_nova(box_bed, tmp_path):
    bed = box_bed
    bed.cloud.clear_request_log()
    done = _nova_ha(bed, "status", "--json", "--config", _config(tmp_path, bed.os_params()))
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert not [p for p in data["problems"] if p.startswith("Nova")], data["problems"]
    log = bed.cloud.request_log()  # one call per kind of data
    assert sum(1 for r in log if r["path"].endswith("/os-services")) == 1
    assert sum(1 for r in log if r["path"].endswith("/servers/detail")) == 1
    rows = {r["node"]: r for r in data["hosts"]}
    assert {"host1", "host2", "host3"} <= set(rows)
    listed = Observer(bed.cloud).servers()
    for host in ("host1", "host2", "host3"):
        assert rows[host]["nova"]["state"] == "up"
        assert rows[host]["servers"]["total"] == sum(1 for s in listed if s["host"] == host)


def test_notify_module_is_light():
    """Agents import notify on their hot path: no HTTP library until a webhook is sent."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import nova_ha.lib.notify, nova_ha.lib.guard"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    for heavy in ("urllib.request", "keystoneauth1", "lxml", "pyghmi"):
        assert f" {heavy}\n" not in done.stderr, heavy
    assert list(Event)[:3] == ["fenced", "evacuation_started", "evacuation_finished"]


def test_evacuate_by_hand_on_the_real_nova(box_bed, tmp_path):
    bed = box_bed
    ids = bed.cloud.create_servers("host1", 3)
    try:
        done = run_fence(bed.fence_params(evacuate="record"), env=bed.env())
        assert done.returncode == 0, done.stderr
        done = _nova_ha(
            bed,
            "evacuate",
            "host1",
            "--take-over",
            "--timeout",
            "120",
            "--config",
            _config(tmp_path, bed.os_params()),
            timeout=180,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        # The box is shared by the session: servers another test left on host1 move too.
        found = int(re.search(r"(\d+) servers found", done.stdout).group(1))
        assert found >= 3 and f"{found} evacuated, 0 failed" in done.stdout, done.stdout
        observer = Observer(bed.cloud)
        for server_id in ids:
            server = observer.server(server_id)
            assert server["host"] in ("host2", "host3") and server["status"] == "ACTIVE"
        assert _store(bed).get("host1").state == "evacuated"
    finally:  # the box is shared by the session
        observer = Observer(bed.cloud)
        for server_id in ids:
            try:
                observer.nova.servers.delete(server_id)
            except Exception:  # best effort cleanup
                pass
