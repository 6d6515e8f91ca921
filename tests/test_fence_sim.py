"""fence_nova_evacuate run as Pacemaker runs it, against the Nova simulator and BMC
simulators: outcomes checked in Nova, at the BMC and in the CIB record."""

from __future__ import annotations

import os
import stat

import pytest

from nova_ha.lib import state
from testbed.observe import Observer
from tests.helpers import run_fence


def _record(bed, host="host1") -> state.HostRecord:
    return state.CibStateStore(bed.cib).get(host)


def _assert_no_evacuation_before_off(bed, host="host1"):
    evacuations = bed.requests(action="evacuate")
    if evacuations:
        assert min(r["t"] for r in evacuations) >= bed.off_time(host)


def test_off_fences_forces_down_and_evacuates(sim_bed):
    bed = sim_bed
    ids = bed.cloud.create_servers("host1", 10)
    done = bed.fence()
    assert done.returncode == 0, done.stderr
    assert bed.bmcs["host1"].power_state == "off"
    _assert_no_evacuation_before_off(bed)
    observer = Observer(bed.cloud)
    svc = observer.service("host1")
    assert svc.forced_down is True and svc.status == "disabled"
    assert svc.disabled_reason.startswith("nova-ha: fenced at ")
    for server_id in ids:
        server = observer.server(server_id)
        assert server["host"] in ("host2", "host3") and server["status"] == "ACTIVE", server
    assert len(bed.requests(action="evacuate")) == 10  # one request per server
    record = _record(bed)
    assert record.state == "evacuated" and record.evacuated == 10 and record.failed == 0
    # Two writes in the incident: 'fenced' (the hand-over) and the outcome.
    assert [e.name for e in record.history][:2] == ["fenced", "evacuation_finished"]
    assert "10 evacuated, 0 failed" in done.stderr  # the one summary line


def test_second_off_repeats_no_finished_work(sim_bed):
    bed = sim_bed
    bed.cloud.create_servers("host1", 4)
    assert bed.fence().returncode == 0
    before = len(bed.cloud.request_log())
    offs = [w for _, w in bed.bmcs["host1"].power_log if w == "off"]
    again = bed.fence()
    assert again.returncode == 0, again.stderr
    new = bed.cloud.request_log()[before:]
    assert not [r for r in new if r.get("action") == "evacuate"]
    assert not [r for r in new if r["method"] == "PUT"]  # already forced down and disabled
    assert [w for _, w in bed.bmcs["host1"].power_log if w == "off"] == offs


def test_unreachable_bmc_fails_and_touches_nothing_in_nova(sim_bed):
    bed = sim_bed
    bed.cloud.create_servers("host1", 3)
    bed.bmcs["host1"].unreachable = True
    done = bed.fence(power_timeout=3)
    assert done.returncode == 1
    assert "not confirmed" in done.stderr and bed.bmcs["host1"].password not in done.stderr
    assert not bed.requests(method="PUT") and not bed.requests(action="evacuate")
    assert _record(bed).state == "ok"


def test_nova_down_after_power_off_fails_so_pacemaker_retries(sim_bed):
    bed = sim_bed
    ids = bed.cloud.create_servers("host1", 3)
    bed.cloud.set_api_down(True)
    done = bed.fence(evacuate_timeout=4)
    assert done.returncode == 1
    assert "forced down" in done.stderr
    assert bed.bmcs["host1"].power_state == "off"
    bed.cloud.set_api_down(False)
    retry = bed.fence()  # Pacemaker's retry
    assert retry.returncode == 0, retry.stderr
    observer = Observer(bed.cloud)
    assert all(observer.server(i)["host"] != "host1" for i in ids)
    _assert_no_evacuation_before_off(bed)


