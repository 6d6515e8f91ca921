"""Nova deployed as in production (testbed/nova_prod: nova-api and placement under gunicorn,
separate conductor, scheduler and computes, MariaDB, RabbitMQ): what nova-ha relies on, as
Nova itself answers it, and one fence end to end with the real fence agent.

Skipped when mariadb-server/rabbitmq-server are missing, except under CI (then a failure)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from testbed.nova_box import available
from testbed.nova_prod import NovaProd, missing_debian_packages
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


class Api:
    """Raw compute API calls with a token of the bed's Keystone."""

    def __init__(self, cloud: NovaProd) -> None:
        self.cloud = cloud
        self.token = token(cloud)

    def call(self, method: str, path: str, body=None, microversion: str = "latest"):
        """(status, body, answered microversion)."""
        headers = {"X-Auth-Token": self.token, "Content-Type": "application/json"}
        if microversion:
            headers["OpenStack-API-Version"] = f"compute {microversion}"
        return _http(method, self.cloud.compute_url + path, body, headers)

    def service_id(self, host: str) -> str:
        _, body, _ = self.call("GET", f"/os-services?binary=nova-compute&host={host}")
        return body["services"][0]["id"]

    def evacuate(self, server_id: str, microversion: str, **options):
        return self.call(
            "POST", f"/servers/{server_id}/action", {"evacuate": options}, microversion
        )

    def settled(self, server_id: str, away_from: str) -> dict:
        """The server once its evacuation away from `away_from` is over."""

        def landed():
            server = self.call("GET", f"/servers/{server_id}")[1]["server"]
            moved = server["OS-EXT-SRV-ATTR:host"] != away_from
            return server if moved and server["OS-EXT-STS:task_state"] is None else None

        return wait_until(landed, 120, interval=0.5)

    def migrations(self, server_id: str) -> list[dict]:
        _, body, _ = self.call("GET", f"/os-migrations?instance_uuid={server_id}")
        return body["migrations"]


def _http(method: str, url: str, body, headers: dict):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            status, raw, answered = resp.status, resp.read(), resp.headers
    except urllib.error.HTTPError as e:
        status, raw, answered = e.code, e.read(), e.headers
    version = (answered.get("OpenStack-API-Version") or "").split()[-1:] or [None]
    return status, json.loads(raw) if raw else None, version[0]


def token(cloud: NovaProd) -> str:
    auth = {
        "identity": {
            "methods": ["password"],
            "password": {
                "user": {"name": cloud.username, "domain": {"name": "Default"}, "password": cloud.password}
            },
        },
        "scope": {"project": {"name": cloud.project_name, "domain": {"name": "Default"}}},
    }
    request = urllib.request.Request(
        cloud.auth_url + "/auth/tokens",
        data=json.dumps({"auth": auth}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        assert resp.status == 201
        return resp.headers["X-Subject-Token"]


def _host_down_and_forced(api: Api, host: str) -> None:
    api.cloud.crash(host)
    status, _, _ = api.call(
        "PUT", f"/os-services/{api.service_id(host)}", {"forced_down": True}, "2.53"
    )
    assert status == 200


def test_keystone_tokens_and_the_newest_microversion(cloud):
    api = Api(cloud)
    status, body, _ = _http("GET", cloud.compute_url.rsplit("/v2.1", 1)[0] + "/", None, {})
    newest = next(v["version"] for v in body["versions"] if v["id"] == "v2.1")
    assert status == 200 and tuple(map(int, newest.split("."))) >= (2, 95)
    status, _, answered = api.call("GET", "/servers", microversion="latest")
    assert status == 200 and answered == newest
    assert api.call("GET", "/servers", microversion="2.94")[2] == "2.94"
    # keystonemiddleware asks the bed's Keystone: an unknown or revoked token is refused.
    assert _http("GET", cloud.compute_url + "/servers", None, {"X-Auth-Token": "bogus"})[0] == 401
    cloud.revoke_tokens()
    assert api.call("GET", "/servers")[0] == 401


def test_evacuation_lands_active_at_2_94_and_shutoff_at_2_95(cloud):
    api = Api(cloud)
    at_294, at_295 = cloud.create_servers("host1", 2, name_prefix="landing")
    _host_down_and_forced(api, "host1")
    assert api.evacuate(at_294, "2.94")[:3:2] == (200, "2.94")
    assert api.evacuate(at_295, "2.95")[:3:2] == (200, "2.95")
    assert api.settled(at_294, "host1")["status"] == "ACTIVE"
    assert api.settled(at_295, "host1")["status"] == "SHUTOFF"


def test_named_target_is_accepted_without_force_and_used(cloud):
    api = Api(cloud)
    (server_id,) = cloud.create_servers("host1", 1, name_prefix="named")
    _host_down_and_forced(api, "host1")
    status, _, answered = api.evacuate(server_id, "2.29", host="host3")
    assert (status, answered) == (200, "2.29")
    server = api.settled(server_id, "host1")
    assert (server["OS-EXT-SRV-ATTR:host"], server["status"]) == ("host3", "ACTIVE")


def test_named_target_disabled_is_refused(cloud):
    """Nova accepts the request (200) and its scheduler refuses the disabled host: the
    evacuation ends in 'error' and the server stays on its dead source, untouched."""
    api = Api(cloud)
    (server_id,) = cloud.create_servers("host1", 1, name_prefix="refused")
    _host_down_and_forced(api, "host1")
    host3 = api.service_id("host3")
    assert api.call("PUT", f"/os-services/{host3}", {"status": "disabled"}, "2.53")[0] == 200
    status, body, _ = api.evacuate(server_id, "2.94", host="host3")
    refused_at_once = status >= 400
    if not refused_at_once:
        assert status == 200, body
        done = wait_until(
            lambda: [m for m in api.migrations(server_id) if m["status"] in ("error", "failed")],
            60,
            interval=0.5,
        )
        assert done
    server = api.call("GET", f"/servers/{server_id}")[1]["server"]
    assert server["OS-EXT-SRV-ATTR:host"] == "host1", server


def test_fence_agent_powers_off_host1_and_its_servers_run_elsewhere(cloud, cib_file):
    ids = cloud.create_servers("host1", 6, name_prefix="fenced")
    for bed in _bed(cloud, cib_file):
        t0 = time.time()
        done = bed.fence(evacuate_timeout=240, timeout=300)
        assert done.returncode == 0, done.stderr
        assert bed.bmcs["host1"].power_state == "off" and bed.off_time("host1") >= t0
        assert f"{len(ids)} evacuated, 0 failed" in done.stderr
        assert not cloud.hosts()["host1"]["running"]
    observer = Observer(cloud)
    for server_id in ids:
        server = observer.server(server_id)
        assert server["host"] in ("host2", "host3") and server["status"] == "ACTIVE", server
    assert observer.service("host1").forced_down
