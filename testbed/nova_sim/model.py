"""Nova's constants, the records of the simulated world, the request, and small helpers as
nova 34.0.0 and oslo have them. Shared by the simulator's modules (the leading underscores
say: not for the tests)."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import string
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

#: nova 34.0.0 (2026.2 Hibiscus): nova/api/openstack/api_version_request.py
#: ``_MIN_API_VERSION = '2.1'`` / ``_MAX_API_VERSION = '2.104'``.
NOVA_MIN_VERSION = "2.1"
NOVA_MAX_VERSION = "2.104"
#: nova/api/openstack/api_version_request.py MAX_PROXY_API_SUPPORT_VERSION
_MAX_PROXY_API_VERSION = (2, 35)
#: nova.conf api.max_limit default
_MAX_LIMIT = 1000

_VERSION_RE = re.compile(r"^([1-9]\d*)\.([1-9]\d*|0)$")
_UUID_RE = re.compile(
    r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"
)

# nova.compute.vm_states / task_states / power_state
ACTIVE, BUILDING, STOPPED, ERROR, DELETED = "active", "building", "stopped", "error", "deleted"
REBUILDING = "rebuilding"
REBUILD_BDM = "rebuild_block_device_mapping"
REBUILD_SPAWNING = "rebuild_spawning"
POWERING_OFF, POWERING_ON = "powering-off", "powering-on"
SCHEDULING, SPAWNING = "scheduling", "spawning"
NOSTATE, RUNNING, SHUTDOWN = 0, 1, 4
_REBUILD_TASKS = (REBUILDING, REBUILD_BDM, REBUILD_SPAWNING)

# nova/api/openstack/common.py _STATE_MAP
_STATE_MAP: dict[str, dict[Any, str]] = {
    "active": {
        "default": "ACTIVE",
        "rebooting": "REBOOT",
        "reboot_pending": "REBOOT",
        "reboot_started": "REBOOT",
        "rebooting_hard": "HARD_REBOOT",
        "reboot_pending_hard": "HARD_REBOOT",
        "reboot_started_hard": "HARD_REBOOT",
        "updating_password": "PASSWORD",
        "rebuilding": "REBUILD",
        "rebuild_block_device_mapping": "REBUILD",
        "rebuild_spawning": "REBUILD",
        "migrating": "MIGRATING",
        "resize_prep": "RESIZE",
        "resize_migrating": "RESIZE",
        "resize_migrated": "RESIZE",
        "resize_finish": "RESIZE",
    },
    "building": {"default": "BUILD"},
    "stopped": {
        "default": "SHUTOFF",
        "resize_prep": "RESIZE",
        "resize_migrating": "RESIZE",
        "resize_migrated": "RESIZE",
        "resize_finish": "RESIZE",
        "rebuilding": "REBUILD",
        "rebuild_block_device_mapping": "REBUILD",
        "rebuild_spawning": "REBUILD",
    },
    "resized": {"default": "VERIFY_RESIZE", "resize_reverting": "REVERT_RESIZE"},
    "paused": {"default": "PAUSED", "migrating": "MIGRATING"},
    "suspended": {"default": "SUSPENDED"},
    "rescued": {"default": "RESCUE"},
    "error": {
        "default": "ERROR",
        "rebuilding": "REBUILD",
        "rebuild_block_device_mapping": "REBUILD",
        "rebuild_spawning": "REBUILD",
    },
    "deleted": {"default": "DELETED"},
    "soft-delete": {"default": "SOFT_DELETED"},
    "shelved": {"default": "SHELVED"},
    "shelved_offloaded": {"default": "SHELVED_OFFLOADED"},
}
_PROGRESS_STATUSES = ("ACTIVE", "BUILD", "REBUILD", "RESIZE", "VERIFY_RESIZE", "MIGRATING")

# nova/objects/image_meta.py ImageMetaProps.fields + _legacy_property_map keys:
# the only image properties shown in a server's ``image.properties`` (>= 2.98).
_STD_IMAGE_PROPS = frozenset(
    """hw_architecture hw_auto_disk_config hw_boot_menu hw_cdrom_bus hw_cpu_cores
    hw_cpu_max_cores hw_cpu_max_sockets hw_cpu_max_threads hw_cpu_policy hw_cpu_realtime_mask
    hw_cpu_sockets hw_cpu_thread_policy hw_cpu_threads hw_device_id hw_disk_bus hw_disk_type
    hw_emulation_architecture hw_ephemeral_encryption hw_ephemeral_encryption_format
    hw_ephemeral_encryption_secret_uuid hw_firmware_stateless hw_firmware_type hw_floppy_bus
    hw_input_bus hw_ipxe_boot hw_locked_memory hw_machine_type hw_maxphysaddr_bits
    hw_maxphysaddr_mode hw_mem_encryption hw_mem_encryption_model hw_mem_page_size hw_numa_cpus
    hw_numa_mem hw_numa_nodes hw_pci_numa_affinity_policy hw_pmu hw_pointer_model
    hw_qemu_guest_agent hw_redirected_usb_ports hw_rescue_bus hw_rescue_device hw_rng_model
    hw_scsi_model hw_serial_port_count hw_sound_model hw_time_hpet hw_tpm_model hw_tpm_version
    hw_usb_model hw_video_model hw_video_ram hw_vif_model hw_vif_multiqueue_enabled
    hw_viommu_model hw_virtio_packed_ring hw_vm_mode hw_watchdog_action img_bdm_v2
    img_bittorrent img_block_device_mapping img_cache_in_nova img_compression_level
    img_config_drive img_hide_hypervisor_id img_hv_requested_version img_hv_type
    img_linked_clone img_mappings img_owner_id img_root_device_name img_signature
    img_signature_certificate_uuid img_signature_hash_method img_signature_key_type
    img_use_agent img_version os_admin_user os_command_line os_distro os_require_quiesce
    os_secure_boot os_skip_agent_inject_files_at_boot os_skip_agent_inject_ssh os_type
    traits_required architecture owner_id vmware_disktype vmware_image_version vmware_ostype
    auto_disk_config ipxe_boot xenapi_device_id xenapi_image_compression_level
    vmware_linked_clone xenapi_use_agent xenapi_skip_agent_inject_ssh
    xenapi_skip_agent_inject_files_at_boot cache_in_nova vm_mode bittorrent mappings
    block_device_mapping bdm_v2 root_device_name hypervisor_version_requires
    hypervisor_type""".split()
)

# nova/api/openstack/wsgi.py Fault._fault_names
_FAULT_NAMES = {
    400: "badRequest",
    401: "unauthorized",
    403: "forbidden",
    404: "itemNotFound",
    405: "badMethod",
    409: "conflictingRequest",
    413: "overLimit",
    415: "badMediaType",
    429: "overLimit",
    501: "notImplemented",
    503: "serviceUnavailable",
}
_KS_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_UNEXPECTED_API_ERROR = (
    "Unexpected API Error. Please report this at http://bugs.launchpad.net/nova/ and "
    "attach the Nova API log if possible.\n<class 'nova.exception.NovaException'>"
)

# oslo_utils.strutils
_TRUE_STRINGS = ("1", "t", "true", "on", "y", "yes")
_FALSE_STRINGS = ("0", "f", "false", "off", "n", "no")

# nova/api/validation/parameter_types.py
_BOOLEAN = {
    "type": ["boolean", "string"],
    "enum": [
        True,
        "True",
        "TRUE",
        "true",
        "1",
        "ON",
        "On",
        "on",
        "YES",
        "Yes",
        "yes",
        False,
        "False",
        "FALSE",
        "false",
        "0",
        "OFF",
        "Off",
        "off",
        "NO",
        "No",
        "no",
    ],
}
_FQDN = {"type": "string", "pattern": "^[a-zA-Z0-9-._]*$", "minLength": 1, "maxLength": 255}
_REASON = {"type": "string", "minLength": 1, "maxLength": 255}

# nova/api/openstack/compute/schemas/servers.py index_query (v2.75: no other keys)
_SERVER_QUERY_KEYS = frozenset(
    """user_id project_id tenant_id launch_index image_ref image kernel_id ramdisk_id
    hostname key_name power_state vm_state task_state host node flavor reservation_id
    launched_at terminated_at availability_zone name display_name description
    display_description locked_by uuid root_device_name config_drive access_ip_v4
    access_ip_v6 auto_disk_config progress sort_key sort_dir all_tenants soft_deleted
    deleted status changes-since ip ip6 created_at limit marker tags tags-any not-tags
    not-tags-any changes-before locked
    block_device_mapping keypairs metadata pci_devices security_groups services""".split()
)
# schemas.servers.JOINED_TABLE_QUERY_PARAMS_SERVERS: accepted by the schema, then 400
_JOINED_TABLE_KEYS = frozenset(
    "block_device_mapping keypairs metadata pci_devices security_groups services".split()
)


# --------------------------------------------------------------------------- helpers


def _now() -> float:
    return time.time()


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _isotime(ts: float | None) -> str | None:
    """nova.utils.isotime: ``2026-01-02T03:04:05Z``."""
    return None if ts is None else _dt(ts).strftime("%Y-%m-%dT%H:%M:%SZ")


def _dbtime(ts: float | None) -> str | None:
    """A DB datetime (second precision) as oslo jsonutils serializes it."""
    return None if ts is None else _dt(int(ts)).strftime("%Y-%m-%dT%H:%M:%S.%f")


def _kstime(ts: float) -> str:
    """Keystone's token timestamps: ``2026-01-02T03:04:05.000000Z``."""
    return _dt(int(ts)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_isotime(text: str) -> float:
    value = text.strip().replace("Z", "+00:00")
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def _parse_version(text: str) -> tuple[int, int] | None:
    match = _VERSION_RE.match(text)
    if not match:
        return None
    return int(match.group(1)), int(match.group(2))


def _vstr(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"


def _bool_from_string(value: Any, strict: bool = False, default: bool = False) -> bool:
    """oslo_utils.strutils.bool_from_string."""
    if isinstance(value, bool):
        return value
    lowered = str(value).strip().lower()
    if lowered in _TRUE_STRINGS:
        return True
    if lowered in _FALSE_STRINGS:
        return False
    if strict:
        acceptable = ", ".join(f"'{s}'" for s in sorted(_TRUE_STRINGS + _FALSE_STRINGS))
        raise ValueError(f"Unrecognized value '{value}', acceptable values are: {acceptable}")
    return default


def _is_uuid_like(value: str) -> bool:
    return bool(_UUID_RE.match(value))


def _generate_password(length: int = 12) -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


def _hostid(host: str | None, project_id: str) -> str:
    """nova.utils.generate_hostid."""
    if not host:
        return ""
    return hashlib.sha224((project_id + host).encode("utf-8")).hexdigest()


def _json_equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return type(a) is type(b) and a == b


_JSON_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "null": lambda v: v is None,
}


def _schema_error(
    schema: dict[str, Any], instance: Any, path: tuple[str, ...] = ()
) -> tuple[tuple[str, ...], Any, str] | None:
    """First error of a tiny JSON-schema subset, worded like python-jsonschema."""
    for key, rule in schema.items():
        if key == "type":
            types = rule if isinstance(rule, list) else [rule]
            if not any(_JSON_TYPES[t](instance) for t in types):
                return (
                    path,
                    instance,
                    (f"{instance!r} is not of type {', '.join(repr(t) for t in types)}"),
                )
        elif key == "enum":
            if not any(_json_equal(instance, choice) for choice in rule):
                return path, instance, f"{instance!r} is not one of {rule!r}"
        elif key == "pattern":
            if isinstance(instance, str) and not re.search(rule, instance):
                return path, instance, f"{instance!r} does not match {rule!r}"
        elif key == "minLength":
            if isinstance(instance, str) and len(instance) < rule:
                word = "should be non-empty" if rule == 1 else "is too short"
                return path, instance, f"{instance!r} {word}"
        elif key == "maxLength":
            if isinstance(instance, str) and len(instance) > rule:
                return path, instance, f"{instance!r} is too long"
        elif key == "properties":
            if isinstance(instance, dict):
                for name, sub in rule.items():
                    if name in instance:
                        err = _schema_error(sub, instance[name], (*path, name))
                        if err:
                            return err
        elif key == "required":
            if isinstance(instance, dict):
                for name in rule:
                    if name not in instance:
                        return path, instance, f"{name!r} is a required property"
        elif key == "additionalProperties":
            if rule is False and isinstance(instance, dict):
                known = schema.get("properties", {})
                extra = [k for k in instance if k not in known]
                if extra:
                    verb = "was" if len(extra) == 1 else "were"
                    names = ", ".join(repr(e) for e in extra)
                    return (
                        path,
                        instance,
                        (f"Additional properties are not allowed ({names} {verb} unexpected)"),
                    )
    return None


def _additional_query_error(extra: Iterable[str]) -> str:
    names = sorted(extra)
    verb = "was" if len(names) == 1 else "were"
    return (
        "Additional properties are not allowed "
        f"({', '.join(repr(n) for n in names)} {verb} unexpected)"
    )


# --------------------------------------------------------------------------- plumbing


class _HTTPError(Exception):
    """An API error; rendered as a nova fault or a keystone error."""

    def __init__(
        self,
        status: int,
        message: str = "",
        headers: list[tuple[str, str]] | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []
        self.body = body


class _Bad(_HTTPError):
    def __init__(self, message: str) -> None:
        super().__init__(400, message)


@dataclass
class _Rule:
    regex: re.Pattern[str]
    method: str | None
    count: int
    status: int = 500
    seconds: float = 0.0
    apply: bool = False
    respond: bool = True
    message: str | None = None


@dataclass
class _Host:
    name: str
    running: bool = True
    boot: float = 0.0
    last_heartbeat_frozen: float | None = None
    guests: set[str] = field(default_factory=set)
    pending: list[Callable[[], None]] = field(default_factory=list)
    # per-compute work (workload.py): when its compute_resources lock is next free, and
    # when each of its busy work slots frees up (a heap, at most compute_slots long)
    claim_free_at: float = 0.0
    slots_busy_until: list[float] = field(default_factory=list)


@dataclass
class _Service:
    id: int
    uuid: str
    binary: str
    host: str
    zone: str
    created_at: float
    disabled: bool = False
    disabled_reason: str | None = None
    forced_down: bool = False
    admin_updated: float | None = None


@dataclass
class _Token:
    id: str
    methods: list[str]
    scoped: bool
    issued: float
    expires: float
    audit_id: str
    app_cred: bool = False
    revoked: bool = False


@dataclass
class _Request:
    method: str
    path: str
    raw_query: str
    query: dict[str, list[str]]
    headers: Any
    body: bytes
    base: str
    version: tuple[int, int] = (2, 1)
    entry: dict[str, Any] | None = None
    _json: Any = None
    _parsed: bool = False

    def json(self) -> Any:
        if not self._parsed:
            self._parsed = True
            if not self.body:
                self._json = None
            else:
                try:
                    self._json = json.loads(self.body)
                except ValueError as exc:
                    raise _Bad("Malformed request body") from exc
        return self._json

    def ge(self, version: str) -> bool:
        major, minor = version.split(".")
        return self.version >= (int(major), int(minor))

    def q(self, key: str) -> str | None:
        values = self.query.get(key)
        return values[-1] if values else None


_Response = tuple[int, list[tuple[str, str]], bytes]
