"""Where evacuated servers go (nova_ha.lib.targets): which hosts are eligible and why not,
the choice per server (least loaded, zone, room, weighted by flavor), a refused host dropped,
and the one read per run with its fall-backs (placement unreadable: counting only)."""

from __future__ import annotations

import threading

import pytest

from nova_ha.lib import evacuation, targets
from nova_ha.lib.targets import Candidate, Spread
from nova_ha.openstack.exceptions import Forbidden, Unavailable
from nova_ha.openstack.placement import Room
from nova_ha.openstack.transport import Deadline
from nova_ha.openstack.views import Hypervisor, Server, Service


def _service(host: str, status="enabled", state="up", forced_down=False, zone="nova") -> Service:
    return Service(f"id-{host}", host, status, state, forced_down, None, zone=zone)


def _server(sid="s", zone=None, vcpus=None, ram_mb=None) -> Server:
    return Server(id=sid, host="host1", zone=zone, vcpus=vcpus, ram_mb=ram_mb)


# (service, reserved target_hosts) -> why it is not eligible (None: eligible)
ELIGIBILITY = [
    (_service("host2"), (), None),
    (_service("host1"), (), "the failed host"),
    (_service("host2", forced_down=True), (), "forced down"),
    (_service("host2", state="down"), (), "down"),
    (_service("host2", status="disabled"), (), "disabled"),
    (_service("host2", status="disabled"), ("host2",), None),  # reserved: enabled first
    (_service("host3"), ("host2",), "not one of target_hosts"),
    (_service("host2", state="down"), ("host2",), "down"),
]


@pytest.mark.parametrize("service, reserved, why", ELIGIBILITY)
def test_eligibility(service, reserved, why) -> None:
    assert targets.ineligible(service, "host1", reserved) == why


# candidates, the servers chosen for in order -> the hosts chosen
CHOICES = [
    # least loaded first, ties by name; each choice adds to the host's load
    ([Candidate("b"), Candidate("a")], [_server()] * 4, ["a", "b", "a", "b"]),
    ([Candidate("a", load=2), Candidate("b")], [_server()] * 3, ["b", "b", "a"]),
    # weighted by the flavor's vCPUs
    ([Candidate("a"), Candidate("b")], [_server(vcpus=4), _server(), _server()], ["a", "b", "b"]),
    # the server's zone; a host of unknown zone is left to the scheduler's check
    ([Candidate("a", "az1"), Candidate("b", "az2")], [_server(zone="az2")] * 2, ["b", "b"]),
    ([Candidate("a", "az1"), Candidate("b", None)], [_server(zone="az3")], ["b"]),
    ([Candidate("a", "az1")], [_server(zone="az2")], [None]),
    # room in placement: what this run sent counts against it
    (
        [Candidate("a", room=Room(2, 4096, 0)), Candidate("b", load=5, room=Room(8, 8192, 5))],
        [_server(vcpus=1, ram_mb=2048)] * 4,
        ["a", "a", "b", "b"],
    ),
    ([Candidate("a", room=Room(1, 512, 7))], [_server(vcpus=2)], [None]),
    ([Candidate("a", room=Room(4, 512, 0))], [_server(vcpus=1, ram_mb=1024)], [None]),
    ([], [_server()], [None]),
]


@pytest.mark.parametrize("candidates, servers, chosen", CHOICES)
def test_choice(candidates, servers, chosen) -> None:
    spread = Spread(candidates)
    assert [spread.choose(s)[0] for s in servers] == chosen


def test_a_dropped_host_is_chosen_no_more_and_the_reasons_say_why() -> None:
    spread = Spread([Candidate("a"), Candidate("b")])
    assert spread.choose(_server()) == ("a", "least loaded eligible host (1 vCPUs with this one)")
    spread.drop("b")
    spread.drop("nosuch")  # a host it never had: nothing to drop
    assert [spread.choose(_server())[0] for _ in range(2)] == ["a", "a"]
    spread.drop("a")
    assert spread.choose(_server()) == (None, "no eligible host known: the scheduler chooses")
    assert targets.Scheduler().choose(_server())[0] is None


class ReadNova:
    """The three reads of targets.read, each answering or failing as told."""

    def __init__(self, microversion="2.94", services=None, hypervisors=None, rooms=None):
        self.microversion, self.calls = microversion, []
        self._services = (
            services
            if services is not None
            else [
                _service("host1", state="down", forced_down=True),
                _service("host2"),
                _service("host3"),
                _service("host4", status="disabled"),
            ]
        )
        self._hypervisors = hypervisors
        self._rooms = rooms

    def evacuate_microversion(self, deadline):
        return self.microversion

    def services(self, deadline, host=None):
        self.calls.append("services")
        if isinstance(self._services, Exception):
            raise self._services
        return self._services

    def hypervisors(self, deadline):
        self.calls.append("hypervisors")
        if self._hypervisors is None:
            raise Unavailable("HTTP 503", 503)
        return self._hypervisors

    def placement_rooms(self, deadline, vcpus, ram_mb):
        self.calls.append(f"placement {vcpus} {ram_mb}")
        if isinstance(self._rooms, Exception) or self._rooms is None:
            raise self._rooms or Forbidden("HTTP 403", 403)
        return self._rooms


