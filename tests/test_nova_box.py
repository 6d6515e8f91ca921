"""The real Nova 34 test box, driven with python-novaclient / keystoneauth1.

These tests also pin the Nova behaviour an evacuation agent (and any Nova
simulator) must mirror: status codes and messages of evacuate and
force-down, SHUTOFF landing at >= 2.95, `done` -> `completed` migrations.
"""

import os
import threading
import time

import pytest
import requests
from keystoneauth1 import exceptions as ks_exc
from keystoneauth1 import session as ks_session
from keystoneauth1.identity import v3
from novaclient import api_versions
from novaclient import client as nova_client
from novaclient import exceptions as nova_exc

from testbed.nova_box import (
    IMAGE_EVACUABLE,
    NovaBox,
)
from testbed.nova_box.fixtures import require_nova_venv
from testbed.util import wait_for

# These tests count what the box holds (instances per host, requests in its log), so they
# get a box of their own rather than the session's, which other modules have used.


@pytest.fixture(scope="module")
def nova_box(tmp_path_factory):
    require_nova_venv()
    with NovaBox(
        hosts=("host1", "host2", "host3"), state_dir=tmp_path_factory.mktemp("nova-box-own")
    ) as box:
        yield box


NOVA_34_MAX_MICROVERSION = "2.104"


# -- helpers ---------------------------------------------------------------
def password_session(box):
    auth = v3.Password(
        auth_url=box.auth_url,
        username=box.username,
        password=box.password,
        project_name=box.project_name,
        user_domain_name=box.user_domain_name,
        project_domain_name=box.project_domain_name,
    )
    return ks_session.Session(auth=auth)


def appcred_session(box):
    auth = v3.ApplicationCredential(
        auth_url=box.auth_url,
        application_credential_id=box.app_cred_id,
        application_credential_secret=box.app_cred_secret,
    )
    return ks_session.Session(auth=auth)


def novaclient_for(sess, version=None):
    """A novaclient at ``version``, or at the highest version both sides
    speak (negotiated like "2.latest")."""
    if version is None:
        probe = nova_client.Client("2.1", session=sess)
        version = api_versions.discover_version(
            probe, api_versions.APIVersion("2.latest")
        ).get_string()
    return nova_client.Client(version, session=sess)


def call(box, sess, method, path, microversion="2.1", body=None, **kw):
    """Raw compute API call; returns (status, json-or-text)."""
    resp = sess.request(
        box.compute_url + path,
        method,
        json=body,
        raise_exc=False,
        headers={"OpenStack-API-Version": f"compute {microversion}"},
        **kw,
    )
    try:
        data = resp.json()
    except ValueError:
        data = resp.text
    return resp.status_code, data


def compute_service(nova, host):
    (svc,) = nova.services.list(host=host, binary="nova-compute")
    return svc


def server_host(server):
    return getattr(server, "OS-EXT-SRV-ATTR:host")


def task_state(server):
    return getattr(server, "OS-EXT-STS:task_state")


def wait_landed(nova, server_id, source, timeout=60):
    """Wait for an evacuation from ``source`` to finish; return the server.

    Nova sets task_state None (after the spawn on the destination) *before*
    it moves instance.host to the destination: "ACTIVE, no task state" alone
    does not mean the evacuation is over. Wait for the host to change too.
    """

    def landed():
        s = nova.servers.get(server_id)
        if s.status == "ERROR":
            raise AssertionError(
                "server {} went to ERROR: {}".format(server_id, getattr(s, "fault", None))
            )
        done = s.status != "REBUILD" and task_state(s) is None and server_host(s) != source
        return s if done else None

    return wait_for(landed, timeout, what=f"evacuation of {server_id}")


def delete_servers(nova, ids, timeout=120):
    for sid in ids:
        try:
            nova.servers.delete(sid)
        except nova_exc.NotFound:
            pass

    def gone():
        left = {s.id for s in nova.servers.list(search_opts={"all_tenants": 1})}
        return not (left & set(ids))

    wait_for(gone, timeout, interval=0.5, what="servers deleted")


IN_FLIGHT = ("accepted", "pre-migrating", "migrating", "running")


