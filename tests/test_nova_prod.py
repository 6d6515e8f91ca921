"""Nova deployed as in production (testbed/nova_prod: nova-api and placement under gunicorn,
separate conductor, scheduler and computes, MariaDB, RabbitMQ): what nova-ha relies on, as
Nova itself answers it, and one fence end to end with the real fence agent.

Skipped when mariadb-server/rabbitmq-server are missing, except under CI (then a failure)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from testbed.nova_box import available
from testbed.nova_prod import NovaProd, missing_debian_packages
from testbed.nova_prod.client import ComputeApi, http
from testbed.observe import Observer, back_in_service
from testbed.util import need
from tests.conftest import HOSTS, _bed
from tests.helpers import wait_until


@pytest.fixture(scope="module")
def nova_prod(tmp_path_factory) -> Iterator[NovaProd]:
    missing = missing_debian_packages()
    need(not missing, f"Debian packages for the production-shaped Nova: {' '.join(missing)}")
    need(available(), "the Nova venv (.venv-nova: make nova-venv)")
    with NovaProd(hosts=HOSTS, state_dir=tmp_path_factory.mktemp("nova-prod")) as cloud:
        yield cloud


@pytest.fixture
def cloud(nova_prod) -> Iterator[NovaProd]:
    """The module's bed; every host back in service after the test."""
    try:
        yield nova_prod
    finally:
        nova_prod.set_rebuild_delay(0)
        for host in HOSTS:
            back_in_service(nova_prod, host)


def _settled(api: ComputeApi, server_id: str, away_from: str) -> dict:
    """The server once its evacuation away from `away_from` is over."""
    return wait_until(lambda: api.landed(server_id, away_from), 120, interval=0.5)


def _host_down_and_forced(api: ComputeApi, host: str) -> None:
    api.cloud.crash(host)
    assert api.force_down(host) == 200


def test_keystone_tokens_and_the_newest_microversion(cloud):
    api = ComputeApi(cloud)
    status, body, _ = http("GET", cloud.compute_url.rsplit("/v2.1", 1)[0] + "/", None, {})
    newest = next(v["version"] for v in body["versions"] if v["id"] == "v2.1")
    assert status == 200 and tuple(map(int, newest.split("."))) >= (2, 95)
    status, _, answered = api.call("GET", "/servers", microversion="latest")
    assert status == 200 and answered == newest
    assert api.call("GET", "/servers", microversion="2.94")[2] == "2.94"
    # keystonemiddleware asks the bed's Keystone: an unknown or revoked token is refused.
    assert http("GET", cloud.compute_url + "/servers", None, {"X-Auth-Token": "bogus"})[0] == 401
    cloud.revoke_tokens()
    assert api.call("GET", "/servers")[0] == 401


def test_evacuation_lands_active_at_2_94_and_shutoff_at_2_95(cloud):
    api = ComputeApi(cloud)
    at_294, at_295 = cloud.create_servers("host1", 2, name_prefix="landing")
    _host_down_and_forced(api, "host1")
    assert api.evacuate(at_294, "2.94")[:3:2] == (200, "2.94")
    assert api.evacuate(at_295, "2.95")[:3:2] == (200, "2.95")
    assert _settled(api, at_294, "host1")["status"] == "ACTIVE"
    assert _settled(api, at_295, "host1")["status"] == "SHUTOFF"


def test_named_target_is_accepted_without_force_and_used(cloud):
    api = ComputeApi(cloud)
    (server_id,) = cloud.create_servers("host1", 1, name_prefix="named")
    _host_down_and_forced(api, "host1")
    status, _, answered = api.evacuate(server_id, "2.29", host="host3")
    assert (status, answered) == (200, "2.29")
    server = _settled(api, server_id, "host1")
    assert (server["OS-EXT-SRV-ATTR:host"], server["status"]) == ("host3", "ACTIVE")


def test_named_target_disabled_is_refused(cloud):
    """Nova 34 accepts the request (200) and its scheduler refuses the disabled host
    (NoValidHost): the evacuation ends in 'error', the server stays on its dead source."""
    api = ComputeApi(cloud)
    (server_id,) = cloud.create_servers("host1", 1, name_prefix="refused")
    _host_down_and_forced(api, "host1")
    host3 = api.service_id("host3")
    assert api.call("PUT", f"/os-services/{host3}", {"status": "disabled"}, "2.53")[0] == 200
    assert api.evacuate(server_id, "2.94", host="host3")[:3:2] == (200, "2.94")
    failed = wait_until(
        lambda: [m for m in api.migrations(server_id) if m["status"] == "error"], 60, interval=0.5
    )
    assert failed[0]["dest_compute"] in (None, "host3")
    server = api.server(server_id)
    assert server["OS-EXT-SRV-ATTR:host"] == "host1" and server["OS-EXT-STS:task_state"] is None


def test_fence_agent_powers_off_host1_and_its_servers_run_elsewhere(cloud, cib_file):
    cloud.create_servers("host1", 6, name_prefix="fenced")
    ids = [s["id"] for s in Observer(cloud).servers("host1")]
    for bed in _bed(cloud, cib_file):
        t0 = time.time()
        done = bed.fence(evacuate_timeout=240, timeout=300)
        assert done.returncode == 0, done.stderr
        assert bed.bmcs["host1"].power_state == "off" and bed.off_time("host1") >= t0
        assert f"{len(ids)} servers found" in done.stderr and ", 0 failed," in done.stderr
        assert not cloud.hosts()["host1"]["running"]
    observer = Observer(cloud)
    for server_id in ids:
        server = observer.server(server_id)
        assert server["host"] in ("host2", "host3") and server["status"] == "ACTIVE", server
    assert observer.service("host1").forced_down