def test_tagged_mode_takes_flavor_image_and_metadata_tags(sim_bed):
    bed = sim_bed
    by_flavor = bed.cloud.create_servers("host1", 2, flavor_extra_specs={"evacuable": "true"})
    by_meta = bed.cloud.create_servers("host1", 2, metadata={"evacuable": "yes"})
    by_image = bed.cloud.create_servers("host1", 1, image_properties={"evacuable": "1"})
    untagged = bed.cloud.create_servers("host1", 2, metadata={"evacuable": "false"})
    done = bed.fence(evacuate="tagged")
    assert done.returncode == 0, done.stderr
    observer = Observer(bed.cloud)
    for server_id in by_flavor + by_meta + by_image:
        assert observer.server(server_id)["host"] != "host1"
    for server_id in untagged:
        assert observer.server(server_id)["host"] == "host1"
    assert len(bed.requests(action="evacuate")) == 5


@pytest.mark.parametrize("mode", ["all", "record", "none"])
def test_fence_action_does_no_evacuation_itself(sim_bed, mode):
    """The fence action is safety only: power-off, force-down, one record write that hands
    the lease over to the evacuation service (none with evacuate=none), and nothing more."""
    bed = sim_bed
    ids = bed.cloud.create_servers("host1", 2)
    done = run_fence(bed.fence_params(evacuate=mode), env=bed.env())
    assert done.returncode == 0, done.stderr
    assert Observer(bed.cloud).service("host1").forced_down is True
    assert not bed.requests(action="evacuate")
    assert all(Observer(bed.cloud).server(i)["host"] == "host1" for i in ids)
    record = _record(bed)
    assert record.mode == mode
    if mode == "none":
        assert record.state == "evacuated" and record.lease_owner is None
    else:
        assert record.state == "fenced" and record.lease_owner == "NovaEvacuate"
        assert [e.name for e in record.history] == ["fenced"]
        # The service then evacuates with its own mode (evacuate=record: NovaEvacuate's).
        with bed.evacuation_service() as service:
            service.wait_settled("host1")
        assert all(Observer(bed.cloud).server(i)["host"] != "host1" for i in ids)
        assert _record(bed).state == "evacuated" and _record(bed).lease_owner is None


def test_reboot_powers_back_on_unless_asked_not_to(sim_bed):
    bed = sim_bed
    bed.cloud.create_servers("host1", 2)
    done = bed.fence(action="reboot")
    assert done.returncode == 0, done.stderr
    assert [w for _, w in bed.bmcs["host1"].power_log][-2:] == ["off", "on"]
    assert bed.bmcs["host1"].power_state == "on"
    # the host is back but still forced down: NovaCompute lifts that once it is safe
    assert Observer(bed.cloud).service("host1").forced_down is True
    stay = bed.fence("host2", action="reboot", power_on_after=0)
    assert stay.returncode == 0 and bed.bmcs["host2"].power_state == "off"


def test_status_on_and_list(sim_bed):
    bed = sim_bed
    params = bed.fence_params(action="status")
    assert run_fence(params, env=bed.env()).returncode == 0
    assert run_fence(dict(params, action="off", evacuate="none"), env=bed.env()).returncode == 0
    assert run_fence(params, env=bed.env()).returncode == 2
    assert run_fence(dict(params, action="on"), env=bed.env()).returncode == 0
    assert bed.bmcs["host1"].power_state == "on"
    bed.bmcs["host1"].unreachable = True
    unknown = run_fence(dict(params, power_timeout=2), env=bed.env())
    assert unknown.returncode == 1 and "Status: ON" not in unknown.stdout
    listing = run_fence(dict(params, action="list-status"), env=bed.env())
    assert listing.returncode == 0
    rows = dict(line.split(",", 1) for line in listing.stdout.split())
    assert rows["host1"] == "host1,off" and rows["host2"] == "host2,on"
    assert (
        run_fence(
            dict(params, action="monitor", ipport=bed.bmcs["host2"].port), env=bed.env()
        ).returncode
        == 0
    )
    assert (
        run_fence(dict(params, action="monitor", os_password="wrong"), env=bed.env()).returncode
        == 1
    )