def recover_host(box, nova, host, timeout=60):
    """Let the host's evacuations finish, power it back on, wait for them
    to be `completed`, then un-force its service and wait for it to be up.

    (An evacuation that is still in flight when the source's nova-compute
    starts ends `done` after that start and stays `done`: un-forcing then
    fails until the next restart.)"""

    def evacuations_from_host():
        return [
            m for m in nova.migrations.list(migration_type="evacuation") if m.source_compute == host
        ]

    wait_for(
        lambda: not any(m.status in IN_FLIGHT for m in evacuations_from_host()),
        timeout,
        interval=0.5,
        what=f"evacuations from {host} settled",
    )
    box.start(host)
    wait_for(
        lambda: not any(m.status == "done" for m in evacuations_from_host()),
        timeout,
        what=f"evacuations from {host} completed",
    )
    svc = compute_service(nova, host)
    if svc.forced_down:
        nova.services.force_down(svc.id, False)
    wait_for(lambda: compute_service(nova, host).state == "up", timeout, what=f"{host} up")


@pytest.fixture(scope="module")
def sess(nova_box):
    return password_session(nova_box)


@pytest.fixture(scope="module")
def nova(sess):
    return novaclient_for(sess)


# -- boot, identity, versions ------------------------------------------------
def test_boot_time_and_memory(nova_box):
    rss_mb = nova_box.rss_kb() / 1024
    print(f"\nnova box: boot {nova_box.boot_seconds:.2f}s, RSS {rss_mb:.0f} MB")
    assert nova_box.boot_seconds < 30
    assert rss_mb < 500


def test_password_token_and_catalog(nova_box, sess):
    assert sess.get_token()
    endpoint = sess.get_endpoint(
        service_type="compute", interface="public", region_name="RegionOne"
    )
    assert endpoint == nova_box.compute_url
    for interface in ("internal", "admin"):
        assert (
            sess.get_endpoint(service_type="compute", interface=interface) == nova_box.compute_url
        )
    status, data = call(nova_box, sess, "GET", "/servers")
    assert status == 200 and "servers" in data


def test_application_credential(nova_box):
    nova = novaclient_for(appcred_session(nova_box))
    assert len(nova.services.list(binary="nova-compute")) == 3


@pytest.mark.parametrize("token", [None, "bogus-token"])
def test_bad_or_missing_token_is_401(nova_box, token):
    headers = {"X-Auth-Token": token} if token else {}
    resp = requests.get(nova_box.compute_url + "/servers", headers=headers, timeout=10)
    assert resp.status_code == 401
    # The version document needs no token, as in a real cloud.
    assert requests.get(nova_box.compute_url, timeout=10).status_code == 200


def test_wrong_password_is_401(nova_box):
    auth = v3.Password(
        auth_url=nova_box.auth_url,
        username="admin",
        password="wrong",
        project_name="admin",
        user_domain_name="Default",
        project_domain_name="Default",
    )
    with pytest.raises(ks_exc.Unauthorized):
        ks_session.Session(auth=auth).get_token()


def test_revoked_token_reauthenticates(nova_box):
    sess = password_session(nova_box)
    token = sess.get_token()
    assert call(nova_box, sess, "GET", "/flavors")[0] == 200
    assert nova_box.revoke_tokens() >= 1
    resp = requests.get(
        nova_box.compute_url + "/flavors", headers={"X-Auth-Token": token}, timeout=10
    )
    assert resp.status_code == 401
    # keystoneauth re-authenticates once on a 401.
    assert call(nova_box, sess, "GET", "/flavors")[0] == 200
    assert sess.get_token() != token


def test_microversions(nova_box, nova):
    doc = requests.get(nova_box.compute_url, timeout=10).json()["version"]
    assert doc["version"] == NOVA_34_MAX_MICROVERSION
    assert doc["min_version"] == "2.1"
    # novaclient negotiates down to the highest version it knows.
    assert nova.api_version <= api_versions.APIVersion(NOVA_34_MAX_MICROVERSION)
    assert nova.api_version >= api_versions.APIVersion("2.95")


def test_services_up(nova_box, nova):
    def all_up():
        svcs = nova.services.list(binary="nova-compute")
        return sorted(
            s.host for s in svcs if s.state == "up" and s.status == "enabled" and not s.forced_down
        )

    assert wait_for(all_up, 15) == ["host1", "host2", "host3"]
    hosts = nova_box.hosts()
    assert sorted(hosts) == ["host1", "host2", "host3"]
    assert all(h["running"] is True for h in hosts.values())


