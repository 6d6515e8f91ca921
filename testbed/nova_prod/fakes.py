"""What every Nova process of the production-shaped bed gets besides Nova itself.

Run under ``.venv-nova``. The bed has no Glance, Neutron or Cinder: each Nova process
(nova-api workers, conductor, scheduler, computes) loads Nova's own functional-test fakes
for them, as the one-process box does. Their data is static (the same images everywhere;
servers are created with ``networks: none``), so one copy per process is consistent.

The computes run ``nova.virt.fake.FakeDriver`` with a per-host delay of spawns (builds,
rebuilds, evacuations) and power-ons, read from ``delays.json`` in the bed's state dir at
each call, so that benchmarks can emulate per-compute work and calibrate it while the bed
runs.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from testbed.nova_box import server as box_server

DELAYS_FILE = "delays.json"
DELAY_KINDS = ("spawn", "power_on")


def install_fakes() -> Any:
    """Nova's fake Glance (with the box's evacuable image), Neutron and Cinder, in this
    process. Returns the Glance fake (its ``images`` dict)."""
    from nova import monkey_patch

    monkey_patch.patch(backend="threading")  # before anything imports eventlet
    import nova.conf
    from nova.tests import fixtures as nova_fixtures

    harness = box_server._Harness(nova.conf.CONF)
    glance = harness.useFixture(nova_fixtures.GlanceFixture(harness))
    image = dict(nova_fixtures.GlanceFixture.image1)
    image.update(
        {
            "id": box_server.IMAGE_EVACUABLE,
            "name": "cirros-evacuable",
            "properties": dict(image["properties"], evacuable="true"),
        }
    )
    glance.create(None, image)
    harness.useFixture(nova_fixtures.NeutronFixture(harness))
    harness.useFixture(nova_fixtures.CinderFixture(harness))
    return glance


def read_delay(state_dir: str, kind: str, host: str) -> float:
    """The delay of ``kind`` (spawn or power_on) on ``host``: its own, else ``*``, else 0."""
    try:
        with open(os.path.join(state_dir, DELAYS_FILE)) as f:
            table = json.load(f).get(kind, {})
    except (OSError, ValueError):
        return 0.0
    return float(table.get(host, table.get("*", 0.0)))


def write_delay(state_dir: str, kind: str, seconds: float, host: str | None) -> dict:
    """Set one delay (``host`` None: every host without its own); returns the whole table."""
    path = os.path.join(state_dir, DELAYS_FILE)
    try:
        with open(path) as f:
            table = json.load(f)
    except (OSError, ValueError):
        table = {}
    kinds = table.setdefault(kind, {})
    if host is None:
        kinds.clear()  # one delay for all: per-host ones go
    kinds[host or "*"] = seconds
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(table, f)
    os.replace(tmp, path)  # computes read it at any time: never half-written
    return table


def slow_fake_driver(state_dir: str, host: str) -> None:
    """FakeDriver.spawn and power_on of this compute wait their configured delay first."""
    from nova.virt import fake

    if "rebuild" in vars(fake.FakeDriver):  # would bypass spawn: this needs updating
        raise RuntimeError("FakeDriver.rebuild exists: slow_fake_driver covers spawn only")

    def delayed(kind: str, original: Any) -> Any:
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            seconds = read_delay(state_dir, kind, host)
            if seconds > 0:
                time.sleep(seconds)  # native threads: only this RPC handler waits
            return original(self, *args, **kwargs)

        return call

    fake.FakeDriver.spawn = delayed("spawn", fake.FakeDriver.spawn)
    fake.FakeDriver.power_on = delayed("power_on", fake.FakeDriver.power_on)


def fixed_node_identity(state_dir: str, host: str) -> str:
    """The same compute node UUID in every life of ``host``'s nova-compute.

    FakeDriver names its node's UUID with a per-process random sentinel, and writes no
    node identity file (``compute_id``): a restarted compute would report a new node, or
    refuse to start. Here the UUID follows from the host name and is written where Nova
    looks for it (the compute's state_path), as a real driver's first start would.
    """
    import uuid

    from oslo_utils.fixture import uuidsentinel

    node_uuid = str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{host}.nova-prod.invalid"))
    uuidsentinel._sentinels[f"node_{host}"] = node_uuid
    path = os.path.join(state_dir, "hosts", host, "state", "compute_id")
    if not os.path.exists(path):
        with open(path, "w") as f:
            f.write(node_uuid)
    return node_uuid