def test_topology_level_without_bmc(sim_bed):
    bed = sim_bed
    ids = bed.cloud.create_servers("host1", 2)
    bed.bmcs["host1"].power_state = "off"  # an earlier level (fence_ipmilan) did it
    bed.cloud.crash("host1")
    params = bed.fence_params(ip=None, username=None, password=None, ipport=None)
    done = bed.fence_with(params)
    assert done.returncode == 0, done.stderr
    assert "fencing-topology" in done.stderr
    assert all(Observer(bed.cloud).server(i)["host"] != "host1" for i in ids)


def test_legacy_microversion_uses_force_down_by_host(sim_bed):
    bed = sim_bed
    bed.cloud.create_servers("host1", 2)
    done = bed.fence(os_compute_api_version="2.52")
    assert done.returncode == 0, done.stderr
    puts = [r["path"] for r in bed.requests(method="PUT")]
    assert any(p.endswith("/os-services/force-down") for p in puts), puts
    assert any(p.endswith("/os-services/disable-log-reason") for p in puts), puts
    assert all(r["microversion"] == "2.52" for r in bed.requests(action="evacuate"))


def test_evacuate_below_295_every_other_call_newest_and_service_uuid(sim_bed):
    bed = sim_bed
    bed.cloud.create_servers("host1", 1)
    assert bed.fence().returncode == 0
    newest = bed.cloud.max_version
    newest = newest if isinstance(newest, str) else ".".join(map(str, newest))
    # one action per server: Nova lands it as it was (at >= 2.95 SHUTOFF, to be started)
    assert {r["microversion"] for r in bed.requests(action="evacuate")} == {"2.94"}
    assert {r["microversion"] for r in bed.requests(method="PUT")} == {newest}
    puts = [r["path"] for r in bed.requests(method="PUT")]
    assert puts and all("/os-services/" in p and "force-down" not in p for p in puts)


def test_faults_are_retried_within_budget(sim_bed):
    bed = sim_bed
    ids = bed.cloud.create_servers("host1", 6)
    bed.cloud.fail_next(r"/servers/[^/]+/action", status=503, count=3, method="POST")
    bed.cloud.fail_next(r"/os-services", status=500, count=1)
    bed.cloud.expire_tokens()
    done = bed.fence()
    assert done.returncode == 0, done.stderr
    assert all(Observer(bed.cloud).server(i)["host"] != "host1" for i in ids)


def test_failed_rebuilds_are_retried_then_reported(sim_bed):
    bed = sim_bed
    ids = bed.cloud.create_servers("host1", 3)
    bed.cloud.evacuate_fail([ids[0]])  # always fails
    done = bed.fence(evacuate_retries=1)
    assert done.returncode == 0, done.stderr  # fencing itself succeeded
    assert len([r for r in bed.requests(action="evacuate") if ids[0] in r["path"]]) == 2
    record = _record(bed)
    assert record.state == "failed" and record.failed == 1 and record.evacuated == 2
    assert "1 failed" in done.stderr


def test_unfinished_work_stays_recorded(sim_bed):
    bed = sim_bed
    bed.cloud.create_servers("host1", 3)
    bed.cloud.evacuate_delay = 30
    done = bed.fence(evacuate_timeout=4)
    assert done.returncode == 0, done.stderr
    record = _record(bed)
    assert record.state == "fenced" and record.lease_owner is None
    assert "3 unfinished" in done.stderr


