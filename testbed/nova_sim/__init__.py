"""A fast, hand-written Nova + Keystone HTTP simulator for nova-ha's tests.

``NovaSim`` serves, from one ``ThreadingHTTPServer`` (stdlib only):

* a Keystone v3 subset under ``/identity`` (version discovery, password and
  application-credential tokens with a service catalog, token validation and
  revocation);
* a Nova compute API subset under ``/compute`` (version discovery,
  microversions 2.1 .. 2.104 as in nova 34.0.0, os-services, servers, server
  actions evacuate/os-resetState/os-stop/os-start, os-migrations, the image
  proxy, flavors and their extra specs, os-hypervisors);
* a control API under ``/_testbed`` so tests can drive the simulated world the
  same way they would drive a real test box.

Behaviour, status codes and error messages follow nova 34.0.0's source
(nova/api/openstack/compute/*.py, nova/compute/api.py, nova/conductor/manager.py,
nova/compute/manager.py). Where the simulator simplifies, the docstring of the
method says so.

The simulated world: compute hosts (running or crashed, with heartbeats),
nova-compute services (enabled/disabled, forced_down), servers, flavors,
images and migration records. Background work (server builds, stops, starts,
evacuations) runs on one engine thread driven by a timer heap; a step that has
to run on a compute host that is not running waits until that host is started
again, like an RPC message waiting in its queue.

The package: ``core`` (state, HTTP server, engine, routing), ``world`` (lookups and
record makers), ``workload`` (per-compute work and the scheduler), ``faults`` (injected
failures), one module per API (``keystone``,
``compute`` for the compute API's entry and routes, ``servers``, ``actions``,
``services``, ``migrations``, ``inventory`` for images, flavors and hypervisors) and
``control`` (the test-control API); ``model`` holds Nova's constants and the records.
``NovaSim`` is the core with every API mixed in.
"""

from __future__ import annotations

from .actions import ActionsApi
from .compute import ComputeApi
from .control import Control
from .core import SimCore
from .faults import Faults
from .inventory import InventoryApi
from .keystone import KeystoneApi
from .migrations import MigrationsApi
from .model import NOVA_MAX_VERSION, NOVA_MIN_VERSION
from .servers import ServersApi
from .services import ServicesApi
from .workload import Workload
from .world import World

__all__ = ["NOVA_MAX_VERSION", "NOVA_MIN_VERSION", "NovaSim"]


class NovaSim(
    KeystoneApi,
    ComputeApi,
    ServersApi,
    ActionsApi,
    ServicesApi,
    MigrationsApi,
    InventoryApi,
    Control,
    Faults,
    Workload,
    World,
    SimCore,
):
    """Nova (compute API 2.1 .. 2.104) + Keystone v3 simulator.

    Construction arguments:
        hosts: compute host names, each with an enabled, up nova-compute service.
        bind: an address or a list of addresses to listen on (same port on all).
        port: TCP port, 0 for an ephemeral one.
        max_version / min_version: the compute microversion range advertised.

    Tunables (plain attributes, safe to change at any time):
        latency: seconds added to every identity/compute request (served concurrently).
        service_down_time: nova's ``service_down_time``: a crashed host's service is
            "down" once its last heartbeat is older than this.
        report_interval: heartbeat period of running computes.
        evacuate_delay: seconds from the evacuate call to the rebuild reaching the
            destination compute (the scheduler runs half-way); a float or a callable
            ``f(server_dict) -> float``.
        claim_seconds, rebuild_seconds, start_seconds, compute_slots: per-compute work
            (a number or a dict host -> number), host_subset_size and
            shuffle_best_same_weighed_hosts: the scheduler's choice. See README.md
            (the model, the defaults and their calibration on the real box).
        evacuate_finish_window: if > 0, the server shows vm_state active/task None
            still on the source host for this long before it moves (and, if the
            target state is stopped, before it is powered off), as nova's compute
            manager does between ``_update_instance_after_spawn`` and
            ``finish_evacuation``. Default 0: the final update is atomic.
        build_delay / action_delay: time for POST /servers builds and os-stop/os-start.
        host_capacity: servers per host (placement); an int, a dict host->int, or None.
        shared_storage: whether instance files are on shared storage (an evacuate
            below 2.14 with a mismatching ``onSharedStorage`` fails, as nova's
            InvalidSharedStorage path).
        token_ttl: keystone token lifetime in seconds.
    """
