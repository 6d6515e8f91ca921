"""Placement's view of the compute hosts: what each has left, read in one call.

From microversion 2.88 Nova no longer reports hypervisors' usage; placement holds it. One
``GET /allocation_candidates`` for the smallest server to place returns every resource
provider with room for it, with each one's capacity and usage per resource class
(``provider_summaries``, placement 1.10). A compute node's provider has the compute node's
UUID, which is the hypervisor's id in Nova from 2.53.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nova_ha.openstack.exceptions import NovaError
from nova_ha.openstack.transport import excerpt, reply_field

if TYPE_CHECKING:
    from nova_ha.openstack.transport import Deadline, Transport

SERVICE_TYPE = "placement"
MICROVERSION = "1.10"  # provider_summaries: capacity and used per resource class
MAX_PROVIDERS = 20_000  # providers of one answer; more is a NovaError
WHAT = "GET /allocation_candidates (placement)"


@dataclass(frozen=True)
class Room:
    """What one resource provider has free, and what it already holds."""

    vcpus: float
    ram_mb: float
    used_vcpus: float


def rooms(transport: Transport, deadline: Deadline, vcpus: int, ram_mb: int) -> dict[str, Room]:
    """Resource providers (by UUID) with room for a server of `vcpus` and `ram_mb`, and
    what each has free. A host missing from the answer has no room for it."""
    query = f"/allocation_candidates?resources=VCPU:{max(1, vcpus)},MEMORY_MB:{max(1, ram_mb)}"
    body = transport.request("GET", query, deadline, microversion=MICROVERSION, retries=1)
    summaries = reply_field(body, "provider_summaries", (dict,), WHAT, required=True)
    if len(summaries) > MAX_PROVIDERS:
        raise NovaError(f"{WHAT}: more than {MAX_PROVIDERS} resource providers")
    return {str(uuid): _room(summary) for uuid, summary in summaries.items()}


def _room(summary: Any) -> Room:
    if not isinstance(summary, dict):
        raise NovaError(f"{WHAT}: malformed reply: a provider summary is {excerpt(summary, 80)}")
    resources = reply_field(summary, "resources", (dict,), WHAT, required=True)
    vcpu = _usage(resources, "VCPU")
    ram = _usage(resources, "MEMORY_MB")
    return Room(vcpus=vcpu[0] - vcpu[1], ram_mb=ram[0] - ram[1], used_vcpus=vcpu[1])


def _usage(resources: dict[str, Any], resource_class: str) -> tuple[float, float]:
    """(capacity, used) of one resource class of a provider's summary."""
    usage = reply_field(resources, resource_class, (dict,), WHAT, required=True)
    capacity = reply_field(usage, "capacity", (int, float), WHAT, required=True)
    used = reply_field(usage, "used", (int, float), WHAT, required=True)
    if capacity < 0 or used < 0:
        raise NovaError(f"{WHAT}: malformed reply: {resource_class} {excerpt(usage, 80)}")
    return float(capacity), float(used)