# -- the HA scenario -----------------------------------------------------------
def test_crash_force_down_evacuate_recover(nova_box, sess, nova):
    log_start = len(nova_box.request_log())
    box = nova_box
    ids = box.create_servers("host1", 5, name_prefix="ha")
    try:
        for sid in ids:
            s = nova.servers.get(sid)
            assert s.status == "ACTIVE" and server_host(s) == "host1"
        svc = compute_service(nova, "host1")
        assert svc.state == "up"

        # While the compute is alive, Nova refuses to evacuate.
        status, data = call(
            box, sess, "POST", f"/servers/{ids[0]}/action", "2.95", {"evacuate": {}}
        )
        assert status == 400
        assert data["badRequest"]["message"] == ("Compute service of host1 is still in use.")

        # Power loss: missed heartbeats make the service "down".
        t_crash = time.monotonic()
        box.crash("host1")
        box.crash("host1")  # idempotent
        assert box.hosts()["host1"]["running"] is False
        wait_for(
            lambda: compute_service(nova, "host1").state == "down",
            box.service_down_time + box.report_interval + 5,
            what="host1 down",
        )
        seen_down = time.monotonic() - t_crash
        print(f"\nhost1 seen down {seen_down:.1f}s after the crash")
        # Down once the last heartbeat is service_down_time old: not before.
        assert box.service_down_time - box.report_interval - 1 <= seen_down
        assert seen_down <= box.service_down_time + box.report_interval + 4

        # Force it down (PUT /os-services/{uuid}, microversion >= 2.53).
        svc = nova.services.force_down(svc.id, True)
        assert svc.forced_down is True
        t_forced = time.time()

        # Evacuate without a target host: at 2.94 the server lands ACTIVE...
        status, data = call(
            box, sess, "POST", f"/servers/{ids[0]}/action", "2.94", {"evacuate": {}}
        )
        assert (status, data) == (200, "")
        # ... at >= 2.95 (here via novaclient's negotiated version) SHUTOFF.
        resp, body = nova.servers.evacuate(ids[1])
        assert resp.status_code == 200

        s0 = wait_landed(nova, ids[0], "host1")
        assert s0.status == "ACTIVE" and server_host(s0) in ("host2", "host3")
        s1 = wait_landed(nova, ids[1], "host1")
        assert s1.status == "SHUTOFF" and server_host(s1) in ("host2", "host3")
        assert getattr(s1, "OS-EXT-STS:vm_state") == "stopped"

        for sid in ids[:2]:
            (mig,) = nova.migrations.list(instance_uuid=sid, migration_type="evacuation")
            assert mig.status == "done"
            assert mig.source_compute == "host1"
            assert mig.dest_compute in ("host2", "host3")

        # Un-forcing now fails: its evacuations are still `done`.
        with pytest.raises(nova_exc.BadRequest) as err:
            nova.services.force_down(svc.id, False)
        assert err.value.code == 400
        assert (
            "Unable to force up host host1 as `done` evacuation "
            "migration records remain associated with the host" in err.value.message
        )

        # The request log shows the force-down before the evacuations (this test's part
        # of it: the box is shared by the whole session).
        log = box.request_log()[log_start:]
        evacs = [e for e in log if e["action"] == "evacuate"]
        assert [(e["status"], e["microversion"]) for e in evacs] == [
            (400, "2.95"),
            (200, "2.94"),
            (200, nova.api_version.get_string()),
        ]
        assert evacs[1]["path"] == f"/v2.1/servers/{ids[0]}/action"
        force = [
            e for e in log if e["method"] == "PUT" and e["path"] == f"/v2.1/os-services/{svc.id}"
        ]
        assert force[0]["status"] == 200
        assert force[0]["t"] <= t_forced <= evacs[1]["t"]

        # Power on: nova-compute's init completes the evacuations and
        # destroys the evacuated guests it still had.
        box.start("host1")
        box.start("host1")  # idempotent

        def completed():
            migs = [
                nova.migrations.list(instance_uuid=sid, migration_type="evacuation")[0]
                for sid in ids[:2]
            ]
            return all(m.status == "completed" for m in migs)

        wait_for(completed, 30, what="migrations completed")
        assert box.hosts()["host1"] == {"running": True, "instances_on_driver": 3}

        svc = nova.services.force_down(svc.id, False)
        assert svc.forced_down is False
        wait_for(lambda: compute_service(nova, "host1").state == "up", 15, what="host1 up")

        s0 = nova.servers.get(ids[0])
        assert s0.status == "ACTIVE" and server_host(s0) != "host1"
        s1 = nova.servers.get(ids[1])
        assert s1.status == "SHUTOFF" and server_host(s1) != "host1"
    finally:
        recover_host(box, nova, "host1")
        delete_servers(nova, ids)


