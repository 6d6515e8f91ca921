"""Where each evacuated server is sent: spread by design over the eligible hosts, or left to
Nova's scheduler.

Concurrent evacuations left to the scheduler herd onto one host (it weighs hosts by a view
that the requests in flight have not changed yet): that host does every rebuild, one after
the other behind its resource lock, while the others idle. So with target_policy=spread
nova-ha names a host per server: of the eligible hosts, the least loaded (what it already
holds plus what this run sent it, weighted by the flavor's vCPUs) that has room for it and
is in its availability zone. The host is passed without force (from 2.29), so the scheduler
still checks it against its filters (aggregates, affinity...); a host it refuses is dropped
and the server is asked again with no host (server_lifecycle's fall-back).

Read once per run: one listing of the compute services (state, force-down, zone), one of
the hypervisors (their placement UUID; running_vms below 2.88) and one placement call (room
and usage); when placement cannot be read, only this run's assignments are counted.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nova_ha.lib import log
from nova_ha.openstack import placement
from nova_ha.openstack.exceptions import NovaError
from nova_ha.openstack.transport import parse_version

if TYPE_CHECKING:
    from nova_ha.openstack.compute import Nova
    from nova_ha.openstack.transport import Deadline
    from nova_ha.openstack.views import Hypervisor, Server, Service

LOG = log.get("targets")

POLICIES = ("spread", "scheduler")
HOST_WITHOUT_FORCE = (2, 29)  # below, a named host is forced past the scheduler's filters


@dataclass(frozen=True)
class Candidate:
    """An eligible target host: its zone, what it holds, and what it has free (None: not
    known, placement unread)."""

    name: str
    zone: str | None = None
    load: float = 0.0  # vCPUs of the servers it holds (placement), or their number
    room: placement.Room | None = None


def ineligible(service: Service, source: str, reserved: tuple[str, ...]) -> str | None:
    """Why a compute service's host cannot take evacuated servers; None when it can.
    Reserved hosts (target_hosts) are enabled before the run, so their being disabled is
    no reason."""
    if service.host == source:
        return "the failed host"
    if reserved and service.host not in reserved:
        return "not one of target_hosts"
    if service.forced_down:
        return "forced down"
    if service.state != "up":
        return "down"
    if service.status != "enabled" and service.host not in reserved:
        return "disabled"
    return None


def _size(server: Server) -> tuple[int, int]:
    """(vCPUs, RAM MB) of a server's flavor; (1, 0) when Nova did not embed it (< 2.47)."""
    return server.vcpus or 1, server.ram_mb or 0


class Spread:
    """Chooses a target per server among the candidates, counting what it assigned. Thread
    safe: the runner's workers ask it concurrently."""

    def __init__(self, candidates: list[Candidate]) -> None:
        self._hosts = {c.name: c for c in candidates}
        # vCPUs and RAM MB this run sent to each host
        self._sent: dict[str, tuple[float, float]] = {c.name: (0.0, 0.0) for c in candidates}
        self._lock = threading.Lock()

    @property
    def hosts(self) -> tuple[str, ...]:
        return tuple(sorted(self._hosts))

    def choose(self, server: Server) -> tuple[str | None, str]:
        """The target for `server` (None: the scheduler chooses) and why."""
        vcpus, ram_mb = _size(server)
        with self._lock:
            fitting = [
                c
                for c in self._hosts.values()
                if _in_zone(c, server.zone) and self._fits(c, vcpus, ram_mb)
            ]
            if not fitting:
                return None, self._none_why(server)
            best = min(fitting, key=lambda c: (c.load + self._sent[c.name][0], c.name))
            sent_vcpus, sent_ram = self._sent[best.name]
            self._sent[best.name] = (sent_vcpus + vcpus, sent_ram + ram_mb)
            load = best.load + sent_vcpus + vcpus
            return best.name, f"least loaded eligible host ({load:g} vCPUs with this one)"

    def _fits(self, candidate: Candidate, vcpus: int, ram_mb: int) -> bool:
        """Room for the server besides what this run already sent there."""
        room = candidate.room
        sent_vcpus, sent_ram = self._sent[candidate.name]
        return room is None or (
            room.vcpus >= sent_vcpus + vcpus and room.ram_mb >= sent_ram + ram_mb
        )

    def _none_why(self, server: Server) -> str:
        if not self._hosts:
            return "no eligible host known: the scheduler chooses"
        return f"no eligible host with room in zone {server.zone or 'any'}: the scheduler chooses"

    def drop(self, host: str | None) -> None:
        """A host Nova refused (or that broke a server): no more servers go there."""
        with self._lock:
            if host in self._hosts:
                LOG.info("target host %s refused: no more servers are sent there", host)
                del self._hosts[host]