def test_secrets_from_scripts_and_application_credentials(sim_bed, tmp_path):
    bed = sim_bed
    bed.cloud.create_servers("host1", 1)
    script = tmp_path / "os-pass"
    script.write_text(f"#!/bin/sh\necho '{bed.cloud.password}'\n")
    script.chmod(stat.S_IRWXU)
    bmc_script = tmp_path / "bmc-pass"
    bmc_script.write_text(f"#!/bin/sh\necho '{bed.bmcs['host1'].password}'\n")
    bmc_script.chmod(stat.S_IRWXU)
    params = bed.fence_params(
        os_password=None,
        os_password_script=str(script),
        password=None,
        password_script=str(bmc_script),
        verbose=1,
    )
    done = bed.fence_with(params)
    assert done.returncode == 0, done.stderr
    assert bed.cloud.password not in done.stderr + done.stdout
    appcred = bed.fence_params(
        action="monitor",
        os_username=None,
        os_password=None,
        os_project_name=None,
        os_application_credential_id=bed.cloud.app_cred_id,
        os_application_credential_secret=bed.cloud.app_cred_secret,
    )
    assert run_fence(appcred, env=bed.env()).returncode == 0


def test_os_cloud_from_clouds_yaml(sim_bed, tmp_path):
    bed = sim_bed
    clouds = bed.clouds_yaml(tmp_path / "clouds.yaml", "overcloud")
    params = bed.fence_params(
        action="list",
        os_auth_url=None,
        os_username=None,
        os_password=None,
        os_project_name=None,
        os_interface=None,
        os_cloud="overcloud",
    )
    done = run_fence(params, env=dict(bed.env(), OS_CLIENT_CONFIG_FILE=clouds))
    assert done.returncode == 0, done.stderr
    assert "host1,host1" in done.stdout
    missing = run_fence(
        dict(params, os_cloud="nope"), env=dict(bed.env(), OS_CLIENT_CONFIG_FILE=clouds)
    )
    assert missing.returncode == 1 and "os_cloud" in missing.stderr


def test_target_hosts_are_enabled_and_used(sim_bed):
    bed = sim_bed
    ids = bed.cloud.create_servers("host1", 4)
    observer = Observer(bed.cloud)
    observer.nova.services.disable_log_reason(observer.service("host3").id, "reserved")
    done = bed.fence(target_hosts="host3")
    assert done.returncode == 0, done.stderr
    assert observer.service("host3").status == "enabled"
    assert {observer.server(i)["host"] for i in ids} == {"host3"}


def test_host_map_maps_node_to_nova_host(sim_bed):
    bed = sim_bed
    ids = bed.cloud.create_servers("host2", 2)
    params = bed.fence_params("host2", port="node-b", host_map="node-b:host2")
    done = bed.fence_with(params)
    assert done.returncode == 0, done.stderr
    assert all(Observer(bed.cloud).server(i)["host"] != "host2" for i in ids)
    assert os.path.exists(bed.cib)


def test_transient_states_are_reset_followed_or_skipped(sim_bed):
    bed = sim_bed
    spawning, paused, deleting, resizing, plain = bed.cloud.create_servers("host1", 5)
    bed.cloud.set_server_state(spawning, task_state="spawning")
    bed.cloud.set_server_state(paused, vm_state="paused")
    bed.cloud.set_server_state(deleting, task_state="deleting")
    bed.cloud.set_server_state(resizing, task_state="resize_migrating")
    done = bed.fence()
    assert done.returncode == 0, done.stderr
    observer = Observer(bed.cloud)
    for server_id in (spawning, paused, plain):
        server = observer.server(server_id)
        assert server["host"] != "host1" and server["status"] == "ACTIVE", server
    for server_id in (deleting, resizing):
        assert observer.server(server_id)["host"] == "host1"
    resets = [r for r in bed.requests(action="os-resetState")]
    assert len(resets) == 1 and paused in resets[0]["path"]  # only what Nova cannot evacuate
    assert "2 skipped" in done.stderr
    record = _record(bed)
    assert record.state == "evacuated" and record.evacuated == 3


