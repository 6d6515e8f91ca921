"""The OpenStack client's layers: one exception root, HTTP statuses mapped to classes, typed
views, and Nova writes for a failed host that take its power-off proof."""

from __future__ import annotations

import ast
import pathlib

import pytest

from nova_ha.errors import NovaHaError
from nova_ha.lib import params, proof
from nova_ha.openstack import exceptions, transport
from nova_ha.openstack.compute import Nova
from nova_ha.openstack.exceptions import NovaError, WrongHost
from nova_ha.openstack.transport import Deadline
from nova_ha.openstack.views import Hypervisor, Migration, Server, Service
from tests.helpers import cloud_client
from tests.test_hardening_nova import GOOD_SERVER, HostileNova, Reply, hostile  # noqa: F401

ROOT = pathlib.Path(__file__).resolve().parent.parent / "nova_ha"


def test_every_exception_of_nova_ha_has_the_one_root():
    """Each class nova-ha defines that derives from an exception derives from NovaHaError."""
    import importlib

    found = []
    for path in ROOT.rglob("*.py"):
        module = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.bases:
                cls = getattr(importlib.import_module(module), node.name, None)
                if isinstance(cls, type) and issubclass(cls, BaseException):
                    found.append(cls)
    assert len(found) >= 19
    assert [c for c in found if not issubclass(c, NovaHaError)] == []


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, exceptions.BadRequest),
        (401, exceptions.Unauthorized),
        (403, exceptions.Forbidden),
        (404, exceptions.NotFound),
        (409, exceptions.Conflict),
        (500, exceptions.Unavailable),
        (503, exceptions.Unavailable),
        (418, NovaError),
        (None, NovaError),
    ],
)
def test_status_maps_to_its_class(status, cls):
    err = transport.http_error("x", status)
    assert type(err) is cls and err.status == status and isinstance(err, NovaHaError)


def test_refusals_reach_the_caller_as_their_class(hostile):  # noqa: F811
    hostile.on("GET", r"/servers/s-1$", Reply({"itemNotFound": {"message": "gone"}}, 404))
    with pytest.raises(exceptions.NotFound):
        hostile.client().server(Deadline(5), "s-1")
    hostile.on("GET", r"/os-services", Reply({"forbidden": {"message": "admin only"}}, 403))
    with pytest.raises(exceptions.Forbidden) as raised:
        hostile.client().services(Deadline(5))
    assert raised.value.status == 403 and "admin only" in str(raised.value)


def test_a_failing_password_script_is_a_nova_error():
    parsed = params.parse(
        {
            "os_auth_url": "http://127.0.0.1:9/v3",
            "os_username": "u",
            "os_project_name": "p",
            "os_password_script": "/bin/false",
        },
        params.FENCE,
    )
    with pytest.raises(exceptions.AuthError) as raised:
        Nova.from_params(parsed)
    assert "os_password_script" in str(raised.value)


def test_views_are_typed_and_read_only():
    server = Server.from_api(
        dict(
            GOOD_SERVER,
            **{
                "OS-EXT-STS:task_state": "rebuilding",
                "flavor": {"extra_specs": {"evacuable": "1"}},
                "image": {"id": "i-1"},
                "fault": {"message": "boom"},
            },
        ),
        "test",
    )
    assert (server.id, server.host, server.image_id, server.fault) == (
        "s-1",
        "host1",
        "i-1",
        "boom",
    )
    assert server.rebuilding and server.extra_specs["evacuable"] == "1"
    with pytest.raises(AttributeError):
        server.host = "elsewhere"  # type: ignore[misc]
    with pytest.raises(TypeError):
        server.extra_specs["evacuable"] = "0"  # type: ignore[index]
    migration = Migration.from_api({"instance_uuid": "s-1", "status": "cancelled"}, "test")
    assert migration.failed and migration.finished
    with pytest.raises(NovaError, match="'instance_uuid' is missing"):
        Migration.from_api({"status": "done"}, "test")
    hypervisor = Hypervisor.from_api(
        {
            "id": 3,
            "hypervisor_hostname": "h",
            "state": "up",
            "status": "enabled",
            "service": {"host": "h"},
        },
        "test",
    )
    assert hypervisor.id == "3" and hypervisor.service_host == "h"