def _in_zone(candidate: Candidate, zone: str | None) -> bool:
    return not zone or candidate.zone is None or candidate.zone == zone


class Scheduler(Spread):
    """target_policy=scheduler without target_hosts: Nova's scheduler chooses every time."""

    def __init__(self) -> None:
        super().__init__([])

    def choose(self, server: Server) -> tuple[str | None, str]:
        return None, "target_policy=scheduler: the scheduler chooses"


@dataclass(frozen=True)
class Reads:
    """The chooser's reads that need no server: started with the run's first reads
    (evacuation.Prefetch), each round trip saved brings the first request sooner. Each
    call returns the read's result or raises its NovaError."""

    services: Callable[[], list[Service]]
    hypervisors: Callable[[], list[Hypervisor]]

    @classmethod
    def now(cls, nova: Nova, deadline: Deadline) -> Reads:
        """Reads made when asked."""
        return cls(lambda: nova.services(deadline), lambda: nova.hypervisors(deadline))


def read(
    nova: Nova,
    deadline: Deadline,
    source: str,
    servers: list[Server],
    policy: str,
    reserved: tuple[str, ...] = (),
    early: Reads | None = None,
) -> Spread:
    """The chooser of one run: reads the services, hypervisors and placement once (the
    first two from `early` when given)."""
    reads = early or Reads.now(nova, deadline)
    if not reserved and policy == "scheduler":
        return Scheduler()
    if not reserved and parse_version(nova.evacuate_microversion(deadline)) < HOST_WITHOUT_FORCE:
        LOG.info("Nova below 2.29 would force a named host past its scheduler: it chooses")
        return Scheduler()
    try:
        services = reads.services()
    except NovaError as err:
        LOG.warning("cannot list compute services (%s): the scheduler chooses", err)
        return Scheduler()
    eligible = []
    for service in services:
        why = ineligible(service, source, reserved)
        LOG.debug("target %s: %s", service.host, why or "eligible")
        if why is None:
            eligible.append(service)
    return Spread(_candidates(nova, deadline, eligible, servers, reads))


def _candidates(
    nova: Nova, deadline: Deadline, eligible: list[Service], servers: list[Server], reads: Reads
) -> list[Candidate]:
    """The eligible hosts with their load and room (placement; running_vms below 2.88)."""
    try:
        hypervisors = {h.service_host: h for h in reads.hypervisors()}
    except NovaError as err:
        LOG.info("cannot list hypervisors (%s): counting this run's servers only", err)
        hypervisors = {}
    rooms = _rooms(nova, deadline, servers)
    candidates = []
    for service in eligible:
        hypervisor = hypervisors.get(service.host)
        room = rooms.get(hypervisor.id) if hypervisor and rooms is not None else None
        if rooms is not None and hypervisor is not None and room is None:
            LOG.debug("target %s: no room in placement", service.host)
            continue
        load = room.used_vcpus if room else float((hypervisor and hypervisor.running_vms) or 0)
        candidates.append(Candidate(service.host, service.zone, load, room))
    return candidates


def _rooms(
    nova: Nova, deadline: Deadline, servers: list[Server]
) -> dict[str, placement.Room] | None:
    """Placement's providers with room for the smallest server (None: placement unread)."""
    sizes = [_size(s) for s in servers] or [(1, 0)]
    vcpus, ram_mb = min(v for v, _ in sizes), min(r for _, r in sizes)
    try:
        return nova.placement_rooms(deadline, vcpus, ram_mb)
    except NovaError as err:
        LOG.info("placement unreadable (%s): counting this run's servers only", err)
        return None