def test_stopped_servers_stay_stopped_running_ones_come_back_active(sim_bed):
    bed = sim_bed
    running = bed.cloud.create_servers("host1", 2)
    stopped = bed.cloud.create_servers("host1", 2, status="SHUTOFF")
    done = bed.fence()
    assert done.returncode == 0, done.stderr
    observer = Observer(bed.cloud)
    for server_id in running:
        assert observer.server(server_id)["status"] == "ACTIVE"
    for server_id in stopped:
        server = observer.server(server_id)
        assert server["host"] != "host1" and server["status"] == "SHUTOFF"
    # asked below 2.95: each lands as it was, no start needed (one action per server)
    assert not bed.requests(action="os-start")
    assert {r["microversion"] for r in bed.requests(action="evacuate")} == {"2.94"}


def test_agent_against_openipmi_ipmi_sim(sim_bed):
    from testbed.ipmi_sim import IpmiSim
    from tests.helpers import need_binary

    need_binary("ipmi_sim")
    bed = sim_bed
    ids = bed.cloud.create_servers("host1", 3)
    with IpmiSim("host1", on_power_off=lambda: bed.cloud.crash("host1")) as bmc:
        params = bed.fence_params(ipport=bmc.port, username=bmc.username, password=bmc.password)
        assert run_fence(dict(params, action="status"), env=bed.env()).returncode == 0
        done = bed.fence_with(params)
        assert done.returncode == 0, done.stderr
        assert bmc.power_state == "off"
        offs = [t for t, what in bmc.power_log if what == "off"]
        assert offs and min(r["t"] for r in bed.requests(action="evacuate")) >= offs[0]
        assert run_fence(dict(params, action="status"), env=bed.env()).returncode == 2
        assert run_fence(dict(params, action="on"), env=bed.env()).returncode == 0
        assert bmc.power_state == "on"
    assert all(Observer(bed.cloud).server(i)["host"] != "host1" for i in ids)


def test_small_page_size_loses_no_server(sim_bed):
    bed = sim_bed
    bed.cloud.max_limit = 4  # a cloud whose [api] max_limit is small
    ids = bed.cloud.create_servers("host1", 11)
    done = bed.fence()
    assert done.returncode == 0, done.stderr
    assert "11 servers found" in done.stderr
    assert all(Observer(bed.cloud).server(i)["host"] != "host1" for i in ids)


def test_one_device_for_many_nodes_with_a_bmc_map(sim_bed):
    """A shared device (bmc_map) fences each node through that node's own BMC, and refuses
    a node it has no BMC for before any power action."""
    bed = sim_bed
    ids = bed.cloud.create_servers("host2", 2)
    shared = {f"host{i}": f"127.0.0.1:{bed.bmcs[f'host{i}'].port}" for i in (1, 2)}
    params = bed.fence_params(
        "host2", ip=None, ipport=None, bmc_map=";".join(f"{n}={a}" for n, a in shared.items())
    )
    done = bed.fence_with(params)
    assert done.returncode == 0, done.stderr
    assert bed.bmcs["host2"].power_state == "off" and bed.bmcs["host1"].power_state == "on"
    assert all(Observer(bed.cloud).server(i)["host"] != "host2" for i in ids)
    before = len(bed.cloud.request_log())
    refused = run_fence(dict(params, port="host3"), env=bed.env())
    assert refused.returncode == 1 and "bmc_map" in refused.stderr, refused.stderr
    assert bed.bmcs["host3"].power_state == "on"
    assert not [r for r in bed.cloud.request_log()[before:] if r["method"] != "GET"]


def test_device_refuses_a_node_whose_bmc_it_does_not_have(sim_bed):
    """host1's BMC, asked to fence host2 (bmc_node says whose BMC it is): nothing is powered
    off and nothing changes in Nova."""
    bed = sim_bed
    params = bed.fence_params("host1", port="host2", bmc_node="host1")
    done = run_fence(params, env=bed.env())
    assert done.returncode == 1
    assert "host2" in done.stderr and "bmc_node" in done.stderr, done.stderr
    assert bed.bmcs["host1"].power_state == "on"
    assert not bed.requests(method="PUT") and not bed.requests(action="evacuate")