def test_evacuation_rate(nova_box, sess, nova):
    """How fast Nova accepts evacuation requests (one client, in series)."""
    box = nova_box
    n = int(os.environ.get("NOVA_BOX_EVAC_N", "20"))
    ids = box.create_servers("host2", n, name_prefix="rate")
    try:
        box.crash("host2")
        nova.services.force_down(compute_service(nova, "host2").id, True)
        t0 = time.monotonic()
        for sid in ids:
            status, _ = call(box, sess, "POST", f"/servers/{sid}/action", "2.94", {"evacuate": {}})
            assert status == 200
        accepted = time.monotonic() - t0
        for sid in ids:
            s = wait_landed(nova, sid, "host2", timeout=120)
            assert s.status == "ACTIVE" and server_host(s) != "host2"
        landed = time.monotonic() - t0
        print(
            f"\n{n} evacuations: accepted in {accepted:.1f}s ({n / accepted:.1f}/s), "
            f"all ACTIVE elsewhere after {landed:.1f}s"
        )
        assert n / accepted > 1
    finally:
        recover_host(box, nova, "host2")
        delete_servers(nova, ids)


# -- control API -----------------------------------------------------------------
def test_servers_with_extra_specs_metadata_and_image(nova_box, sess):
    box = nova_box
    ids = box.create_servers(
        "host3",
        2,
        name_prefix="evac",
        flavor_extra_specs={"evacuable": "true"},
        metadata={"evacuable": "true", "tier": "db"},
        image="evacuable",
    )
    try:
        for sid in ids:
            status, data = call(box, sess, "GET", f"/servers/{sid}", "2.98")
            assert status == 200
            server = data["server"]
            assert server["OS-EXT-SRV-ATTR:host"] == "host3"
            # >= 2.47: the flavor is embedded, with its extra specs.
            assert server["flavor"]["extra_specs"] == {"evacuable": "true"}
            assert server["metadata"] == {"evacuable": "true", "tier": "db"}
            assert server["image"]["id"] == IMAGE_EVACUABLE
            # >= 2.98 embeds image properties, but only Glance's standard
            # ones: a custom "evacuable" property is not shown.
            assert "evacuable" not in server["image"]["properties"]
        # The image's own properties: Glance v2 (catalog type "image") ...
        glance = sess.get_endpoint(service_type="image", interface="public")
        image = sess.get(glance + "/v2/images/" + IMAGE_EVACUABLE).json()
        assert image["evacuable"] == "true"
        # ... or Nova's deprecated image proxy, up to microversion 2.35.
        status, data = call(box, sess, "GET", "/images/" + IMAGE_EVACUABLE, "2.35")
        assert status == 200
        assert data["image"]["metadata"]["evacuable"] == "true"
        assert call(box, sess, "GET", "/images/" + IMAGE_EVACUABLE, "2.36")[0] == 404
        status, data = call(box, sess, "GET", "/flavors/100", "2.61")
        assert data["flavor"]["extra_specs"] == {"evacuable": "true"}
    finally:
        delete_servers(novaclient_for(sess), ids)


def test_api_down_and_request_log(nova_box, sess, nova):
    box = nova_box
    box.clear_request_log()
    t0 = time.time()
    nova.flavors.list()
    box.set_api_down(True)
    try:
        with pytest.raises(nova_exc.ClientException) as err:
            nova.flavors.list()
        assert err.value.code == 503
        box.set_api_down(True, mode="reset")
        with pytest.raises(ks_exc.ConnectFailure):
            nova.flavors.list()
    finally:
        box.set_api_down(False)
    nova.flavors.list()
    log = box.request_log()
    assert [e["status"] for e in log] == [200, 503, None, 200]
    assert log[2].get("dropped") is True
    assert all(e["path"] == "/v2.1/flavors/detail" for e in log)
    assert t0 <= log[0]["t"]
    assert all(a["t"] <= b["t"] for a, b in zip(log, log[1:], strict=False))


def test_concurrent_clients(nova_box):
    """Several agents at once (threaded server, thread-safe Keystone)."""
    errors = []

    def worker():
        try:
            nova = novaclient_for(password_session(nova_box))
            for _ in range(5):
                nova.services.list(binary="nova-compute")
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors


# -- a second box: several bind addresses, clean stop -------------------------
def test_multiple_binds_and_clean_stop(tmp_path):
    require_nova_venv()
    box = NovaBox(hosts=("hostA",), binds=("127.0.0.2", "127.0.0.1"), state_dir=tmp_path / "box2")
    with box:
        assert box.auth_url.startswith(f"http://127.0.0.2:{box.port}/")
        assert box.compute_url == f"http://127.0.0.2:{box.port}/compute/v2.1"
        for addr in ("127.0.0.1", "127.0.0.2"):
            r = requests.get(f"http://{addr}:{box.port}/identity/v3", timeout=10)
            assert r.status_code == 200
        nova = novaclient_for(password_session(box))
        assert [s.host for s in nova.services.list(binary="nova-compute")] == ["hostA"]
        pid = box.pid
    assert box.returncode == 0
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert os.path.exists(box.log_path)
