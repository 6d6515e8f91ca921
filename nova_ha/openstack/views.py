"""Nova's records as nova-ha reads them: typed, immutable, checked once when built.

Every key of Nova's JSON that nova-ha reads is named here, the ``OS-EXT-*`` extension keys
included, and so are the task and migration states nova-ha acts on. A record of the wrong
shape (a key of the wrong kind, a required one missing) is a NovaError quoting a short
excerpt of it, never a KeyError or TypeError later in a caller.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from nova_ha.openstack.exceptions import NovaError
from nova_ha.openstack.transport import excerpt, kind_of, reply_field

HOST_ATTR = "OS-EXT-SRV-ATTR:host"
TASK_ATTR = "OS-EXT-STS:task_state"
VM_ATTR = "OS-EXT-STS:vm_state"
ZONE_ATTR = "OS-EXT-AZ:availability_zone"

# Task states of a server Nova is rebuilding elsewhere: an evacuation is under way.
REBUILD_TASKS = frozenset({"rebuilding", "rebuild_block_device_mapping", "rebuild_spawning"})
# Migration statuses of an evacuation that did not happen (the server stays on its source).
FAILED_MIGRATION = frozenset({"error", "failed", "cancelled"})
# Migration statuses after which nothing more happens to the server on its source.
TERMINAL_MIGRATION = frozenset({"done", "completed"}) | FAILED_MIGRATION

_Kinds = dict[str, tuple[tuple[type, ...], bool]]  # key: (kinds allowed, required)
_EMPTY: Mapping[str, Any] = MappingProxyType({})

# What nova-ha reads of Nova's records.
_SERVER_FIELDS: _Kinds = {
    "id": ((str,), True),
    "name": ((str,), False),
    "status": ((str,), False),
    HOST_ATTR: ((str,), False),
    TASK_ATTR: ((str,), False),
    VM_ATTR: ((str,), False),
    ZONE_ATTR: ((str,), False),
    "flavor": ((dict,), False),
    "metadata": ((dict,), False),
    "image": ((dict, str), False),
    "fault": ((dict,), False),
}
_MIGRATION_FIELDS: _Kinds = {
    "instance_uuid": ((str,), True),
    "status": ((str,), False),
    "created_at": ((str,), False),
    "id": ((int,), False),
    "dest_compute": ((str,), False),
}


def _object(body: Any, what: str, item: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise NovaError(
            f"{what}: malformed reply from Nova: {item} is {kind_of(body)}: {excerpt(body)}"
        )
    return body


def _checked(body: Any, fields: _Kinds, what: str, item: str) -> dict[str, Any]:
    """`body`, an object whose `fields` have the expected kinds."""
    obj = _object(body, what, item)
    for name, (kinds, required) in fields.items():
        reply_field(obj, name, kinds, what, required)
    return obj


def _frozen(mapping: Any) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping)) if mapping else _EMPTY


@dataclass(frozen=True)
class Server:
    """A server (GET /servers/{id}, /servers/detail) as nova-ha reads it."""

    id: str
    name: str = ""
    status: str | None = None  # ACTIVE, SHUTOFF, ERROR, DELETED (changes-since)...
    host: str | None = None  # the compute host Nova places it on
    task_state: str | None = None
    vm_state: str | None = None
    extra_specs: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)  # of its flavor
    metadata: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    image_id: str | None = None  # None when booted from a volume
    fault: str | None = None  # the message of its fault, if any
    zone: str | None = None  # its availability zone
    vcpus: int | None = None  # of its flavor (embedded from 2.47)
    ram_mb: int | None = None

    @classmethod
    def from_api(cls, body: Any, what: str) -> Server:
        server = _checked(body, _SERVER_FIELDS, what, "a server")
        flavor = server.get("flavor") or {}
        fault = server.get("fault") or {}
        image = server.get("image")
        image_id = reply_field(image, "id", (str,), what) if isinstance(image, dict) else None
        return cls(
            id=server["id"],
            name=server.get("name") or "",
            status=server.get("status"),
            host=server.get(HOST_ATTR),
            task_state=server.get(TASK_ATTR),
            vm_state=server.get(VM_ATTR),
            extra_specs=_frozen(reply_field(flavor, "extra_specs", (dict,), what)),
            metadata=_frozen(server.get("metadata")),
            image_id=image_id,
            fault=reply_field(fault, "message", (str,), what),
            zone=server.get(ZONE_ATTR) or None,
            vcpus=reply_field(flavor, "vcpus", (int,), what),
            ram_mb=reply_field(flavor, "ram", (int,), what),
        )

    @property
    def rebuilding(self) -> bool:
        """An evacuation (a rebuild elsewhere) is under way."""
        return self.task_state in REBUILD_TASKS


@dataclass(frozen=True)
class Migration:
    """An evacuation migration (GET /os-migrations?migration_type=evacuation)."""

    server_id: str
    status: str | None = None
    created_at: str | None = None  # ISO 8601, by Nova's clock
    id: int | None = None
    target: str | None = None  # the host it rebuilds the server on (dest_compute)

    @property
    def failed(self) -> bool:
        return self.status in FAILED_MIGRATION

    @property
    def order(self) -> tuple[str, int]:
        return (self.created_at or "", self.id or 0)

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_MIGRATION

    @classmethod
    def from_api(cls, body: Any, what: str) -> Migration:
        migration = _checked(body, _MIGRATION_FIELDS, what, "a migration")
        return cls(
            server_id=migration["instance_uuid"],
            status=migration.get("status"),
            created_at=migration.get("created_at"),
            id=migration.get("id"),
            target=migration.get("dest_compute"),
        )


def newest_per_server(migrations: Iterable[Migration]) -> dict[str, Migration]:
    """Each server's newest migration (by creation, then id): an older one of a server
    asked again since is history."""
    newest: dict[str, Migration] = {}
    for migration in migrations:
        known = newest.get(migration.server_id)
        if known is None or migration.order > known.order:
            newest[migration.server_id] = migration
    return newest


@dataclass(frozen=True)
class Service:
    """A nova-compute service (GET /os-services)."""

    id: str
    host: str
    status: str  # enabled | disabled
    state: str  # up | down
    forced_down: bool
    disabled_reason: str | None
    updated_at: str | None = None  # the last heartbeat (or change), by Nova's clock
    zone: str | None = None  # its availability zone

    @classmethod
    def from_api(cls, body: Any, what: str = "Nova's service list") -> Service:
        """A service of Nova's reply; a malformed one is a NovaError (never a KeyError)."""
        service = _object(body, what, "a service")
        service_id = reply_field(service, "id", (int, str), what, required=True)
        host = reply_field(service, "host", (str,), what, required=True)
        return cls(
            id=str(service_id),
            host=host,
            status=reply_field(service, "status", (str,), what) or "",
            state=reply_field(service, "state", (str,), what) or "",
            forced_down=bool(reply_field(service, "forced_down", (bool,), what)),
            disabled_reason=reply_field(service, "disabled_reason", (str,), what),
            updated_at=reply_field(service, "updated_at", (str,), what),
            zone=reply_field(service, "zone", (str,), what),
        )


@dataclass(frozen=True)
class Hypervisor:
    """A hypervisor (GET /os-hypervisors/detail): where servers can land."""

    id: str
    hostname: str  # hypervisor_hostname
    state: str  # up | down
    status: str  # enabled | disabled
    service_host: str | None = None  # the compute host of its service
    running_vms: int | None = None  # reported below 2.88 only

    @classmethod
    def from_api(cls, body: Any, what: str) -> Hypervisor:
        hypervisor = _object(body, what, "a hypervisor")
        hypervisor_id = reply_field(hypervisor, "id", (int, str), what, required=True)
        service = reply_field(hypervisor, "service", (dict,), what) or {}
        return cls(
            id=str(hypervisor_id),
            hostname=reply_field(hypervisor, "hypervisor_hostname", (str,), what, required=True),
            state=reply_field(hypervisor, "state", (str,), what) or "",
            status=reply_field(hypervisor, "status", (str,), what) or "",
            service_host=reply_field(service, "host", (str,), what),
            running_vms=reply_field(hypervisor, "running_vms", (int,), what),
        )
