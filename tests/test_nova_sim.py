"""Tests of the Nova + Keystone simulator, driven as a real client would drive Nova."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from keystoneauth1 import exceptions as ks_exc
from keystoneauth1 import identity, session
from keystoneauth1.identity import v3
from novaclient import api_versions
from novaclient import client as nova_client
from novaclient import exceptions as nova_exc

from nova_ha.openstack.views import REBUILD_TASKS
from testbed.nova_sim import NOVA_MAX_VERSION, NovaSim

UNFORCE_MSG = (
    "Unable to force up host host1 as `done` evacuation migration records remain associated "
    "with the host. Ensure the compute service has been restarted, allowing these records to "
    "move to `completed` before retrying this request."
)


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def sim() -> Iterator[NovaSim]:
    with NovaSim(evacuate_delay=0.15) as s:
        yield s


def password_session(sim: NovaSim, **kwargs: Any) -> session.Session:
    auth = v3.Password(
        auth_url=sim.auth_url,
        username=sim.username,
        password=sim.password,
        project_name=sim.project_name,
        user_domain_name=sim.user_domain_name,
        project_domain_name=sim.project_domain_name,
    )
    return session.Session(auth=auth, **kwargs)


def appcred_session(sim: NovaSim) -> session.Session:
    auth = v3.ApplicationCredential(
        auth_url=sim.auth_url,
        application_credential_id=sim.app_cred_id,
        application_credential_secret=sim.app_cred_secret,
    )
    return session.Session(auth=auth)


def nova(sim: NovaSim, version: str, sess: session.Session | None = None) -> Any:
    return nova_client.Client(version, session=sess or password_session(sim))


def compute_get(sess: session.Session, sim: NovaSim, path: str, version: str = "2.1") -> Any:
    return sess.get(
        sim.compute_url + path,
        raise_exc=False,
        headers={"OpenStack-API-Version": f"compute {version}"},
    )


def wait_for(pred: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def compute_service(client: Any, host: str) -> Any:
    return next(s for s in client.services.list(binary="nova-compute") if s.host == host)


def settled(sim: NovaSim, sid: str) -> dict[str, Any] | None:
    server = sim.server(sid)
    return server if server["task_state"] is None else None


def call_testbed(sim: NovaSim, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        sim.testbed_url + path,
        data=data,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


# --------------------------------------------------------------------------- identity


def test_password_and_appcred_auth_give_compute_catalog(sim: NovaSim) -> None:
    for sess in (password_session(sim), appcred_session(sim)):
        assert sess.get_token()
        for interface in ("public", "internal", "admin"):
            url = sess.get_endpoint(
                service_type="compute", interface=interface, region_name="RegionOne"
            )
            assert url == sim.compute_url
        assert nova(sim, "2.53", sess).services.list()


def test_unversioned_auth_url_discovery(sim: NovaSim) -> None:
    auth = identity.Password(
        auth_url=sim.base_url + "/identity",
        username="admin",
        password="secret",
        project_name="admin",
        user_domain_name="Default",
        project_domain_name="Default",
    )
    assert session.Session(auth=auth).get_token()


def test_wrong_credentials_401(sim: NovaSim) -> None:
    auth = v3.Password(
        auth_url=sim.auth_url,
        username="admin",
        password="wrong",
        project_name="admin",
        user_domain_name="Default",
        project_domain_name="Default",
    )
    with pytest.raises(ks_exc.Unauthorized):
        session.Session(auth=auth).get_token()
    bad_cred = v3.ApplicationCredential(
        auth_url=sim.auth_url,
        application_credential_id=sim.app_cred_id,
        application_credential_secret="nope",
    )
    with pytest.raises(ks_exc.Unauthorized):
        session.Session(auth=bad_cred).get_token()


def test_compute_rejects_unknown_token(sim: NovaSim) -> None:
    req = urllib.request.Request(
        sim.compute_url + "/os-services", headers={"X-Auth-Token": "forged"}
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=5)
    assert err.value.code == 401
    assert json.loads(err.value.read())["error"]["code"] == 401


# --------------------------------------------------------------------------- versions


def test_version_documents(sim: NovaSim) -> None:
    sess = password_session(sim)
    root = sess.get(sim.base_url + "/compute/", authenticated=False).json()
    v21 = next(v for v in root["versions"] if v["id"] == "v2.1")
    assert (v21["version"], v21["min_version"], v21["status"]) == (
        NOVA_MAX_VERSION,
        "2.1",
        "CURRENT",
    )
    doc = sess.get(sim.compute_url + "/", authenticated=False).json()["version"]
    assert doc["version"] == "2.104" and doc["links"][0]["href"] == sim.compute_url + "/"


def test_microversion_negotiation_and_headers(sim: NovaSim) -> None:
    client = nova(sim, "2.1")
    version = api_versions.discover_version(client, api_versions.APIVersion("2.latest"))
    assert version.get_string() == "2.96"  # novaclient's own maximum
    sess = password_session(sim)
    resp = compute_get(sess, sim, "/os-services", "2.53")
    assert resp.headers["OpenStack-API-Version"] == "compute 2.53"
    assert resp.headers["X-OpenStack-Nova-API-Version"] == "2.53"
    assert "OpenStack-API-Version" in resp.headers["Vary"]
    latest = compute_get(sess, sim, "/os-services", "latest")
    assert latest.headers["OpenStack-API-Version"] == "compute 2.104"
    legacy = sess.get(
        sim.compute_url + "/os-services",
        raise_exc=False,
        headers={"X-OpenStack-Nova-API-Version": "2.11"},
    )
    assert legacy.headers["OpenStack-API-Version"] == "compute 2.11"
    assert "forced_down" in legacy.json()["services"][0]
    default = sess.get(sim.compute_url + "/os-services")
    assert default.headers["OpenStack-API-Version"] == "compute 2.1"
    assert "forced_down" not in default.json()["services"][0]
    too_new = compute_get(sess, sim, "/os-services", "2.105")
    assert too_new.status_code == 406
    assert too_new.json()["computeFault"]["message"] == (
        "Version 2.105 is not supported by the API. Minimum is 2.1 and maximum is 2.104."
    )
    bad = compute_get(sess, sim, "/os-services", "2.01")
    assert bad.status_code == 400


def test_custom_max_version() -> None:
    with NovaSim(max_version="2.79") as old:
        resp = compute_get(password_session(old), old, "/os-services", "2.80")
        assert resp.status_code == 406


# --------------------------------------------------------------------------- services


def test_list_services_ids_and_filters(sim: NovaSim) -> None:
    old = nova(sim, "2.11").services.list(binary="nova-compute")
    assert sorted(s.host for s in old) == ["host1", "host2", "host3"]
    assert all(
        isinstance(s.id, int)
        and s.state == "up"
        and s.status == "enabled"
        and s.forced_down is False
        and s.zone == "nova"
        for s in old
    )
    new = nova(sim, "2.53").services.list(host="host2")
    assert [s.binary for s in new] == ["nova-compute"]
    assert len(new[0].id) == 36
    resp = compute_get(password_session(sim), sim, "/os-services?bogus=1", "2.75")
    assert resp.status_code == 400


def test_force_down_by_uuid(sim: NovaSim) -> None:
    client = nova(sim, "2.53")
    svc = compute_service(client, "host1")
    updated = client.services.force_down(svc.id, True)
    assert updated.forced_down is True and updated.state == "down" and updated.id == svc.id
    assert compute_service(client, "host1").state == "down"
    back = client.services.force_down(svc.id, False)
    assert back.forced_down is False and back.state == "up"
    disabled = client.services.disable_log_reason(svc.id, "maintenance")
    assert (disabled.status, disabled.disabled_reason) == ("disabled", "maintenance")
    sess = password_session(sim)
    url = sim.compute_url + f"/os-services/{svc.id}"
    hdr = {"OpenStack-API-Version": "compute 2.53"}
    resp = sess.put(url, json={}, headers=hdr, raise_exc=False)
    assert resp.status_code == 400
    assert resp.json()["badRequest"]["message"] == (
        "No updates were requested. Fields 'status' or 'forced_down' should be specified."
    )
    resp = sess.put(
        url, json={"status": "enabled", "disabled_reason": "x"}, headers=hdr, raise_exc=False
    )
    assert resp.json()["badRequest"]["message"] == (
        "Specifying 'disabled_reason' with status 'enabled' is invalid."
    )
    resp = sess.put(
        sim.compute_url + "/os-services/force-down",
        headers=hdr,
        raise_exc=False,
        json={"forced_down": True},
    )
    assert resp.json()["badRequest"]["message"] == "Invalid uuid force-down"
    conductor = next(s for s in client.services.list() if s.binary == "nova-conductor")
    resp = sess.put(
        sim.compute_url + f"/os-services/{conductor.id}",
        headers=hdr,
        raise_exc=False,
        json={"forced_down": True},
    )
    assert resp.status_code == 400


def test_legacy_force_down(sim: NovaSim) -> None:
    client = nova(sim, "2.11")
    result = client.services.force_down("host1", "nova-compute", True)
    assert result.forced_down is True
    assert compute_service(client, "host1").state == "down"
    with pytest.raises(nova_exc.NotFound) as err:
        client.services.force_down("nohost", "nova-compute", True)
    assert err.value.message == "Host 'nohost' is not mapped to any cell"
    # before 2.11 the schema rejects forced_down, and force-down is an unknown action
    sess = password_session(sim)
    hdr = {"OpenStack-API-Version": "compute 2.10"}
    body = {"host": "host1", "binary": "nova-compute"}
    resp = sess.put(
        sim.compute_url + "/os-services/force-down",
        headers=hdr,
        raise_exc=False,
        json=body | {"forced_down": False},
    )
    assert resp.status_code == 400
    resp = sess.put(
        sim.compute_url + "/os-services/force-down", headers=hdr, raise_exc=False, json=body
    )
    assert resp.json() == {"itemNotFound": {"code": 404, "message": "Unknown action"}}
    assert client.services.disable("host2", "nova-compute").status == "disabled"


def test_heartbeat_based_down_and_host_status() -> None:
    with NovaSim(service_down_time=0.4, report_interval=0.1, evacuate_delay=0.1) as sim:
        client = nova(sim, "2.53")
        sid = sim.create_servers("host1", 1)[0]
        assert client.servers.get(sid).host_status == "UP"
        sim.crash("host1")
        with pytest.raises(nova_exc.BadRequest) as err:
            client.servers.evacuate(sid)
        assert err.value.message == "Compute service of host1 is still in use."
        wait_for(lambda: compute_service(client, "host1").state == "down")
        assert client.servers.get(sid).host_status == "UNKNOWN"
        client.servers.evacuate(sid)
        done = wait_for(lambda: settled(sim, sid))
        assert (done["host"], done["status"]) != ("host1", "ACTIVE")
        sim.start("host1")
        assert compute_service(client, "host1").state == "up"


# --------------------------------------------------------------------------- evacuation


def test_evacuate_refused_while_source_up(sim: NovaSim) -> None:
    sid = sim.create_servers("host1", 1)[0]
    with pytest.raises(nova_exc.BadRequest) as err:
        nova(sim, "2.53").servers.evacuate(sid)
    assert err.value.code == 400
    assert err.value.message == "Compute service of host1 is still in use."
    assert sim.server(sid)["task_state"] is None and sim.migrations() == []


@pytest.mark.parametrize(("version", "expected"), [("2.53", "ACTIVE"), ("2.95", "SHUTOFF")])
def test_evacuate_after_force_down(sim: NovaSim, version: str, expected: str) -> None:
    client = nova(sim, version)
    ids = sim.create_servers("host1", 4, flavor_extra_specs={"ha:evacuable": "true"})
    sim.crash("host1")
    client.services.force_down(compute_service(client, "host1").id, True)
    for sid in ids:
        client.servers.evacuate(sid)
    assert sim.server(ids[0])["task_state"] in REBUILD_TASKS
    assert client.servers.get(ids[0]).status == "REBUILD"
    for sid in ids:
        wait_for(lambda sid=sid: settled(sim, sid))
    servers = client.servers.list(search_opts={"all_tenants": 1})
    assert {s.id for s in servers} == set(ids)
    for server in servers:
        assert server.status == expected
        assert getattr(server, "OS-EXT-SRV-ATTR:host") in ("host2", "host3")
        assert server.flavor["extra_specs"] == {"ha:evacuable": "true"}
    migrations = client.migrations.list(migration_type="evacuation", source_compute="host1")
    assert len(migrations) == 4
    assert {m.status for m in migrations} == {"done"}
    # back to back, all scheduled before the first claim showed: herded onto one host
    assert len({m.dest_compute for m in migrations}) == 1


def test_stopped_server_stays_stopped_and_error_server_becomes_active(sim: NovaSim) -> None:
    stopped = sim.create_servers("host1", 1, status="SHUTOFF")[0]
    errored = sim.create_servers("host1", 1, status="ERROR")[0]
    client = nova(sim, "2.95")
    client.services.force_down(compute_service(client, "host1").id, True)
    client.servers.evacuate(stopped)
    client.servers.evacuate(errored)
    assert wait_for(lambda: settled(sim, stopped))["status"] == "SHUTOFF"
    # 2.95's target state is not applied to a server that was in ERROR
    assert wait_for(lambda: settled(sim, errored))["status"] == "ACTIVE"


def test_migration_done_then_completed_and_unforce(sim: NovaSim) -> None:
    client = nova(sim, "2.59")
    sid = sim.create_servers("host1", 1)[0]
    sim.crash("host1")
    svc = compute_service(client, "host1")
    client.services.force_down(svc.id, True)
    client.servers.evacuate(sid)
    wait_for(lambda: settled(sim, sid))
    [mig] = client.migrations.list(instance_uuid=sid)
    assert (mig.status, mig.migration_type, mig.source_compute) == ("done", "evacuation", "host1")
    with pytest.raises(nova_exc.BadRequest) as err:
        client.services.force_down(svc.id, False)
    assert err.value.message == UNFORCE_MSG
    legacy = nova(sim, "2.11")
    with pytest.raises(nova_exc.BadRequest) as err:
        legacy.services.force_down("host1", "nova-compute", False)
    assert err.value.message == UNFORCE_MSG
    assert sid in sim.hosts()["host1"]["guests"]  # the stale local copy
    sim.start("host1")
    [mig] = client.migrations.list(instance_uuid=sid)
    assert mig.status == "completed"
    assert sid not in sim.hosts()["host1"]["guests"]
    assert compute_service(client, "host1").state == "down"  # still forced down
    assert client.services.force_down(svc.id, False).forced_down is False
    assert compute_service(client, "host1").state == "up"


def test_second_evacuate_during_a_rebuild_is_accepted_and_breaks_it(sim: NovaSim) -> None:
    """As Nova 34: evacuate does not check the task state (check_instance_state with
    task_state=None); the two rebuilds fight and the server ends in ERROR."""
    sim.evacuate_delay = 1.0
    client = nova(sim, "2.53")
    sid = sim.create_servers("host1", 1)[0]
    client.services.force_down(compute_service(client, "host1").id, True)
    client.servers.evacuate(sid)
    client.servers.evacuate(sid)  # accepted: no Conflict
    wait_for(lambda: sim.server(sid)["status"] == "ERROR", timeout=10)


def test_evacuate_validation_per_microversion(sim: NovaSim) -> None:
    sid = sim.create_servers("host1", 1)[0]
    sess = password_session(sim)
    url = sim.compute_url + f"/servers/{sid}/action"

    def post(version: str, body: dict[str, Any]) -> Any:
        return sess.post(
            url, json=body, raise_exc=False, headers={"OpenStack-API-Version": f"compute {version}"}
        )

    resp = post("2.95", {"evacuate": {"targetState": "stopped"}})
    assert resp.status_code == 400
    assert "('targetState' was unexpected)" in resp.json()["badRequest"]["message"]
    assert post("2.13", {"evacuate": {}}).json()["badRequest"]["message"] == (
        "Invalid input for field/attribute evacuate. Value: {}. "
        "'onSharedStorage' is a required property"
    )
    assert post("2.29", {"evacuate": {"force": True}}).json()["badRequest"]["message"] == (
        "Can't force to a non-provided destination"
    )
    assert post("2.68", {"evacuate": {"force": True}}).status_code == 400
    assert (
        post("2.53", {"evacuate": {"host": "nohost"}}).json()["itemNotFound"]["message"]
        == "Compute host nohost not found."
    )
    assert post("2.53", {"evacuate": {"host": "host1"}}).json()["badRequest"]["message"] == (
        "The target host can't be the same one."
    )
    assert post("2.53", {"evacuate": {}}).status_code == 400  # host1 still up
    sim.force_down("host1")
    old = post("2.13", {"evacuate": {"onSharedStorage": False}})
    assert old.status_code == 200 and "adminPass" in old.json()
    sim.force_down(wait_for(lambda: settled(sim, sid))["host"])
    again = post("2.53", {"evacuate": {}})
    assert again.status_code == 200 and again.content == b""  # no body from 2.14


def test_evacuate_to_requested_host(sim: NovaSim) -> None:
    client = nova(sim, "2.68")
    sid = sim.create_servers("host1", 1)[0]
    sim.force_down("host1")
    client.servers.evacuate(sid, host="host3")
    assert wait_for(lambda: settled(sim, sid))["host"] == "host3"


def test_no_valid_host_sets_error(sim: NovaSim) -> None:
    client = nova(sim, "2.53")
    sid = sim.create_servers("host1", 1)[0]
    sim.force_down("host1")
    for host in ("host2", "host3"):
        client.services.disable(compute_service(client, host).id)
    client.servers.evacuate(sid)  # 200: scheduling happens after the API call
    server = wait_for(lambda: settled(sim, sid))
    assert server["status"] == "ERROR" and server["host"] == "host1"
    assert client.servers.get(sid).fault["message"].startswith("No valid host was found.")
    [mig] = client.migrations.list()
    assert mig.status == "error"
    # the same when the up hosts are full (placement)
    with NovaSim(hosts=["a", "b"], host_capacity=1, evacuate_delay=0.05) as small:
        ids = small.create_servers("a", 1) + small.create_servers("b", 1)
        small.force_down("a")
        nova(small, "2.53").servers.evacuate(ids[0])
        assert wait_for(lambda: settled(small, ids[0]))["status"] == "ERROR"
        assert small.migrations()[0]["status"] == "error"


def test_evacuate_fail_injection(sim: NovaSim) -> None:
    client = nova(sim, "2.53")
    ids = sim.create_servers("host1", 3)
    sim.force_down("host1")
    sim.evacuate_fail([ids[0]])
    for sid in ids:
        client.servers.evacuate(sid)
    results = {sid: wait_for(lambda sid=sid: settled(sim, sid)) for sid in ids}
    assert results[ids[0]]["status"] == "ERROR"
    assert {results[i]["status"] for i in ids[1:]} == {"ACTIVE"}
    statuses = {m["instance_uuid"]: m["status"] for m in sim.migrations()}
    assert statuses[ids[0]] == "failed" and statuses[ids[1]] == "done"
    # a failed server can be reset and evacuated again
    client.servers.reset_state(ids[0], "active")
    sim.evacuate_fail(None)
    client.servers.evacuate(ids[0])
    assert wait_for(lambda: settled(sim, ids[0]))["status"] == "ACTIVE"


def test_conflict_injection(sim: NovaSim) -> None:
    sid = sim.create_servers("host1", 1)[0]
    sim.force_down("host1")
    sim.conflict_next_evacuate()
    client = nova(sim, "2.53")
    with pytest.raises(nova_exc.Conflict):
        client.servers.evacuate(sid)
    client.servers.evacuate(sid)
    assert wait_for(lambda: settled(sim, sid))["status"] == "ACTIVE"


def test_evacuation_waits_for_a_crashed_destination() -> None:
    with NovaSim(hosts=["host1", "host2"], evacuate_delay=0.1) as sim:
        sid = sim.create_servers("host1", 1)[0]
        sim.force_down("host1")
        nova(sim, "2.53").servers.evacuate(sid)
        sim.crash("host2")  # before the destination claims it
        time.sleep(0.3)
        assert sim.server(sid)["status"] == "REBUILD"
        sim.start("host2")
        assert wait_for(lambda: settled(sim, sid))["host"] == "host2"


# --------------------------------------------------------------------------- servers


def test_servers_detail_fields_paging_and_filters(sim: NovaSim) -> None:
    ids = sim.create_servers(
        "host1",
        5,
        metadata={"ha": "yes"},
        image_properties={"evacuable": "true", "os_distro": "cirros"},
    )
    other = sim.create_servers("host2", 2, project_id="other-project")
    sess = password_session(sim)
    body = compute_get(sess, sim, "/servers/detail?all_tenants=1&host=host1", "2.98").json()
    assert {s["id"] for s in body["servers"]} == set(ids)
    server = body["servers"][0]
    assert server["metadata"] == {"ha": "yes"}
    assert server["image"]["properties"] == {"os_distro": "cirros"}  # only standard props
    assert server["flavor"]["original_name"] == "m1.small"
    assert (
        server["OS-EXT-STS:vm_state"],
        server["OS-EXT-STS:power_state"],
        server["OS-EXT-STS:task_state"],
        server["host_status"],
    ) == ("active", 1, None, "UP")
    mine = compute_get(sess, sim, "/servers/detail", "2.53").json()["servers"]
    assert not {s["id"] for s in mine} & set(other)
    seen: list[str] = []
    url = "/servers/detail?all_tenants=1&limit=3"
    while url:
        page = compute_get(sess, sim, url, "2.53").json()
        seen += [s["id"] for s in page["servers"]]
        links = page.get("servers_links")
        url = links[0]["href"].split("/v2.1", 1)[1] if links else ""
    assert sorted(seen) == sorted(ids + other) and len(seen) == 7
    bad = compute_get(sess, sim, "/servers/detail?marker=nope", "2.53")
    assert bad.json()["badRequest"]["message"] == "marker [nope] not found"
    assert compute_get(sess, sim, "/servers/detail?status=BOGUS", "2.53").status_code == 400
    active = compute_get(sess, sim, "/servers/detail?all_tenants=1&status=ACTIVE", "2.53")
    assert len(active.json()["servers"]) == 7
    old = compute_get(sess, sim, f"/servers/{ids[0]}", "2.46").json()["server"]
    assert set(old["flavor"]) == {"id", "links"}
    assert (
        "host_status" not in compute_get(sess, sim, f"/servers/{ids[0]}", "2.15").json()["server"]
    )
    assert compute_get(sess, sim, "/servers/nope", "2.53").status_code == 404


def test_host_status_values(sim: NovaSim) -> None:
    client = nova(sim, "2.53")
    a, b = sim.create_servers("host1", 1) + sim.create_servers("host2", 1)
    client.services.force_down(compute_service(client, "host1").id, True)
    client.services.disable(compute_service(client, "host2").id)
    assert client.servers.get(a).host_status == "DOWN"
    assert client.servers.get(b).host_status == "MAINTENANCE"


def test_image_proxy_and_extra_specs(sim: NovaSim) -> None:
    sid = sim.create_servers(
        "host1",
        1,
        flavor_extra_specs={"ha:evacuable": "true"},
        image_properties={"evacuable": "true"},
    )[0]
    server = sim.server(sid)
    sess = password_session(sim)
    image = compute_get(sess, sim, f"/images/{server['image_id']}", "2.35")
    assert image.json()["image"]["metadata"] == {"evacuable": "true"}
    assert compute_get(sess, sim, f"/images/{server['image_id']}", "2.36").status_code == 404
    flavor_id = server["flavor"]["flavorid"]
    specs = compute_get(sess, sim, f"/flavors/{flavor_id}/os-extra_specs", "2.53").json()
    assert specs == {"extra_specs": {"ha:evacuable": "true"}}


def test_create_stop_start_reset_delete(sim: NovaSim) -> None:
    client = nova(sim, "2.53")
    flavor = client.flavors.get(sim.default_flavor_id)
    created = client.servers.create(
        "api-vm", sim.default_image_id, flavor, nics="none", availability_zone="nova:host2"
    )
    server = wait_for(lambda: settled(sim, created.id))
    assert (server["host"], server["status"]) == ("host2", "ACTIVE")
    client.servers.stop(created.id)
    assert wait_for(lambda: settled(sim, created.id))["status"] == "SHUTOFF"
    with pytest.raises(nova_exc.Conflict):
        client.servers.stop(created.id)
    client.servers.start(created.id)
    assert wait_for(lambda: settled(sim, created.id))["status"] == "ACTIVE"
    client.servers.reset_state(created.id, "error")
    assert client.servers.get(created.id).status == "ERROR"
    client.servers.delete(created.id)
    with pytest.raises(nova_exc.NotFound):
        client.servers.get(created.id)


# --------------------------------------------------------------------------- faults


def test_latency_scales_with_concurrency(sim: NovaSim) -> None:
    sess = password_session(sim)
    sess.get_token()
    sim.latency = 0.25
    errors: list[BaseException] = []

    def one() -> None:
        try:
            assert compute_get(sess, sim, "/os-services", "2.53").status_code == 200
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(16)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - start
    assert not errors
    assert 0.25 <= elapsed < 1.0, elapsed  # 16 serial calls would take 4 s


def test_fail_next_5xx(sim: NovaSim) -> None:
    client = nova(sim, "2.53")
    client.services.list()
    sim.fail_next(r"/os-services$", 500, count=2, method="GET")
    for _ in range(2):
        with pytest.raises(nova_exc.ClientException) as err:
            client.services.list()
        assert err.value.code == 500
    assert client.services.list()
    sim.fail_next(r"/os-services", 503)
    with pytest.raises(nova_exc.ClientException) as err:
        client.services.list()
    assert err.value.code == 503
    # a lost reply: the evacuation happens although the client sees 502
    sid = sim.create_servers("host1", 1)[0]
    sim.force_down("host1")
    sim.fail_next(r"/action$", 502, apply=True)
    with pytest.raises(nova_exc.ClientException):
        client.servers.evacuate(sid)
    assert wait_for(lambda: settled(sim, sid))["host"] != "host1"


def test_expired_token_then_reauth(sim: NovaSim) -> None:
    sess = password_session(sim)
    client = nova(sim, "2.53", sess)
    client.services.list()
    sim.clear_log()
    sim.expire_tokens()
    assert client.services.list()  # keystoneauth re-authenticates once
    log = [(e["method"], e["path"].rsplit("/", 1)[-1], e["status"]) for e in sim.request_log()]
    assert log == [
        ("GET", "os-services", 401),
        ("POST", "tokens", 201),
        ("GET", "os-services", 200),
    ]


def test_timeout_next(sim: NovaSim) -> None:
    sess = password_session(sim)
    sess.get_token()
    sim.timeout_next(r"/os-services", 1.0)
    with pytest.raises(ks_exc.ConnectTimeout):
        sess.get(sim.compute_url + "/os-services", timeout=0.2)
    assert sess.get(sim.compute_url + "/os-services", timeout=2).status_code == 200


def test_api_down(sim: NovaSim) -> None:
    client = nova(sim, "2.53")
    sim.set_api_down(True)
    with pytest.raises(nova_exc.ClientException) as err:
        client.services.list()
    assert err.value.code == 503
    sim.set_api_down(False)
    assert client.services.list()


def test_request_log_records_actions(sim: NovaSim) -> None:
    sid = sim.create_servers("host1", 1)[0]
    sim.force_down("host1")
    before = time.time()
    nova(sim, "2.95").servers.evacuate(sid)
    entry = next(e for e in sim.request_log() if e["action"] == "evacuate")
    assert entry["method"] == "POST" and entry["status"] == 200
    assert entry["microversion"] == "2.95" and entry["t"] >= before
    assert entry["path"].endswith(f"/servers/{sid}/action")


# --------------------------------------------------------------------------- /_testbed


def test_testbed_http_control(sim: NovaSim) -> None:
    status, body = call_testbed(
        sim,
        "POST",
        "/servers",
        {"host": "host1", "count": 2, "name_prefix": "web", "metadata": {"ha": "1"}, "wait": True},
    )
    assert status == 200 and len(body["ids"]) == 2
    assert sim.server(body["ids"][0])["name"] == "web-1"
    assert call_testbed(sim, "GET", "/hosts")[1]["host1"]["running"] is True
    assert call_testbed(sim, "POST", "/hosts/host1/crash")[1] == {"host": "host1", "running": False}
    assert call_testbed(sim, "GET", "/hosts")[1]["host1"]["running"] is False
    call_testbed(sim, "POST", "/hosts/host1/start")
    assert sim.hosts()["host1"]["running"] is True
    assert call_testbed(sim, "POST", "/hosts/nohost/crash")[0] == 404
    call_testbed(sim, "POST", "/api", {"down": True})
    client = nova(sim, "2.53")
    with pytest.raises(nova_exc.ClientException):
        client.services.list()
    call_testbed(sim, "POST", "/api", {"down": False})
    client.services.list()
    log = call_testbed(sim, "GET", "/log")[1]["log"]
    assert [e["status"] for e in log if e["path"].endswith("os-services")] == [503, 200]
    assert all(not e["path"].startswith("/_testbed") for e in log)


def test_many_servers_parallel_evacuation() -> None:
    with NovaSim(evacuate_delay=0.3) as sim:
        sim.claim_seconds = sim.rebuild_seconds = 0.0  # the simulator's own throughput
        ids = sim.create_servers("host1", 120)
        sim.force_down("host1")
        sess = password_session(sim)
        sess.get_token()
        client = nova(sim, "2.95", sess)
        lock = threading.Lock()
        pending = list(ids)

        def worker() -> None:
            while True:
                with lock:
                    if not pending:
                        return
                    sid = pending.pop()
                client.servers.evacuate(sid)

        threads = [threading.Thread(target=worker) for _ in range(16)]
        start = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for sid in ids:
            wait_for(lambda sid=sid: settled(sim, sid))
        assert time.monotonic() - start < 5
        hosts = sim.hosts()
        assert len(hosts["host2"]["servers"]) + len(hosts["host3"]["servers"]) == 120
        assert {sim.server(i)["status"] for i in ids} == {"SHUTOFF"}


# --------------------------------------------------------------------------- per-compute work


def _evacuate_all(sim: NovaSim, count: int, targets: list[str | None]) -> dict[str, float]:
    """`count` servers of host1 evacuated back to back (target i % len(targets)); the time
    each one landed, from the first request."""
    client = nova(sim, "2.94")
    ids = sim.create_servers("host1", count)
    sim.crash("host1")
    sim.force_down("host1")
    start = time.monotonic()
    for i, sid in enumerate(ids):
        client.servers.evacuate(sid, host=targets[i % len(targets)])
    landed: dict[str, float] = {}

    def all_landed() -> bool:
        for sid in ids:
            if sid not in landed and settled(sim, sid):
                landed[sid] = time.monotonic() - start
        return len(landed) == count

    wait_for(all_landed, timeout=20)
    return landed


def test_one_compute_given_all_the_work_finishes_later_than_several() -> None:
    """Claims are one at a time per compute (its compute_resources lock)."""
    knobs = {"evacuate_delay": 0.05}
    with NovaSim(hosts=["host1", "host2", "host3"], **knobs) as sim:
        sim.claim_seconds, sim.rebuild_seconds = 0.2, 0.05
        herded = _evacuate_all(sim, 6, [None])
        assert len({sim.server(s)["host"] for s in herded}) == 1
    with NovaSim(hosts=["host1", "host2", "host3"], **knobs) as sim:
        sim.claim_seconds, sim.rebuild_seconds = 0.2, 0.05
        spread = _evacuate_all(sim, 6, ["host2", "host3"])
        assert {sim.server(s)["host"] for s in spread} == {"host2", "host3"}
    assert max(herded.values()) >= 6 * 0.2
    assert max(spread.values()) < 6 * 0.2 - 0.3


def test_compute_slots_bound_the_rebuilds_of_one_compute() -> None:
    with NovaSim(hosts=["host1", "host2"], evacuate_delay=0.05) as sim:
        sim.claim_seconds, sim.rebuild_seconds, sim.compute_slots = 0.0, 0.3, {"host2": 1}
        landed = _evacuate_all(sim, 3, [None])
        assert sorted(landed.values())[-1] >= 3 * 0.3


def test_host_subset_size_spreads_concurrent_requests() -> None:
    """host_subset_size > 1: a random pick among the best hosts, as Nova's scheduler."""
    with NovaSim(hosts=["host1", "host2", "host3"], evacuate_delay=0.05, seed=7) as sim:
        sim.claim_seconds = sim.rebuild_seconds = 0.0
        sim.host_subset_size = 2
        landed = _evacuate_all(sim, 8, [None])
        assert {sim.server(s)["host"] for s in landed} == {"host2", "host3"}