def test_hypervisors_of_the_simulator(sim_cloud):
    found = cloud_client(sim_cloud).hypervisors(Deadline(30))
    assert sorted(h.hostname for h in found) == ["host1", "host2"]
    assert all(h.state == "up" and h.service_host == h.hostname for h in found)


@pytest.fixture(scope="module")
def sim_cloud():
    from testbed.nova_sim import NovaSim

    with NovaSim(hosts=["host1", "host2"]) as cloud:
        yield cloud


def test_a_write_with_another_hosts_proof_is_never_sent(hostile):  # noqa: F811
    hostile.on("POST", r"/servers/s-1/action", Reply(b"", 202))
    client = hostile.client()
    other = proof.by_bmc("host2", "host2")
    server = Server("s-1", host="host1")
    service = Service("u-1", "host1", "enabled", "down", False, None)
    for write in (
        lambda: client.evacuate(Deadline(5), server, other),
        lambda: client.reset_state(Deadline(5), server, "error", other),
        lambda: client.force_down(Deadline(5), service, other),
    ):
        with pytest.raises(WrongHost) as raised:
            write()
        assert "host2" in str(raised.value) and isinstance(raised.value, NovaError)
    assert [p for m, p in hostile.log if m in ("POST", "PUT")] == []
    assert client.evacuate(Deadline(5), server, proof.by_bmc("host1", "host1")) is True


def test_a_proof_cannot_be_made_without_the_factories():
    with pytest.raises(TypeError):
        proof.PowerOffConfirmed("node1", "host1", "a test")


def test_an_evacuation_left_in_a_dead_targets_queue_is_not_taken_up():
    """The target died before its compute took the request up: no compute_rebuild_instance
    event (asked again now, that request would run when the target comes back). Once the
    target is back it takes it up, and the server lands there."""
    import time

    from testbed.nova_sim import NovaSim

    with NovaSim(hosts=["host1", "host2", "host3"]) as cloud:
        [sid] = cloud.create_servers("host1", 1)
        cloud.crash("host1")
        cloud.force_down("host1")
        cloud.crash("host2")
        client = cloud_client(cloud)
        server = client.server(Deadline(10), sid)
        fenced = proof.by_bmc("host1", "host1")
        assert client.evacuate(Deadline(10), server, fenced, target="host2") is True
        time.sleep(1.5)  # past the conductor: the request waits for host2's compute
        assert client.rebuild_taken_up_at(Deadline(10), sid, "host2") is None
        assert client.server(Deadline(10), sid).rebuilding
        back = time.time()
        cloud.start("host2")
        deadline = time.monotonic() + 20
        while client.server(Deadline(10), sid).status != "ACTIVE":
            assert time.monotonic() < deadline, client.server(Deadline(10), sid)
            time.sleep(0.2)
        taken_at = client.rebuild_taken_up_at(Deadline(10), sid, "host2")
        assert taken_at is not None and abs(taken_at - back) < 3, (taken_at, back)
        assert client.rebuild_taken_up_at(Deadline(10), sid, "host3") is None
        assert client.server(Deadline(10), sid).host == "host2"


def test_novas_clock_is_read_from_its_date_header(hostile, monkeypatch):  # noqa: F811
    """Nova's clock an hour behind ours: server_time says so after a reply (none before)."""
    import email.utils
    import http.server
    import time

    behind = 3600.0
    monkeypatch.setattr(
        http.server.BaseHTTPRequestHandler,
        "date_time_string",
        lambda self, timestamp=None: email.utils.formatdate(time.time() - behind, usegmt=True),
    )
    hostile.on("GET", r"/servers/s-1$", Reply({"server": GOOD_SERVER}))
    client = hostile.client()
    assert client.server_time() is None
    client.server(Deadline(5), "s-1")
    nova_now = client.server_time()
    assert nova_now is not None and abs(time.time() - behind - nova_now) < 2.0