def _read(nova, policy="spread", reserved=(), servers=None) -> Spread:
    servers = servers or [_server("a", vcpus=2, ram_mb=1024), _server("b", vcpus=1, ram_mb=512)]
    return targets.read(nova, Deadline(5), "host1", servers, policy, reserved)


def _hypervisor(host: str, running_vms=None) -> Hypervisor:
    return Hypervisor(f"uuid-{host}", host, "up", "enabled", host, running_vms)


def test_read_once_with_placement_room_and_usage() -> None:
    nova = ReadNova(
        hypervisors=[_hypervisor("host2"), _hypervisor("host3")],
        rooms={"uuid-host2": Room(8, 8192, 6)},  # host3 has no room for the smallest
    )
    spread = _read(nova)
    assert nova.calls == ["services", "hypervisors", "placement 1 512"]  # once per run
    assert spread.hosts == ("host2",)


def test_read_counts_only_when_placement_is_unreadable() -> None:
    nova = ReadNova(hypervisors=[_hypervisor("host2", running_vms=3), _hypervisor("host3")])
    spread = _read(nova)
    assert spread.hosts == ("host2", "host3")  # host4 disabled, host1 the source
    # host2 holds 3 (running_vms, below 2.88): host3 takes 3 first, then the tie goes by name
    assert [spread.choose(_server())[0] for _ in range(4)] == ["host3"] * 3 + ["host2"]


@pytest.mark.parametrize(
    "nova, policy, reserved, hosts",
    [
        (ReadNova(), "scheduler", (), ()),
        (ReadNova(microversion="2.28"), "spread", (), ()),  # a named host would be forced
        (ReadNova(services=Unavailable("HTTP 503", 503)), "spread", (), ()),
        (ReadNova(), "spread", (), ("host2", "host3")),  # hypervisors unreadable: counting
        (ReadNova(), "scheduler", ("host4",), ("host4",)),  # reserved: spread over those
        (ReadNova(microversion="2.28"), "spread", ("host4", "host9"), ("host4",)),
    ],
)
def test_read_policies_and_fall_backs(nova, policy, reserved, hosts) -> None:
    assert _read(nova, policy, reserved).hosts == hosts


def test_early_reads_are_used_instead_of_asking_again() -> None:
    """Services and hypervisors read early (Prefetch) are what the chooser is made of."""
    nova = ReadNova(rooms=Unavailable("HTTP 503", 503))
    early = targets.Reads(
        lambda: [_service("host1", state="down", forced_down=True), _service("host3")],
        lambda: [_hypervisor("host3", running_vms=2)],
    )
    spread = targets.read(nova, Deadline(5), "host1", [_server()], "spread", (), early)
    assert spread.hosts == ("host3",)
    assert "services" not in nova.calls and "hypervisors" not in nova.calls


def test_an_early_read_that_failed_leaves_the_scheduler_to_choose() -> None:
    nova = ReadNova()
    failed = Unavailable("HTTP 503", 503)

    def services() -> list[Service]:
        raise failed

    early = targets.Reads(services, lambda: [])
    assert targets.read(nova, Deadline(5), "host1", [_server()], "spread", (), early).hosts == ()


class ConcurrentReadsNova:
    """Each first read waits until `expected` reads are under way at once (a Barrier):
    read one after the other, they time out."""

    def __init__(self, expected: int) -> None:
        self.barrier = threading.Barrier(expected, timeout=5)
        self.calls: list[str] = []

    def _meet(self, name: str) -> None:
        self.calls.append(name)
        self.barrier.wait()

    def servers_on(self, deadline, host):
        self._meet("servers")
        return [_server()]

    def evacuation_migrations(self, deadline, source_host=None, server_id=None):
        self._meet("migrations")
        return []

    def services(self, deadline, host=None):
        self._meet("services")
        return [_service("host2")]

    def hypervisors(self, deadline):
        self._meet("hypervisors")
        return [_hypervisor("host2")]


@pytest.mark.parametrize(
    "policy, reads", [("spread", 4), ("scheduler", 2)], ids=["spread", "scheduler"]
)
def test_prefetch_reads_what_the_policy_needs_at_once(policy, reads) -> None:
    """Spread targets: the chooser's services and hypervisors are read beside the host's
    servers and the incident's earlier requests, all four at once; the scheduler's
    policy reads neither."""
    nova = ConcurrentReadsNova(reads)
    prefetch = evacuation.Prefetch(nova, Deadline(10), "host1", lambda: 0.0, policy)
    assert [s.id for s in prefetch.servers()] == ["s"]
    assert prefetch.earlier() == set()
    if policy == "spread":
        assert prefetch.targets is not None
        assert [s.host for s in prefetch.targets.services()] == ["host2"]
        assert [h.service_host for h in prefetch.targets.hypervisors()] == ["host2"]
    else:
        assert prefetch.targets is None
    assert sorted(nova.calls) == sorted(
        ["servers", "migrations"] + (["services", "hypervisors"] if policy == "spread" else [])
    )
