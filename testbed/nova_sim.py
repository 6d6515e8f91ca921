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
"""

from __future__ import annotations

import copy
import hashlib
import heapq
import itertools
import json
import random
import re
import secrets
import socket
import string
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

__all__ = ["NOVA_MAX_VERSION", "NOVA_MIN_VERSION", "NovaSim"]

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
    "enum": [True, "True", "TRUE", "true", "1", "ON", "On", "on", "YES", "Yes", "yes",
             False, "False", "FALSE", "false", "0", "OFF", "Off", "off", "NO", "No", "no"],
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
                return path, instance, (
                    f"{instance!r} is not of type {', '.join(repr(t) for t in types)}"
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
                    return path, instance, (
                        f"Additional properties are not allowed ({names} {verb} unexpected)"
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


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], sim: NovaSim) -> None:
        self.sim = sim
        super().__init__(addr, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "NovaSim/1.0"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        return

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _dispatch(self) -> None:
        self.server.sim._handle(self)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _dispatch


# --------------------------------------------------------------------------- the simulator


class NovaSim:
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
        evacuate_delay: seconds from the evacuate call to the terminal state; a float
            or a callable ``f(server_dict) -> float``.
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

    username = "admin"
    password = "secret"  # noqa: S105 - a test credential
    project_name = "admin"
    user_domain_name = "Default"
    project_domain_name = "Default"
    app_cred_id = "appcred-id"
    app_cred_secret = "appcred-secret"  # noqa: S105 - a test credential
    app_cred_name = "nova-ha"
    region = "RegionOne"
    controller_host = "controller"

    def __init__(
        self,
        hosts: Sequence[str] = ("host1", "host2", "host3"),
        bind: str | Sequence[str] = "127.0.0.1",
        port: int = 0,
        max_version: str = NOVA_MAX_VERSION,
        min_version: str = NOVA_MIN_VERSION,
        *,
        service_down_time: float = 3.0,
        report_interval: float = 1.0,
        evacuate_delay: float | Callable[[dict[str, Any]], float] = 0.3,
        host_capacity: int | dict[str, int] | None = 1000,
        seed: int | None = None,
    ) -> None:
        max_v = _parse_version(max_version)
        min_v = _parse_version(min_version)
        if max_v is None or min_v is None or min_v > max_v:
            raise ValueError("bad microversion range")
        self.max_version: tuple[int, int] = max_v
        self.min_version: tuple[int, int] = min_v
        self._binds = [bind] if isinstance(bind, str) else list(bind)
        if not self._binds:
            raise ValueError("bind needs at least one address")
        self._port = port
        self.port = port

        # tunables
        self.latency: float = 0.0
        self.service_down_time = service_down_time
        self.report_interval = report_interval
        self.evacuate_delay: float | Callable[[dict[str, Any]], float] = evacuate_delay
        self.evacuate_finish_window: float = 0.0
        self.build_delay: float = 0.05
        self.action_delay: float = 0.05
        self.host_capacity: int | dict[str, int] | None = host_capacity
        self.shared_storage: bool = False
        self.token_ttl: float = 3600.0

        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._stop_event = threading.Event()
        self._rand = random.Random(seed)
        self._events: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._engine: threading.Thread | None = None
        self._servers_http: list[_Server] = []
        self._threads: list[threading.Thread] = []
        self._started = False

        # identity
        self.user_id = uuid.uuid4().hex
        self.project_id = uuid.uuid4().hex
        self._role_ids = {name: uuid.uuid4().hex for name in ("admin", "member", "reader")}
        self._catalog_ids = {name: uuid.uuid4().hex for name in ("compute", "identity")}
        self._endpoint_ids = {
            (svc, iface): uuid.uuid4().hex
            for svc in ("compute", "identity")
            for iface in ("public", "internal", "admin")
        }
        self._tokens: dict[str, _Token] = {}

        # world
        now = _now()
        self._hosts: dict[str, _Host] = {}
        self._services: list[_Service] = []
        svc_id = itertools.count(1)
        for binary in ("nova-conductor", "nova-scheduler"):
            self._services.append(
                _Service(next(svc_id), str(uuid.uuid4()), binary, self.controller_host,
                         "internal", now)
            )
        for name in hosts:
            self._hosts[name] = _Host(name, boot=now)
            self._services.append(
                _Service(next(svc_id), str(uuid.uuid4()), "nova-compute", name, "nova", now)
            )
        self._hypervisor_ids = {name: (i + 1, str(uuid.uuid4())) for i, name in
                                enumerate(self._hosts)}
        self._servers: dict[str, dict[str, Any]] = {}
        self._server_seq = itertools.count(1)
        self._name_counters: dict[str, int] = {}
        self._alloc: dict[str, set[str]] = {name: set() for name in self._hosts}
        self._migrations: list[dict[str, Any]] = []
        self._mig_seq = itertools.count(1)
        self._flavors: dict[str, dict[str, Any]] = {}
        self._flavor_seq = itertools.count(1)
        self._images: dict[str, dict[str, Any]] = {}
        self.default_flavor_id = self._add_flavor("m1.small", {})
        self.default_image_id = self._add_image("cirros", {})

        # faults
        self._api_down = False
        self._fail_rules: list[_Rule] = []
        self._timeout_rules: list[_Rule] = []
        self._conflict_evacuates = 0
        self._evac_fail_ids: set[str] = set()
        self._evac_fail_pred: Callable[[dict[str, Any]], bool] | None = None
        self._evac_fail_prob: float = 0.0
        self._log: list[dict[str, Any]] = []
        self.compute_starts: list[tuple[float, str, int]] = []  # (time, host, racing evacs)
        self.max_limit = _MAX_LIMIT  # nova.conf [api] max_limit: the largest page
        self._actions: dict[str, list[dict[str, Any]]] = {}  # server -> instance actions

    # ------------------------------------------------------------------ lifecycle

    @property
    def address(self) -> str:
        return self._binds[0]

    @property
    def base_url(self) -> str:
        return f"http://{self._fmt_host(self.address)}:{self.port}"

    @property
    def auth_url(self) -> str:
        return f"{self.base_url}/identity/v3"

    @property
    def compute_url(self) -> str:
        return f"{self.base_url}/compute/v2.1"

    @property
    def testbed_url(self) -> str:
        return f"{self.base_url}/_testbed"

    def urls_for(self, address: str) -> dict[str, str]:
        """auth/compute URLs through another bound address (e.g. a veth address)."""
        base = f"http://{self._fmt_host(address)}:{self.port}"
        return {"auth_url": f"{base}/identity/v3", "compute_url": f"{base}/compute/v2.1"}

    @staticmethod
    def _fmt_host(address: str) -> str:
        return f"[{address}]" if ":" in address else address

    def start(self, host: str | None = None) -> NovaSim:
        """Without ``host``: start serving HTTP. With ``host``: start that compute.

        Starting a compute (nova-compute's init_host): its heartbeats resume; every
        evacuation migration from it in ``accepted``/``pre-migrating``/``done`` becomes
        ``completed`` and the local copies of those servers are destroyed; work that
        was waiting for this host runs. ``forced_down`` is left as it is (nova does
        not clear it on start).
        """
        if host is not None:
            self._start_compute(host)
            return self
        if self._started:
            return self
        port = self._port
        for addr in self._binds:
            srv = _Server((addr, port), self)
            port = srv.server_address[1]
            self._servers_http.append(srv)
        self.port = port
        for srv in self._servers_http:
            thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1},
                                      name=f"novasim-http-{srv.server_address[0]}", daemon=True)
            thread.start()
            self._threads.append(thread)
        self._engine = threading.Thread(target=self._engine_loop, name="novasim-engine",
                                        daemon=True)
        self._engine.start()
        self._started = True
        return self

    def stop(self) -> None:
        """Stop serving; hanging requests are released."""
        self._stop_event.set()
        with self._cond:
            self._cond.notify_all()
        for srv in self._servers_http:
            srv.shutdown()
            srv.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        if self._engine is not None:
            self._engine.join(timeout=5)
        self._servers_http.clear()
        self._threads.clear()
        self._started = False

    def __enter__(self) -> NovaSim:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ engine

    def _schedule_at(self, when: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` (under the lock) at wall time ``when``."""
        with self._cond:
            heapq.heappush(self._events, (when, next(self._seq), fn))
            self._cond.notify_all()

    def _engine_loop(self) -> None:
        with self._cond:
            while not self._stop_event.is_set():
                if not self._events:
                    self._cond.wait(0.5)
                    continue
                when, _, fn = self._events[0]
                delay = when - _now()
                if delay > 0:
                    self._cond.wait(min(delay, 0.5))
                    continue
                heapq.heappop(self._events)
                try:
                    fn()
                except Exception:  # pragma: no cover - a bug in a step must not kill us
                    import traceback

                    traceback.print_exc()

    def _on_compute(self, host: str, when: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` on compute ``host`` at ``when``; wait for the host if it is down."""

        def run() -> None:
            h = self._hosts.get(host)
            if h is None:
                return
            if not h.running:
                h.pending.append(fn)
                return
            fn()

        self._schedule_at(when, run)

    # ------------------------------------------------------------------ control API

    def crash(self, host: str) -> None:
        """The compute host dies: heartbeats stop (guests keep their DB state)."""
        with self._lock:
            h = self._host(host)
            if not h.running:
                return
            h.last_heartbeat_frozen = self._last_heartbeat(h, _now())
            h.running = False

    def _start_compute(self, host: str) -> None:
        with self._lock:
            h = self._host(host)
            now = _now()
            h.running = True
            h.boot = now
            h.last_heartbeat_frozen = None
            # For tests of the rejoin guard: how many evacuations from this host were still
            # under way when its compute started (nova-compute would destroy their sources).
            racing = sum(1 for m in self._migrations
                         if m["source_compute"] == host and m["migration_type"] == "evacuation"
                         and m["status"] in ("accepted", "pre-migrating"))
            self.compute_starts.append((time.time(), host, racing))
            # ComputeManager._destroy_evacuated_instances
            for mig in self._migrations:
                if (mig["source_compute"] == host and mig["migration_type"] == "evacuation"
                        and mig["status"] in ("accepted", "pre-migrating", "done")):
                    h.guests.discard(mig["instance_uuid"])
                    server = self._servers.get(mig["instance_uuid"])
                    if server is None:
                        continue
                    # allocations against the source node are removed
                    if server["host"] != host:
                        self._alloc.get(host, set()).discard(server["id"])
                    mig["status"] = "completed"
                    mig["updated_at"] = now
            pending, h.pending = h.pending, []
            for fn in pending:
                self._schedule_at(now, fn)

    def create_servers(
        self,
        host: str,
        count: int,
        name_prefix: str = "vm",
        flavor_extra_specs: dict[str, str] | None = None,
        metadata: dict[str, str] | None = None,
        image_properties: dict[str, Any] | None = None,
        status: str = "ACTIVE",
        project_id: str | None = None,
    ) -> list[str]:
        """Create ``count`` servers already running on ``host``; returns their ids.

        ``status`` is ACTIVE, SHUTOFF or ERROR. ``project_id`` defaults to the admin
        project (use another to exercise ``all_tenants``). Raises ValueError when
        the host is unknown or would exceed ``host_capacity``.
        """
        vm_state, power = {
            "ACTIVE": (ACTIVE, RUNNING),
            "SHUTOFF": (STOPPED, SHUTDOWN),
            "ERROR": (ERROR, RUNNING),
        }[status.upper()]
        with self._lock:
            self._host(host)
            cap = self._capacity(host)
            if cap is not None and len(self._alloc[host]) + count > cap:
                raise ValueError(f"{host} has room for {cap - len(self._alloc[host])} servers")
            flavor_id = self._flavor_for(flavor_extra_specs or {})
            image_id = (self._add_image("image", dict(image_properties))
                        if image_properties else self.default_image_id)
            ids = []
            for _ in range(count):
                num = self._name_counters.get(name_prefix, 0) + 1
                self._name_counters[name_prefix] = num
                server = self._new_server(
                    f"{name_prefix}-{num}", flavor_id, image_id, dict(metadata or {}),
                    project_id or self.project_id, pinned_az=None,
                )
                server.update(host=host, node=host, vm_state=vm_state, task_state=None,
                              power_state=power, launched_at=server["created_at"])
                self._alloc[host].add(server["id"])
                self._hosts[host].guests.add(server["id"])
                ids.append(server["id"])
            return ids

    def server(self, server_id: str) -> dict[str, Any]:
        """A copy of the internal record of a server, plus its API ``status``."""
        with self._lock:
            server = copy.deepcopy(self._servers[server_id])
        server["status"] = self._status(server)
        return server

    def set_server_state(
        self, server_id: str, vm_state: str | None = None, task_state: str | None = None
    ) -> None:
        """Put a server in a state the API cannot (a task stuck on a host that died)."""
        with self._lock:
            server = self._servers[server_id]
            self._touch(server, vm_state=vm_state or server["vm_state"], task_state=task_state)

    def servers(self) -> list[dict[str, Any]]:
        with self._lock:
            ids = [s["id"] for s in self._servers.values() if not s["deleted"]]
        return [self.server(i) for i in ids]

    def migrations(self) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._migrations)

    def hosts(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            out = {}
            for name, h in self._hosts.items():
                svc = self._compute_service(name)
                out[name] = {
                    "running": h.running,
                    "state": "up" if self._service_is_up(svc) else "down",
                    "forced_down": svc.forced_down,
                    "disabled": svc.disabled,
                    "guests": sorted(h.guests),
                    "servers": sorted(s["id"] for s in self._servers.values()
                                      if s["host"] == name and not s["deleted"]),
                }
            return out

    def request_log(self) -> list[dict[str, Any]]:
        """Every identity/compute request: t, method, path, action, status, microversion."""
        with self._lock:
            return [dict(e) for e in self._log]

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()

    def set_api_down(self, down: bool) -> None:
        """While down, every compute API request answers 503."""
        with self._lock:
            self._api_down = bool(down)

    def force_down(self, host: str, forced: bool = True) -> None:
        """Set a nova-compute service's forced_down flag directly (no checks)."""
        with self._lock:
            svc = self._compute_service(host)
            svc.forced_down = forced
            svc.admin_updated = _now()

    # ------------------------------------------------------------------ fault injection

    def fail_next(
        self,
        path_regex: str,
        status: int = 500,
        count: int = 1,
        method: str | None = None,
        *,
        apply: bool = False,
        message: str | None = None,
    ) -> None:
        """The next ``count`` requests whose path matches (re.search) answer ``status``.

        With ``apply=True`` the request is processed first and only its response is
        replaced (a lost reply).
        """
        with self._lock:
            self._fail_rules.append(_Rule(re.compile(path_regex), method and method.upper(),
                                          count, status=status, apply=apply, message=message))

    def timeout_next(
        self,
        path_regex: str,
        seconds: float,
        count: int = 1,
        method: str | None = None,
        *,
        respond: bool = True,
    ) -> None:
        """Hang the next ``count`` matching requests for ``seconds``.

        Afterwards the request is processed and answered normally (``respond=True``,
        what a slow API does) or the connection is closed without processing it.
        """
        with self._lock:
            self._timeout_rules.append(_Rule(re.compile(path_regex), method and method.upper(),
                                             count, seconds=seconds, respond=respond))

    def expire_tokens(self) -> None:
        """Revoke every issued token: the next compute call gets 401; re-auth works."""
        with self._lock:
            for tok in self._tokens.values():
                tok.revoked = True

    def evacuate_fail(
        self,
        which: Iterable[str] | Callable[[dict[str, Any]], bool] | float | None,
    ) -> None:
        """Make evacuations fail on the destination compute.

        ``which``: server ids, a predicate on the server dict, a probability in
        [0, 1], or None to clear. The server goes to ERROR (task_state None) and its
        migration to ``failed`` (nova's compute-side failure path).
        """
        with self._lock:
            self._evac_fail_ids = set()
            self._evac_fail_pred = None
            self._evac_fail_prob = 0.0
            if which is None:
                return
            if callable(which):
                self._evac_fail_pred = which
            elif isinstance(which, int | float):
                self._evac_fail_prob = float(which)
            elif isinstance(which, str):
                self._evac_fail_ids = {which}
            else:
                self._evac_fail_ids = set(which)

    def conflict_next_evacuate(self, count: int = 1) -> None:
        """The next ``count`` evacuate calls answer 409 as if a task were in progress."""
        with self._lock:
            self._conflict_evacuates += count

    def reset_faults(self) -> None:
        with self._lock:
            self._fail_rules.clear()
            self._timeout_rules.clear()
            self._conflict_evacuates = 0
            self._evac_fail_ids = set()
            self._evac_fail_pred = None
            self._evac_fail_prob = 0.0
            self._api_down = False
            self.latency = 0.0

    # ------------------------------------------------------------------ world helpers

    def _host(self, host: str) -> _Host:
        try:
            return self._hosts[host]
        except KeyError:
            raise ValueError(f"unknown host {host!r}") from None

    def _compute_service(self, host: str) -> _Service:
        for svc in self._services:
            if svc.binary == "nova-compute" and svc.host == host:
                return svc
        raise ValueError(f"no nova-compute service on {host!r}")

    def _last_heartbeat(self, h: _Host | None, now: float) -> float:
        if h is None:  # controller services always report
            return now - (now % max(self.report_interval, 1e-3))
        if not h.running and h.last_heartbeat_frozen is not None:
            return h.last_heartbeat_frozen
        interval = max(self.report_interval, 1e-3)
        return h.boot + ((now - h.boot) // interval) * interval

    def _service_is_up(self, svc: _Service) -> bool:
        """nova.servicegroup: forced_down, else last heartbeat within service_down_time."""
        if svc.forced_down:
            return False
        now = _now()
        last = self._last_heartbeat(self._hosts.get(svc.host) if svc.binary == "nova-compute"
                                    else None, now)
        return abs(now - last) <= self.service_down_time

    def _service_updated_at(self, svc: _Service) -> float:
        h = self._hosts.get(svc.host) if svc.binary == "nova-compute" else None
        last = self._last_heartbeat(h, _now())
        return max(last, svc.admin_updated or 0.0, svc.created_at)

    def _capacity(self, host: str) -> int | None:
        cap = self.host_capacity
        if isinstance(cap, dict):
            return cap.get(host)
        return cap

    def _has_room(self, host: str) -> bool:
        cap = self._capacity(host)
        return cap is None or len(self._alloc[host]) < cap

    def _add_flavor(self, name: str, extra_specs: dict[str, str]) -> str:
        num = next(self._flavor_seq)
        flavor_id = str(num)
        self._flavors[flavor_id] = {
            "id": num, "flavorid": flavor_id, "name": name, "vcpus": 1, "memory_mb": 512,
            "root_gb": 1, "ephemeral_gb": 0, "swap": 0, "extra_specs": dict(extra_specs),
            "description": None, "is_public": True,
        }
        return flavor_id

    def _flavor_for(self, extra_specs: dict[str, str]) -> str:
        for fid, flavor in self._flavors.items():
            if flavor["extra_specs"] == extra_specs:
                return fid
        return self._add_flavor(f"m1.small-{len(self._flavors) + 1}", extra_specs)

    def _add_image(self, name: str, properties: dict[str, Any]) -> str:
        image_id = str(uuid.uuid4())
        now = _now()
        self._images[image_id] = {
            "id": image_id, "name": name, "status": "active", "min_ram": 0, "min_disk": 0,
            "size": 16338944, "created_at": now, "updated_at": now,
            "properties": dict(properties),
        }
        return image_id

    def _new_server(self, name: str, flavor_id: str, image_id: str, metadata: dict[str, str],
                    project_id: str, pinned_az: str | None) -> dict[str, Any]:
        num = next(self._server_seq)
        now = _now()
        flavor = copy.deepcopy(self._flavors[flavor_id])
        hostname = re.sub(r"[^a-zA-Z0-9-]+", "-", name).strip("-")[:63] or "server"
        server = {
            "id": str(uuid.uuid4()), "db_id": num, "name": name, "project_id": project_id,
            "user_id": self.user_id, "host": None, "node": None, "vm_state": BUILDING,
            "task_state": SCHEDULING, "power_state": NOSTATE, "flavor": flavor,
            "image_id": image_id, "metadata": metadata, "created_at": now, "updated_at": now,
            "launched_at": None, "fault": None, "deleted": False, "availability_zone": None,
            "pinned_availability_zone": pinned_az, "reservation_id": f"r-{uuid.uuid4().hex[:8]}",
            "hostname": hostname, "description": None, "tags": [],
        }
        self._servers[server["id"]] = server
        return server

    def _touch(self, server: dict[str, Any], **changes: Any) -> None:
        server.update(changes)
        server["updated_at"] = _now()

    @staticmethod
    def _status(server: dict[str, Any]) -> str:
        if server.get("deleted"):
            return "DELETED"
        task_map = _STATE_MAP.get(server["vm_state"], {"default": "UNKNOWN"})
        return task_map.get(server["task_state"], task_map["default"])

    def _fault(self, server: dict[str, Any], message: str, details: str = "") -> None:
        server["fault"] = {"code": 500, "message": message, "details": details,
                           "created": _now()}

    def _new_migration(self, server: dict[str, Any], mtype: str, status: str,
                       dest: str | None) -> dict[str, Any]:
        mig = {
            "id": next(self._mig_seq), "uuid": str(uuid.uuid4()),
            "source_compute": server["host"], "source_node": server["node"],
            "dest_compute": dest, "dest_node": None, "dest_host": None,
            "old_instance_type_id": None, "new_instance_type_id": None,
            "instance_uuid": server["id"], "status": status, "migration_type": mtype,
            "hidden": False, "created_at": _now(), "updated_at": None,
            "user_id": self.user_id, "project_id": self.project_id,
        }
        self._migrations.append(mig)
        return mig

    @staticmethod
    def _mig_status(mig: dict[str, Any], status: str) -> None:
        mig["status"] = status
        mig["updated_at"] = _now()

    def _should_fail_evacuation(self, server: dict[str, Any]) -> bool:
        if server["id"] in self._evac_fail_ids:
            return True
        if self._evac_fail_pred is not None and self._evac_fail_pred(copy.deepcopy(server)):
            return True
        return self._evac_fail_prob > 0 and self._rand.random() < self._evac_fail_prob

    def _select_host(self, source: str | None, requested: str | None) -> tuple[str | None, str]:
        """Placement + filter scheduler. Returns (host, NoValidHost reason)."""
        order = list(self._hosts)
        # placement: room, and not COMPUTE_STATUS_DISABLED
        candidates = [h for h in order if (requested is None or h == requested)
                      and self._has_room(h) and not self._compute_service(h).disabled]
        if not candidates:
            return None, ""
        # ComputeFilter (service up) and ignore_hosts=[source]
        candidates = [h for h in candidates
                      if h != source and self._service_is_up(self._compute_service(h))]
        if not candidates:
            return None, "There are not enough hosts available."
        # weighers spread: the least loaded host wins
        best = min(candidates, key=lambda h: (len(self._alloc[h]), order.index(h)))
        return best, ""

    # ------------------------------------------------------------------ HTTP entry

    def _handle(self, handler: _Handler) -> None:
        received = _now()
        split = urlsplit(handler.path)
        path = split.path
        method = handler.command
        try:
            length = int(handler.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        body = handler.rfile.read(length) if length > 0 else b""
        host_header = handler.headers.get("Host") or (
            f"{self._fmt_host(handler.server.server_address[0])}:{self.port}")
        req = _Request(method, path, split.query,
                       parse_qs(split.query, keep_blank_values=True), handler.headers, body,
                       f"http://{host_header}")
        if path.startswith("/_testbed"):
            try:
                resp = self._testbed(req)
            except _HTTPError as exc:
                resp = self._json_response(exc.status, {"error": exc.message})
            except Exception as exc:  # pragma: no cover - shown to the test
                resp = self._json_response(500, {"error": repr(exc)})
            self._send(handler, method, resp)
            return

        entry: dict[str, Any] = {"t": received, "method": method, "path": path,
                                 "query": split.query, "action": None, "status": None,
                                 "microversion": None}
        if method == "POST" and path.endswith("/action") and body:
            try:
                parsed = json.loads(body)
                if isinstance(parsed, dict) and parsed:
                    entry["action"] = next(iter(parsed))
            except ValueError:
                pass
        req.entry = entry
        with self._lock:
            self._log.append(entry)
            latency = self.latency
            hang = self._take_rule(self._timeout_rules, method, path)
            fail = self._take_rule(self._fail_rules, method, path)
        if latency > 0:
            self._stop_event.wait(latency)
        if hang is not None:
            self._stop_event.wait(hang.seconds)
            if not hang.respond:
                handler.close_connection = True
                return
        if fail is not None and not fail.apply:
            resp = self._injected_failure(req, fail)
        else:
            resp = self._route(req)
            if fail is not None:
                resp = self._injected_failure(req, fail)
        entry["status"] = resp[0]
        self._send(handler, method, resp)

    @staticmethod
    def _take_rule(rules: list[_Rule], method: str, path: str) -> _Rule | None:
        for rule in rules:
            if (rule.method is None or rule.method == method) and rule.regex.search(path):
                rule.count -= 1
                if rule.count <= 0:
                    rules.remove(rule)
                return rule
        return None

    def _injected_failure(self, req: _Request, rule: _Rule) -> _Response:
        status = rule.status
        if req.path.startswith("/identity"):
            message = rule.message or "An unexpected error prevented the server from " \
                "fulfilling your request."
            return self._ks_error(status, message)
        message = rule.message or (_UNEXPECTED_API_ERROR if status == 500 else
                                   f"NovaSim injected HTTP {status}")
        return self._nova_fault(status, message, req)

    def _send(self, handler: _Handler, method: str, resp: _Response) -> None:
        status, headers, body = resp
        try:
            handler.send_response(status)
            for key, value in headers:
                handler.send_header(key, value)
            handler.send_header("Content-Length", str(len(body)))
            # one write for head and body (no Nagle / delayed-ACK stalls)
            handler._headers_buffer.append(b"\r\n")
            if body and method != "HEAD":
                handler._headers_buffer.append(body)
            handler.flush_headers()
            handler.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError):
            handler.close_connection = True

    def _route(self, req: _Request) -> _Response:
        try:
            if req.path == "/identity" or req.path.startswith("/identity/"):
                return self._identity(req)
            if req.path == "/compute" or req.path.startswith("/compute/"):
                return self._compute(req)
            return self._json_response(404, {"error": {"code": 404, "message": "Not Found",
                                                       "title": "Not Found"}})
        except _HTTPError as exc:
            if req.path.startswith("/identity"):
                return self._ks_error(exc.status, exc.message, exc.headers)
            return self._nova_fault(exc.status, exc.message, req, exc.headers)
        except Exception:  # pragma: no cover - a simulator bug shows as nova's 500
            import traceback

            traceback.print_exc()
            return self._nova_fault(500, _UNEXPECTED_API_ERROR, req)

    # ------------------------------------------------------------------ responses

    @staticmethod
    def _json_response(status: int, payload: Any,
                       headers: list[tuple[str, str]] | None = None) -> _Response:
        body = b"" if payload is None else json.dumps(payload).encode()
        hdrs = [("Content-Type", "application/json")]
        hdrs.extend(headers or [])
        return status, hdrs, body

    @staticmethod
    def _request_id_headers() -> list[tuple[str, str]]:
        rid = f"req-{uuid.uuid4()}"
        return [("x-openstack-request-id", rid), ("x-compute-request-id", rid)]

    def _version_headers(self, version: tuple[int, int]) -> list[tuple[str, str]]:
        vs = _vstr(version)
        return [("OpenStack-API-Version", f"compute {vs}"), ("X-OpenStack-Nova-API-Version", vs),
                ("Vary", "OpenStack-API-Version"), ("Vary", "X-OpenStack-Nova-API-Version")]

    def _nova_fault(self, status: int, message: str, req: _Request | None = None,
                    headers: list[tuple[str, str]] | None = None,
                    with_version: bool = True) -> _Response:
        name = _FAULT_NAMES.get(status, "computeFault")
        hdrs = list(headers or []) + self._request_id_headers()
        if req is not None and with_version and req.entry is not None \
                and req.entry.get("microversion"):
            hdrs += self._version_headers(req.version)
        return self._json_response(status, {name: {"code": status, "message": message}}, hdrs)

    def _ks_error(self, status: int, message: str,
                  headers: list[tuple[str, str]] | None = None) -> _Response:
        payload = {"error": {"code": status, "message": message,
                             "title": _KS_TITLES.get(status, "Error")}}
        hdrs = list(headers or []) + [("Vary", "X-Auth-Token"),
                                      ("x-openstack-request-id", f"req-{uuid.uuid4()}")]
        return self._json_response(status, payload, hdrs)

    # ------------------------------------------------------------------ keystone

    def _identity_url(self, req: _Request) -> str:
        return f"{req.base}/identity"

    def _identity(self, req: _Request) -> _Response:
        sub = req.path[len("/identity"):]
        v3 = {
            "id": "v3.14", "status": "stable", "updated": "2020-04-07T00:00:00Z",
            "links": [{"rel": "self", "href": f"{self._identity_url(req)}/v3/"}],
            "media-types": [{"base": "application/json",
                             "type": "application/vnd.openstack.identity-v3+json"}],
        }
        if sub in ("", "/") and req.method == "GET":
            return self._json_response(
                300, {"versions": {"values": [v3]}},
                [("Location", f"{self._identity_url(req)}/v3/"), ("Vary", "X-Auth-Token")])
        if sub in ("/v3", "/v3/") and req.method == "GET":
            return self._json_response(200, {"version": v3}, [("Vary", "X-Auth-Token")])
        if sub == "/v3/auth/tokens":
            if req.method == "POST":
                return self._ks_issue(req)
            if req.method in ("GET", "HEAD"):
                self._ks_check(req)
                tok = self._valid_token(req.headers.get("X-Subject-Token"))
                if tok is None:
                    raise _HTTPError(404, "Could not find token: "
                                     f"{req.headers.get('X-Subject-Token')}.")
                return self._json_response(200, self._token_body(tok, req),
                                           [("X-Subject-Token", tok.id)])
            if req.method == "DELETE":
                self._ks_check(req)
                with self._lock:
                    tok = self._tokens.get(req.headers.get("X-Subject-Token") or "")
                    if tok is None:
                        raise _HTTPError(404, "Could not find token.")
                    tok.revoked = True
                return 204, [], b""
        raise _HTTPError(404, "The resource could not be found.")

    def _ks_check(self, req: _Request) -> None:
        if self._valid_token(req.headers.get("X-Auth-Token")) is None:
            raise _HTTPError(401, "The request you have made requires authentication.",
                             [("WWW-Authenticate",
                               f'Keystone uri="{self._identity_url(req)}"')])

    def _valid_token(self, token_id: str | None) -> _Token | None:
        if not token_id:
            return None
        with self._lock:
            tok = self._tokens.get(token_id)
            if tok is None or tok.revoked or tok.expires <= _now():
                return None
            return tok

    def _ks_issue(self, req: _Request) -> _Response:
        unauthorized = _HTTPError(
            401, "The request you have made requires authentication.",
            [("WWW-Authenticate", f'Keystone uri="{self._identity_url(req)}"')])
        try:
            body = req.json()
        except _HTTPError as exc:
            raise _HTTPError(400, "Expecting to find auth in request body. The server could "
                             "not comply with the request since it is either malformed or "
                             "otherwise incorrect. The client is assumed to be in error.") \
                from exc
        auth = body.get("auth") if isinstance(body, dict) else None
        identity = auth.get("identity") if isinstance(auth, dict) else None
        methods = identity.get("methods") if isinstance(identity, dict) else None
        if not isinstance(methods, list) or not methods:
            raise _HTTPError(400, "Invalid input for field 'identity': 'methods' is a "
                             "required property")
        assert isinstance(auth, dict) and isinstance(identity, dict)
        scope = auth.get("scope")
        app_cred = False
        if methods == ["application_credential"]:
            cred = identity.get("application_credential") or {}
            ok_id = cred.get("id") == self.app_cred_id
            user = cred.get("user") or {}
            ok_name = (cred.get("name") == self.app_cred_name and
                       (user.get("id") == self.user_id or user.get("name") == self.username))
            if not (ok_id or ok_name) or cred.get("secret") != self.app_cred_secret:
                raise unauthorized
            if scope:
                raise _HTTPError(401, "Application credentials cannot request a scope.")
            scoped = app_cred = True
        elif methods == ["password"]:
            user = (identity.get("password") or {}).get("user") or {}
            domain = user.get("domain") or {}
            ok_user = user.get("id") == self.user_id or (
                user.get("name") == self.username and
                (domain.get("id") == "default" or domain.get("name") == self.user_domain_name))
            if not ok_user or user.get("password") != self.password:
                raise unauthorized
            scoped = self._check_scope(scope, unauthorized)
        elif methods == ["token"]:
            old = self._valid_token((identity.get("token") or {}).get("id"))
            if old is None:
                raise unauthorized
            scoped = self._check_scope(scope, unauthorized) or old.scoped
        else:
            raise unauthorized
        now = _now()
        tok = _Token(secrets.token_urlsafe(32), list(methods), scoped, now,
                     now + self.token_ttl, secrets.token_urlsafe(16)[:22], app_cred=app_cred)
        with self._lock:
            self._tokens[tok.id] = tok
        return self._json_response(201, self._token_body(tok, req),
                                   [("X-Subject-Token", tok.id), ("Vary", "X-Auth-Token")])

    def _check_scope(self, scope: Any, unauthorized: _HTTPError) -> bool:
        if not scope or scope == "unscoped":
            return False
        project = scope.get("project") if isinstance(scope, dict) else None
        if not isinstance(project, dict):
            raise unauthorized
        if project.get("id") == self.project_id:
            return True
        domain = project.get("domain") or {}
        if project.get("name") == self.project_name and (
                domain.get("id") == "default" or domain.get("name") == self.project_domain_name):
            return True
        raise unauthorized

    def _catalog(self, req: _Request) -> list[dict[str, Any]]:
        urls = {"compute": f"{req.base}/compute/v2.1", "identity": f"{req.base}/identity"}
        names = {"compute": "nova", "identity": "keystone"}
        return [
            {
                "endpoints": [
                    {"id": self._endpoint_ids[(svc, iface)], "interface": iface,
                     "region_id": self.region, "url": urls[svc], "region": self.region}
                    for iface in ("public", "internal", "admin")
                ],
                "id": self._catalog_ids[svc], "type": svc, "name": names[svc],
            }
            for svc in ("compute", "identity")
        ]

    def _token_body(self, tok: _Token, req: _Request) -> dict[str, Any]:
        domain = {"id": "default", "name": "Default"}
        token: dict[str, Any] = {
            "methods": tok.methods,
            "user": {"domain": domain, "id": self.user_id, "name": self.username,
                     "password_expires_at": None},
            "audit_ids": [tok.audit_id],
            "expires_at": _kstime(tok.expires),
            "issued_at": _kstime(tok.issued),
        }
        if tok.scoped:
            token["project"] = {"domain": domain, "id": self.project_id,
                                "name": self.project_name}
            token["is_domain"] = False
            token["roles"] = [{"id": rid, "name": name} for name, rid in self._role_ids.items()]
            token["catalog"] = self._catalog(req)
        if tok.app_cred:
            token["application_credential"] = {"id": self.app_cred_id,
                                               "name": self.app_cred_name, "restricted": True}
        return {"token": token}

    # ------------------------------------------------------------------ compute: plumbing

    def _versions_data(self) -> dict[str, dict[str, Any]]:
        return {
            "v2.0": {
                "id": "v2.0", "status": "DEPRECATED", "version": "", "min_version": "",
                "updated": "2025-07-04T12:00:00Z",
                "links": [{"rel": "describedby", "type": "text/html",
                           "href": "http://docs.openstack.org/"}],
                "media-types": [{"base": "application/json",
                                 "type": "application/vnd.openstack.compute+json;version=2"}],
            },
            "v2.1": {
                "id": "v2.1", "status": "CURRENT", "version": _vstr(self.max_version),
                "min_version": _vstr(self.min_version), "updated": "2013-07-23T11:33:21Z",
                "links": [{"rel": "describedby", "type": "text/html",
                           "href": "http://docs.openstack.org/"}],
                "media-types": [{"base": "application/json",
                                 "type": "application/vnd.openstack.compute+json;version=2.1"}],
            },
        }

    def _negotiate(self, req: _Request) -> None:
        """nova.api.openstack.wsgi.Request.set_api_version_request (microversion_parse)."""
        text: str | None = None
        header = req.headers.get_all("OpenStack-API-Version") or []
        for item in ",".join(header).split(","):
            parts = item.strip().split()
            if len(parts) == 2 and parts[0].lower() == "compute":
                text = parts[1]
        if text is None:
            legacy = req.headers.get_all("X-OpenStack-Nova-API-Version") or []
            if legacy:
                text = ",".join(legacy).strip()
        if text is None:
            req.version = self.min_version
        elif text == "latest":
            req.version = self.max_version
        else:
            parsed = _parse_version(text)
            if parsed is None:
                raise _Bad(f"API Version String {text} is of invalid format. Must be of "
                           "format MajorNum.MinorNum.")
            req.version = parsed
            if req.entry is not None:
                req.entry["microversion"] = _vstr(parsed)
            if not (self.min_version <= parsed <= self.max_version):
                raise _HTTPError(406, f"Version {_vstr(parsed)} is not supported by the API. "
                                 f"Minimum is {_vstr(self.min_version)} and maximum is "
                                 f"{_vstr(self.max_version)}.")
        if req.entry is not None:
            req.entry["microversion"] = _vstr(req.version)

    def _compute(self, req: _Request) -> _Response:
        with self._lock:
            down = self._api_down
        if down:
            return self._nova_fault(503, "The server is currently unavailable. Please try "
                                    "again at a later time.", None)
        sub = req.path[len("/compute"):]
        base = f"{req.base}/compute"
        if sub in ("", "/"):
            # Versions.index: not under microversion control
            versions = []
            for key in sorted(self._versions_data()):
                ver = self._versions_data()[key]
                number = "v2.1" if key == "v2.1" else "v2"
                versions.append({k: ver[k] for k in ("id", "status", "version", "min_version",
                                                     "updated")}
                                | {"links": [{"rel": "self", "href": f"{base}/{number}/"}]})
            return self._json_response(200, {"versions": versions})
        match = re.match(r"^/v2\.1(/.*)?$", sub)
        if not match:
            # Versions.multi: 300 multiple choices
            choices = []
            for key in sorted(self._versions_data()):
                ver = self._versions_data()[key]
                number = "v2.1" if key == "v2.1" else "v2"
                choices.append({"id": ver["id"], "status": ver["status"],
                                "links": [{"rel": "self", "href": f"{base}/{number}{sub}"}],
                                "media-types": ver["media-types"]})
            return self._json_response(300, {"choices": choices})
        rest = match.group(1) or ""
        if rest in ("", "/"):
            # VersionsV2: unauthenticated, but under microversion control
            self._negotiate(req)
            doc = copy.deepcopy(self._versions_data()["v2.1"])
            doc["links"].insert(0, {"rel": "self", "href": f"{base}/v2.1/"})
            return self._ok(req, {"version": doc})
        # keystonemiddleware auth_token runs before nova's app
        if self._valid_token(req.headers.get("X-Auth-Token")) is None:
            return self._json_response(
                401,
                {"error": {"code": 401, "title": "Unauthorized",
                           "message": "The request you have made requires authentication."}},
                [("WWW-Authenticate", f'Keystone uri="{self._identity_url(req)}"')])
        self._negotiate(req)
        pid = re.match(r"^/([0-9a-f]{32})(/.*)$", rest)
        if pid:
            if pid.group(1) != self.project_id:
                raise _Bad(f"Malformed request URL: URL's project_id '{pid.group(1)}' doesn't "
                           f"match Context's project_id '{self.project_id}'")
            rest = pid.group(2)
        for method, pattern, handler in self._routes():
            m = re.fullmatch(pattern, rest)
            if m and method == req.method:
                return handler(req, **m.groupdict())
        raise _HTTPError(404, "The resource could not be found.")

    def _routes(self) -> list[tuple[str, str, Callable[..., _Response]]]:
        return [
            ("GET", r"/servers", self._servers_index),
            ("POST", r"/servers", self._servers_create),
            ("GET", r"/servers/detail", self._servers_detail),
            ("GET", r"/servers/(?P<sid>[^/]+)", self._server_show),
            ("DELETE", r"/servers/(?P<sid>[^/]+)", self._server_delete),
            ("POST", r"/servers/(?P<sid>[^/]+)/action", self._server_action),
            ("GET", r"/servers/(?P<sid>[^/]+)/migrations", self._server_migrations),
            ("GET", r"/servers/(?P<sid>[^/]+)/os-instance-actions", self._instance_actions),
            ("GET", r"/os-services", self._services_index),
            ("PUT", r"/os-services/(?P<sid>[^/]+)", self._services_update),
            ("GET", r"/os-migrations", self._migrations_index),
            ("GET", r"/images/(?P<iid>[^/]+)", self._image_show),
            ("GET", r"/flavors", self._flavors_index),
            ("GET", r"/flavors/detail", self._flavors_detail),
            ("GET", r"/flavors/(?P<fid>[^/]+)", self._flavor_show),
            ("GET", r"/flavors/(?P<fid>[^/]+)/os-extra_specs", self._flavor_extra_specs),
            ("GET", r"/os-hypervisors", self._hypervisors_index),
            ("GET", r"/os-hypervisors/detail", self._hypervisors_detail),
        ]

    def _ok(self, req: _Request, payload: Any, status: int = 200,
            headers: list[tuple[str, str]] | None = None) -> _Response:
        hdrs = list(headers or []) + self._request_id_headers() + \
            self._version_headers(req.version)
        return self._json_response(status, payload, hdrs)

    def _validate_body(self, schema: dict[str, Any], body: Any) -> None:
        err = _schema_error(schema, body)
        if err is None:
            return
        path, instance, message = err
        if path:
            raise _Bad(f"Invalid input for field/attribute {path[-1]}. "
                       f"Value: {instance}. {message}")
        raise _Bad(message)

    def _no_query_params(self, req: _Request, since: str = "2.102") -> None:
        """show_query_v2102: no query string parameters allowed from 2.102."""
        if req.ge(since) and req.query:
            raise _Bad(_additional_query_error(req.query))

    def _limit_marker(self, req: _Request) -> tuple[int, str | None]:
        """common.get_limit_and_marker + the pagination query schema."""
        limit = self.max_limit
        raw = req.q("limit")
        if raw is not None:
            if raw == "":
                raise _Bad(f"Invalid input for query parameters limit. Value: {raw}. "
                           f"{raw!r} should be non-empty")
            if not re.fullmatch(r"[0-9]*", raw):
                raise _Bad(f"Invalid input for query parameters limit. Value: {raw}. "
                           f"{raw!r} does not match '^[0-9]*$'")
            limit = min(self.max_limit, int(raw))
        return limit, req.q("marker")

    def _next_link(self, req: _Request, collection: str, marker: str) -> list[dict[str, str]]:
        params = {k: v[-1] for k, v in sorted(req.query.items())}
        params["marker"] = marker
        return [{"rel": "next",
                 "href": f"{req.base}/compute/v2.1/{collection}?{urlencode(params)}"}]

    def _get_server(self, sid: str) -> dict[str, Any]:
        server = self._servers.get(sid)
        if server is None or server["deleted"]:
            raise _HTTPError(404, f"Instance {sid} could not be found.")
        return server

    # ------------------------------------------------------------------ compute: servers

    def _host_status(self, host: str | None) -> str:
        """compute.api.API.get_instance_host_status."""
        if not host or host not in self._hosts:
            return ""
        svc = self._compute_service(host)
        if svc.forced_down:
            return "DOWN"
        if svc.disabled:
            return "MAINTENANCE"
        return "UP" if self._service_is_up(svc) else "UNKNOWN"

    def _server_view(self, req: _Request, s: dict[str, Any], show: bool = False) -> dict[str, Any]:
        base = req.base
        sid = s["id"]
        status = self._status(s)
        flavor = s["flavor"]
        if req.ge("2.47"):
            flavor_view: dict[str, Any] = {
                "vcpus": flavor["vcpus"], "ram": flavor["memory_mb"], "disk": flavor["root_gb"],
                "ephemeral": flavor["ephemeral_gb"], "swap": flavor["swap"],
                "original_name": flavor["name"], "extra_specs": dict(flavor["extra_specs"]),
            }
        else:
            flavor_view = {"id": flavor["flavorid"], "links": [
                {"rel": "bookmark", "href": f"{base}/compute/flavors/{flavor['flavorid']}"}]}
        image = self._images.get(s["image_id"], {})
        image_view: dict[str, Any] = {"id": s["image_id"], "links": [
            {"rel": "bookmark", "href": f"{base}/compute/images/{s['image_id']}"}]}
        if req.ge("2.98"):
            image_view["properties"] = {k: v for k, v in image.get("properties", {}).items()
                                        if k in _STD_IMAGE_PROPS and v is not None}
        view: dict[str, Any] = {
            "accessIPv4": "", "accessIPv6": "", "addresses": {},
            "created": _isotime(s["created_at"]), "flavor": flavor_view,
            "hostId": _hostid(s["host"], s["project_id"]), "id": sid, "image": image_view,
            "links": [{"rel": "self", "href": f"{base}/compute/v2.1/servers/{sid}"},
                      {"rel": "bookmark", "href": f"{base}/compute/servers/{sid}"}],
            "metadata": dict(s["metadata"]), "name": s["name"], "status": status,
            "tenant_id": s["project_id"], "user_id": s["user_id"],
            "updated": _isotime(s["updated_at"]), "OS-DCF:diskConfig": "MANUAL",
        }
        if status in ("ERROR", "DELETED") and s["fault"]:
            fault = s["fault"]
            view["fault"] = {"code": fault["code"], "created": _isotime(fault["created"]),
                             "message": fault["message"]}
            if fault.get("details"):
                view["fault"]["details"] = fault["details"]
        if status in _PROGRESS_STATUSES:
            view["progress"] = 0
        view["OS-EXT-AZ:availability_zone"] = s["availability_zone"] or ""
        view["config_drive"] = ""
        view["key_name"] = None
        view["OS-SRV-USG:launched_at"] = _dbtime(s["launched_at"])
        view["OS-SRV-USG:terminated_at"] = None
        view["security_groups"] = [{"name": "default"}]
        view["OS-EXT-SRV-ATTR:host"] = s["host"]
        view["OS-EXT-SRV-ATTR:instance_name"] = f"instance-{s['db_id']:08x}"
        view["OS-EXT-SRV-ATTR:hypervisor_hostname"] = s["node"]
        if req.ge("2.3"):
            view.update({
                "OS-EXT-SRV-ATTR:hostname": s["hostname"], "OS-EXT-SRV-ATTR:kernel_id": "",
                "OS-EXT-SRV-ATTR:launch_index": 0, "OS-EXT-SRV-ATTR:ramdisk_id": "",
                "OS-EXT-SRV-ATTR:reservation_id": s["reservation_id"],
                "OS-EXT-SRV-ATTR:root_device_name": "/dev/vda",
                "OS-EXT-SRV-ATTR:user_data": None,
            })
        view["OS-EXT-STS:task_state"] = s["task_state"]
        view["OS-EXT-STS:vm_state"] = s["vm_state"]
        view["OS-EXT-STS:power_state"] = s["power_state"]
        view["os-extended-volumes:volumes_attached"] = []
        if req.ge("2.9"):
            view["locked"] = False
        if req.ge("2.16"):
            view["host_status"] = self._host_status(s["host"])
        if req.ge("2.19"):
            view["description"] = s["description"]
        if req.ge("2.26"):
            view["tags"] = list(s["tags"])
        if req.ge("2.63"):
            view["trusted_image_certificates"] = None
        if show and req.ge("2.71"):
            view["server_groups"] = []
        if req.ge("2.73"):
            view["locked_reason"] = None
        if req.ge("2.96"):
            view["pinned_availability_zone"] = s["pinned_availability_zone"]
        if req.ge("2.100"):
            view["scheduler_hints"] = {}
        return view

    def _list_servers(self, req: _Request) -> tuple[list[dict[str, Any]], int]:
        """ServersController._get_servers (admin context)."""
        if req.ge("2.75"):
            extra = set(req.query) - _SERVER_QUERY_KEYS
            if extra:
                raise _Bad(_additional_query_error(extra))
        for key in req.query:
            if key in _JOINED_TABLE_KEYS or key.startswith("_"):
                raise _Bad(f"Invalid filter field: {key}.")
        limit, marker = self._limit_marker(req)
        vm_states: list[str] | None = None
        task_states: list[Any] | None = None
        if "status" in req.query:
            wanted = [v.lower() for v in req.query["status"]]
            vms, tasks = set(), set()
            for vm, task_map in _STATE_MAP.items():
                for task, label in task_map.items():
                    if label.lower() in wanted:
                        vms.add(vm)
                        tasks.add(task)
            if not vms and not tasks:
                if req.ge("2.38"):
                    raise _Bad("Invalid status value")
                return [], limit
            vm_states = sorted(vms)
            if "default" not in tasks:
                task_states = list(tasks)
        all_tenants = False
        if "all_tenants" in req.query:
            raw = req.q("all_tenants") or ""
            if raw:
                try:
                    all_tenants = _bool_from_string(raw, strict=True)
                except ValueError as exc:
                    raise _Bad(str(exc)) from exc
            else:
                all_tenants = True
        project = None
        if all_tenants:
            project = req.q("project_id") or req.q("tenant_id")
        else:
            project = self.project_id
        host = req.q("host")
        node = req.q("node")
        name_re = req.q("name") or req.q("display_name")
        uuid_f = req.q("uuid")
        vm_f = req.query.get("vm_state")
        task_f = req.query.get("task_state")
        since = req.q("changes-since")
        since_ts = _parse_isotime(since) if since else None
        deleted = _bool_from_string(req.q("deleted")) if "deleted" in req.query else None
        with self._lock:
            items = []
            for s in self._servers.values():
                if deleted is None:
                    if s["deleted"] and since_ts is None:
                        continue
                elif s["deleted"] != deleted:
                    continue
                if project is not None and s["project_id"] != project:
                    continue
                if host is not None and s["host"] != host:
                    continue
                if node is not None and s["node"] != node:
                    continue
                if name_re is not None and not re.search(name_re, s["name"]):
                    continue
                if uuid_f is not None and s["id"] != uuid_f:
                    continue
                if vm_states is not None and s["vm_state"] not in vm_states:
                    continue
                if task_states is not None and s["task_state"] not in task_states:
                    continue
                if vm_f and s["vm_state"] not in vm_f:
                    continue
                if task_f and str(s["task_state"]) not in task_f:
                    continue
                if since_ts is not None and s["updated_at"] < since_ts:
                    continue
                items.append(s)
            sort_key = req.q("sort_key") or "created_at"
            reverse = (req.q("sort_dir") or "desc").lower() != "asc"
            key_map = {"display_name": "name", "uuid": "id", "created_at": "created_at",
                       "updated_at": "updated_at", "host": "host", "node": "node",
                       "vm_state": "vm_state", "task_state": "task_state"}
            attr = key_map.get(sort_key, "created_at")

            def sort_value(srv: dict[str, Any]) -> tuple[Any, int]:
                value = srv.get(attr)
                if attr in ("created_at", "updated_at"):
                    value = int(value or 0)  # DB second precision, then id
                return (value if value is not None else "", srv["db_id"])

            items.sort(key=sort_value, reverse=reverse)
            if marker is not None:
                index = next((i for i, s in enumerate(items) if s["id"] == marker), None)
                if index is None:
                    raise _Bad(f"marker [{marker}] not found")
                items = items[index + 1:]
            items = items[:limit] if limit else []
            return [copy.deepcopy(s) for s in items], limit

    def _servers_index(self, req: _Request) -> _Response:
        items, limit = self._list_servers(req)
        servers = [{"id": s["id"], "name": s["name"], "links": [
            {"rel": "self", "href": f"{req.base}/compute/v2.1/servers/{s['id']}"},
            {"rel": "bookmark", "href": f"{req.base}/compute/servers/{s['id']}"}]}
            for s in items]
        payload: dict[str, Any] = {"servers": servers}
        if limit and len(items) == limit:
            payload["servers_links"] = self._next_link(req, "servers", items[-1]["id"])
        return self._ok(req, payload)

    def _servers_detail(self, req: _Request) -> _Response:
        items, limit = self._list_servers(req)
        with self._lock:
            servers = [self._server_view(req, s) for s in items]
        payload: dict[str, Any] = {"servers": servers}
        if limit and len(items) == limit:
            payload["servers_links"] = self._next_link(req, "servers/detail", items[-1]["id"])
        return self._ok(req, payload)

    def _server_show(self, req: _Request, sid: str) -> _Response:
        self._no_query_params(req)
        with self._lock:
            return self._ok(req, {"server": self._server_view(req, self._get_server(sid),
                                                              show=True)})

    def _server_delete(self, req: _Request, sid: str) -> _Response:
        """Simplified: the server is deleted at once (nova's local delete)."""
        with self._lock:
            server = self._get_server(sid)
            self._touch(server, deleted=True, vm_state=DELETED, task_state=None)
            for allocs in self._alloc.values():
                allocs.discard(sid)
            for h in self._hosts.values():
                h.guests.discard(sid)
        return self._ok(req, None, status=204)

    def _servers_create(self, req: _Request) -> _Response:
        """POST /servers, simplified: no networking; ``nova:HOST`` forces a host."""
        body = req.json()
        server_schema: dict[str, Any] = {
            "type": "object",
            "properties": {"server": {"type": "object", "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 255},
                "imageRef": {"type": "string"},
                "flavorRef": {"type": ["string", "integer"], "minLength": 1},
                "availability_zone": {"type": "string", "minLength": 1, "maxLength": 255},
                "metadata": {"type": "object"},
            }, "required": ["name", "flavorRef"]}},
            "required": ["server"], "additionalProperties": False,
        }
        if req.ge("2.37"):
            server_schema["properties"]["server"]["required"].append("networks")
        self._validate_body(server_schema, body)
        spec = body["server"]
        with self._lock:
            flavor_id = str(spec["flavorRef"]).rsplit("/", 1)[-1]
            if flavor_id not in self._flavors:
                raise _Bad("Invalid flavorRef provided.")
            image_id = str(spec.get("imageRef") or self.default_image_id).rsplit("/", 1)[-1]
            if image_id not in self._images:
                raise _Bad("Can not find requested image")
            az = spec.get("availability_zone")
            forced_host = None
            pinned = None
            if az:
                zone, _, forced = az.partition(":")
                pinned = zone or None
                if forced:
                    forced_host = forced.split(":")[0]
                    if forced_host not in self._hosts:
                        raise _Bad(f"No valid host was found. Compute host {forced_host} "
                                   "could not be found.")
            metadata = {str(k): str(v) for k, v in (spec.get("metadata") or {}).items()}
            server = self._new_server(spec["name"], flavor_id, image_id, metadata,
                                      self.project_id, pinned)
            sid = server["id"]
            self._schedule_at(_now(), lambda: self._build(sid, forced_host))
        payload = {"server": {
            "id": sid,
            "links": [{"rel": "self", "href": f"{req.base}/compute/v2.1/servers/{sid}"},
                      {"rel": "bookmark", "href": f"{req.base}/compute/servers/{sid}"}],
            "OS-DCF:diskConfig": "MANUAL", "security_groups": [{"name": "default"}],
            "adminPass": _generate_password(),
        }}
        return self._ok(req, payload, status=202,
                        headers=[("Location", f"{req.base}/compute/v2.1/servers/{sid}")])

    def _build(self, sid: str, forced_host: str | None) -> None:
        server = self._servers.get(sid)
        if server is None or server["deleted"]:
            return
        if forced_host is not None:
            host: str | None = forced_host if self._has_room(forced_host) else None
            reason = ""
        else:
            host, reason = self._select_host(None, None)
        if host is None:
            self._touch(server, vm_state=ERROR, task_state=None)
            self._fault(server, f"No valid host was found. {reason}")
            return
        self._alloc[host].add(sid)
        self._touch(server, task_state=SPAWNING, host=host, node=host)

        def spawned() -> None:
            if server["deleted"]:
                return
            self._hosts[host].guests.add(sid)
            self._touch(server, vm_state=ACTIVE, task_state=None, power_state=RUNNING,
                        launched_at=_now(), availability_zone="nova")

        self._on_compute(host, _now() + self.build_delay, spawned)

    # ------------------------------------------------------------------ compute: actions

    def _server_action(self, req: _Request, sid: str) -> _Response:
        body = req.json()
        if not isinstance(body, dict) or not body:
            raise _Bad("Malformed request body")
        action = next(iter(body))
        handlers: dict[str, Callable[[_Request, str, dict[str, Any]], _Response]] = {
            "evacuate": self._action_evacuate,
            "os-resetState": self._action_reset_state,
            "os-stop": self._action_stop,
            "os-start": self._action_start,
        }
        handler = handlers.get(action)
        if handler is None:
            raise _Bad(f"There is no such action: {action}")
        response = handler(req, sid, body)
        name = {"evacuate": "evacuate", "os-stop": "stop", "os-start": "start"}.get(action)
        if name:  # Nova records an instance action for these (not for os-resetState)
            self._record_action(sid, name)
        return response

    def _record_action(self, sid: str, action: str) -> None:
        with self._lock:
            self._actions.setdefault(sid, []).append({
                "action": action, "instance_uuid": sid, "message": None,
                "project_id": self.project_id, "user_id": self.user_id,
                "request_id": f"req-{uuid.uuid4()}", "start_time": _isotime(_now())})

    def _instance_actions(self, req: _Request, sid: str) -> _Response:
        with self._lock:
            if sid not in self._servers:
                raise _HTTPError(404, f"Instance {sid} could not be found.")
            actions = list(reversed(self._actions.get(sid, [])))
        return self._ok(req, {"instanceActions": actions})

    def _evacuate_schema(self, req: _Request) -> dict[str, Any]:
        props: dict[str, Any] = {"host": _FQDN}
        inner: dict[str, Any] = {"type": "object", "properties": props}
        if not req.ge("2.14"):
            props["onSharedStorage"] = _BOOLEAN
        props["adminPass"] = {"type": "string"}
        if req.ge("2.29") and not req.ge("2.68"):
            props["force"] = _BOOLEAN
        if not req.ge("2.14"):
            inner["required"] = ["onSharedStorage"]
        inner["additionalProperties"] = False
        return {"type": "object", "properties": {"evacuate": inner},
                "required": ["evacuate"], "additionalProperties": False}

    def _action_evacuate(self, req: _Request, sid: str, body: dict[str, Any]) -> _Response:
        """nova/api/openstack/compute/evacuate.py + compute.api.API.evacuate."""
        self._validate_body(self._evacuate_schema(req), body)
        with self._lock:
            server = self._get_server(sid)
        ebody = body["evacuate"]
        host = ebody.get("host")
        target_stopped = req.ge("2.95")
        on_shared: bool | None = None
        if not req.ge("2.14"):
            on_shared = _bool_from_string(ebody["onSharedStorage"])
        force: bool | None = None
        if req.ge("2.29"):
            force = _bool_from_string(ebody.get("force", False), strict=True)
            if force is True and not host:
                raise _Bad("Can't force to a non-provided destination")
        if req.ge("2.14"):
            password: str | None = ebody.get("adminPass") or _generate_password()
        elif "adminPass" in ebody:
            if on_shared:
                raise _Bad("admin password can't be changed on existing disk")
            password = ebody["adminPass"]
        else:
            password = None if on_shared else _generate_password()
        with self._lock:
            if host is not None and host not in self._hosts:
                raise _HTTPError(404, f"Compute host {host} not found.")
            if server["host"] == host:
                raise _Bad("The target host can't be the same one.")
            if self._conflict_evacuates > 0:
                self._conflict_evacuates -= 1
                raise _HTTPError(409, f"Cannot 'evacuate' instance {sid} while it is in "
                                 f"task_state {REBUILDING}")
            # @check_instance_state(vm_state=[ACTIVE, STOPPED, ERROR], task_state=None):
            # task_state=None *disables* the task check, so Nova accepts an evacuation of a
            # server that is already being rebuilt, and the two rebuilds break it (seen on
            # the real Nova 34 box; the contract suite holds both to it).
            if server["vm_state"] not in (ACTIVE, STOPPED, ERROR):
                raise _HTTPError(409, f"Cannot 'evacuate' instance {sid} while it is in "
                                 f"vm_state {server['vm_state']}")
            if server["launched_at"] is None:
                raise _HTTPError(409, f"Cannot 'evacuate' instance {sid} while it is in "
                                 "launched_at None")
            source = server["host"]
            if source is not None and source in self._hosts and \
                    self._service_is_up(self._compute_service(source)):
                raise _Bad(f"Compute service of {source} is still in use.")
            self._touch(server, task_state=REBUILDING)
            mig = self._new_migration(server, "evacuation", "accepted", host)
            orig_vm = server["vm_state"]
            stop_at_end = orig_vm == STOPPED or (target_stopped and orig_vm != ERROR)
            # before 2.29 a given host bypasses the scheduler; 2.29-2.67 only with force
            forced = bool(host) and (force is None or force is True)
            t0 = _now()
            delay = self.evacuate_delay
            total = float(delay(copy.deepcopy(server)) if callable(delay) else delay)
            self._schedule_at(t0, lambda: self._evac_conductor(
                sid, mig, host, forced, on_shared, stop_at_end, t0, max(total, 0.0)))
        if not req.ge("2.14"):
            return self._ok(req, {"adminPass": password})
        return self._ok(req, None)

    def _evac_conductor(self, sid: str, mig: dict[str, Any], requested: str | None,
                        forced: bool, on_shared: bool | None, stop_at_end: bool,
                        t0: float, total: float) -> None:
        """ComputeTaskManager.rebuild_instance (evacuate): schedule and claim."""
        server = self._servers.get(sid)
        if server is None or server["deleted"]:
            self._mig_status(mig, "error")
            return
        source = server["host"]
        if forced:
            assert requested is not None
            dest: str | None = requested if self._has_room(requested) else None
            reason = ""
        else:
            dest, reason = self._select_host(source, requested)
        if dest is None:
            self._mig_status(mig, "error")
            self._touch(server, vm_state=ERROR, task_state=None)
            self._fault(server, f"No valid host was found. {reason}",
                        "nova.exception.NoValidHost")
            return
        self._alloc[dest].add(sid)
        self._touch(server, availability_zone="nova")

        def fail(message: str) -> None:
            self._mig_status(mig, "failed")
            self._alloc[dest].discard(sid)
            self._touch(server, vm_state=ERROR, task_state=None)
            self._fault(server, message)

        def still_ours(expected: tuple[str, ...]) -> bool:
            if server["deleted"]:
                self._mig_status(mig, "failed")
                self._alloc[dest].discard(sid)
                return False
            if server["task_state"] not in expected:
                fail(f"Unexpected task state: expecting {list(expected)} but the actual "
                     f"state is {server['task_state']}")
                return False
            return True

        def claim() -> None:  # ResourceTracker.rebuild_claim on the destination
            if not still_ours((REBUILDING,)):
                return
            mig.update(dest_compute=dest, dest_node=dest, dest_host="127.0.0.1")
            self._mig_status(mig, "pre-migrating")
            if on_shared is not None and on_shared != self.shared_storage:
                fail("Invalid state of instance files on shared storage")
                return
            self._touch(server, power_state=NOSTATE)
            self._on_compute(dest, max(_now(), t0 + 0.3 * total), bdm)

        def bdm() -> None:
            if still_ours((REBUILDING,)):
                self._touch(server, task_state=REBUILD_BDM)
                self._on_compute(dest, max(_now(), t0 + 0.5 * total), spawning)

        def spawning() -> None:
            if still_ours((REBUILD_BDM,)):
                self._touch(server, task_state=REBUILD_SPAWNING)
                self._on_compute(dest, max(_now(), t0 + total), spawned)

        def spawned() -> None:
            if not still_ours((REBUILD_SPAWNING,)):
                return
            if self._should_fail_evacuation(server):
                fail("Build of instance evacuation failed: NovaSim injected failure")
                return
            self._touch(server, vm_state=ACTIVE, task_state=None, power_state=RUNNING,
                        launched_at=_now())
            if self.evacuate_finish_window > 0:
                self._on_compute(dest, _now() + self.evacuate_finish_window, finish)
            else:
                finish()

        def finish() -> None:
            if server["deleted"]:
                self._mig_status(mig, "failed")
                return
            if stop_at_end:
                self._touch(server, vm_state=STOPPED, task_state=None, power_state=SHUTDOWN)
            # ResourceTracker.finish_evacuation
            self._hosts[dest].guests.add(sid)
            self._touch(server, host=dest, node=dest)
            self._mig_status(mig, "done")

        self._on_compute(dest, max(_now(), t0 + 0.1 * total), claim)

    def _action_reset_state(self, req: _Request, sid: str, body: dict[str, Any]) -> _Response:
        schema = {"type": "object", "properties": {"os-resetState": {
            "type": "object",
            "properties": {"state": {"type": "string", "enum": ["active", "error"]}},
            "required": ["state"], "additionalProperties": False}},
            "required": ["os-resetState"], "additionalProperties": False}
        self._validate_body(schema, body)
        with self._lock:
            server = self._get_server(sid)
        with self._lock:
            self._touch(server, vm_state=body["os-resetState"]["state"], task_state=None)
        return self._ok(req, None, status=202)

    def _check_state(self, server: dict[str, Any], action: str, vm_states: tuple[str, ...]) -> None:
        sid = server["id"]
        if server["vm_state"] not in vm_states:
            raise _HTTPError(409, f"Cannot '{action}' instance {sid} while it is in vm_state "
                             f"{server['vm_state']}")
        if server["task_state"] is not None:
            raise _HTTPError(409, f"Cannot '{action}' instance {sid} while it is in task_state "
                             f"{server['task_state']}")

    def _action_stop(self, req: _Request, sid: str, body: dict[str, Any]) -> _Response:
        schema = {"type": "object", "properties": {"os-stop": {}}, "required": ["os-stop"],
                  "additionalProperties": False}
        self._validate_body(schema, body)
        with self._lock:
            server = self._get_server(sid)
        with self._lock:
            if not server["host"]:
                raise _HTTPError(409, f"Instance {sid} is not ready")
            self._check_state(server, "stop", (ACTIVE, ERROR))
            self._touch(server, task_state=POWERING_OFF)

            def stopped() -> None:
                if server["task_state"] == POWERING_OFF and not server["deleted"]:
                    self._touch(server, vm_state=STOPPED, task_state=None,
                                power_state=SHUTDOWN)

            self._on_compute(server["host"], _now() + self.action_delay, stopped)
        return self._ok(req, None, status=202)

    def _action_start(self, req: _Request, sid: str, body: dict[str, Any]) -> _Response:
        schema = {"type": "object", "properties": {"os-start": {}}, "required": ["os-start"],
                  "additionalProperties": False}
        self._validate_body(schema, body)
        with self._lock:
            server = self._get_server(sid)
        with self._lock:
            if not server["host"]:
                raise _HTTPError(409, f"Instance {sid} is not ready")
            self._check_state(server, "start", (STOPPED,))
            self._touch(server, task_state=POWERING_ON)

            def started() -> None:
                if server["task_state"] == POWERING_ON and not server["deleted"]:
                    self._touch(server, vm_state=ACTIVE, task_state=None, power_state=RUNNING)

            self._on_compute(server["host"], _now() + self.action_delay, started)
        return self._ok(req, None, status=202)

    # ------------------------------------------------------------------ compute: services

    def _service_view(self, req: _Request, svc: _Service) -> dict[str, Any]:
        view: dict[str, Any] = {
            "binary": svc.binary, "host": svc.host,
            "id": svc.uuid if req.ge("2.53") else svc.id, "zone": svc.zone,
            "status": "disabled" if svc.disabled else "enabled",
            "state": "up" if self._service_is_up(svc) else "down",
            "updated_at": _dbtime(self._service_updated_at(svc)),
            "disabled_reason": svc.disabled_reason,
        }
        if req.ge("2.11"):
            view["forced_down"] = svc.forced_down
        return view

    def _services_index(self, req: _Request) -> _Response:
        if req.ge("2.75"):
            extra = set(req.query) - {"host", "binary"}
            if extra:
                raise _Bad(_additional_query_error(extra))
        host = req.q("host") or ""
        binary = req.q("binary") or ""
        with self._lock:
            services = [self._service_view(req, s) for s in self._services
                        if (not host or s.host == host) and (not binary or s.binary == binary)]
        return self._ok(req, {"services": services})

    def _done_evacuations_block(self, host: str) -> None:
        """ServiceController._check_for_evacuations."""
        if any(m["source_compute"] == host and m["status"] == "done"
               and m["migration_type"] == "evacuation" for m in self._migrations):
            raise _Bad(f"Unable to force up host {host} as `done` evacuation migration records "
                       "remain associated with the host. Ensure the compute service has been "
                       "restarted, allowing these records to move to `completed` before "
                       "retrying this request.")

    def _services_update(self, req: _Request, sid: str) -> _Response:
        body = req.json()
        if req.ge("2.53"):
            return self._services_update_v253(req, sid, body)
        schema: dict[str, Any] = {"type": "object", "properties": {
            "host": _FQDN, "binary": {"type": "string", "minLength": 1, "maxLength": 255},
            "disabled_reason": _REASON}, "required": ["host", "binary"],
            "additionalProperties": False}
        if req.ge("2.11"):
            schema["properties"]["forced_down"] = _BOOLEAN
        self._validate_body(schema, body)
        actions = ["enable", "disable", "disable-log-reason"]
        if req.ge("2.11"):
            actions.append("force-down")
        if sid not in actions:
            raise _HTTPError(404, "Unknown action")
        host, binary = body["host"], body["binary"]
        with self._lock:
            if sid == "force-down":
                if "forced_down" not in body:
                    raise _Bad("Missing forced_down field")
                forced = _bool_from_string(body["forced_down"])
                if binary == "nova-compute" and forced is False:
                    self._done_evacuations_block(host)
                result: dict[str, Any] = {"host": host, "binary": binary,
                                          "forced_down": forced}
                updates: dict[str, Any] = {"forced_down": forced}
            else:
                reason = None
                if sid == "disable-log-reason":
                    if "disabled_reason" not in body:
                        raise _Bad("Missing disabled reason field")
                    reason = body["disabled_reason"]
                enable = sid == "enable"
                result = {"host": host, "binary": binary,
                          "status": "enabled" if enable else "disabled"}
                if reason:
                    result["disabled_reason"] = reason
                updates = {"disabled": not enable, "disabled_reason": reason}
            if binary != "nova-compute":
                raise _Bad(f"Updating a {binary} service is not supported. Only nova-compute "
                           "services can be updated.")
            if host not in self._hosts:
                raise _HTTPError(404, f"Host '{host}' is not mapped to any cell")
            svc = self._compute_service(host)
            for key, value in updates.items():
                setattr(svc, key, value)
            svc.admin_updated = _now()
        return self._ok(req, {"service": result})

    def _services_update_v253(self, req: _Request, sid: str, body: Any) -> _Response:
        schema = {"type": "object", "properties": {
            "status": {"type": "string", "enum": ["enabled", "disabled"]},
            "disabled_reason": _REASON, "forced_down": _BOOLEAN},
            "additionalProperties": False}
        self._validate_body(schema, body)
        if not _is_uuid_like(sid):
            raise _Bad(f"Invalid uuid {sid}")
        with self._lock:
            svc = next((s for s in self._services if s.uuid == sid), None)
            if svc is None:
                raise _HTTPError(404, f"Service {sid} could not be found.")
        if svc.binary != "nova-compute":
            raise _Bad(f"Updating a {svc.binary} service is not supported. Only nova-compute "
                       "services can be updated.")
        changes: dict[str, Any] = {}
        if "status" in body:
            if body["status"] == "enabled":
                if body.get("disabled_reason"):
                    raise _Bad("Specifying 'disabled_reason' with status 'enabled' is invalid.")
                changes.update(disabled=False, disabled_reason=None)
            else:
                changes.update(disabled=True, disabled_reason=body.get("disabled_reason"))
        with self._lock:
            if "forced_down" in body:
                forced = _bool_from_string(body["forced_down"], strict=True)
                changes["forced_down"] = forced
                if forced is False:
                    self._done_evacuations_block(svc.host)
            if not changes:
                raise _Bad("No updates were requested. Fields 'status' or 'forced_down' "
                           "should be specified.")
            for key, value in changes.items():
                setattr(svc, key, value)
            svc.admin_updated = _now()
            view = self._service_view(req, svc)
        return self._ok(req, {"service": view})

    # ------------------------------------------------------------------ compute: migrations

    def _migration_view(self, req: _Request, m: dict[str, Any]) -> dict[str, Any]:
        view = {k: m[k] for k in ("dest_compute", "dest_host", "dest_node", "id",
                                  "instance_uuid", "new_instance_type_id",
                                  "old_instance_type_id", "source_compute", "source_node",
                                  "status")}
        view["created_at"] = _dbtime(m["created_at"])
        view["updated_at"] = _dbtime(m["updated_at"])
        if req.ge("2.23"):
            view["migration_type"] = m["migration_type"]
        if req.ge("2.59"):
            view["uuid"] = m["uuid"]
        if req.ge("2.80"):
            view["user_id"] = m["user_id"]
            view["project_id"] = m["project_id"]
        return view

    def _migrations_index(self, req: _Request) -> _Response:
        """MigrationsController.index."""
        allowed = {"hidden", "host", "instance_uuid", "source_compute", "status",
                   "migration_type"}
        if req.ge("2.59"):
            allowed |= {"limit", "marker", "changes-since"}
            if req.ge("2.66"):
                allowed.add("changes-before")
            if req.ge("2.80"):
                allowed |= {"user_id", "project_id"}
            extra = set(req.query) - allowed
            if extra:
                raise _Bad(_additional_query_error(extra))
        f = {k: req.q(k) for k in req.query}
        since = f.get("changes-since") if req.ge("2.59") else None
        before = f.get("changes-before") if req.ge("2.66") else None
        since_ts = _parse_isotime(since) if since else None
        before_ts = _parse_isotime(before) if before else None
        if since_ts is not None and before_ts is not None and before_ts < since_ts:
            raise _Bad("The value of changes-since must be less than or equal to "
                       "changes-before.")
        with self._lock:
            items = []
            for m in self._migrations:
                if "status" in f and m["status"] != f["status"]:
                    continue
                if "host" in f:
                    if f["host"] not in (m["source_compute"], m["dest_compute"]):
                        continue
                elif "source_compute" in f and m["source_compute"] != f["source_compute"]:
                    continue
                if "migration_type" in f and m["migration_type"] != f["migration_type"]:
                    continue
                if "hidden" in f and m["hidden"] != _bool_from_string(f["hidden"]):
                    continue
                if "instance_uuid" in f and m["instance_uuid"] != f["instance_uuid"]:
                    continue
                if req.ge("2.80"):
                    if "user_id" in f and m["user_id"] != f["user_id"]:
                        continue
                    if "project_id" in f and m["project_id"] != f["project_id"]:
                        continue
                stamp = m["updated_at"] or m["created_at"]
                if since_ts is not None and stamp < since_ts:
                    continue
                if before_ts is not None and stamp > before_ts:
                    continue
                items.append(m)
            links = None
            if req.ge("2.59"):
                items.sort(key=lambda m: (int(m["created_at"]), m["id"]), reverse=True)
                limit, marker = self._limit_marker(req)
                if marker is not None:
                    index = next((i for i, m in enumerate(items) if m["uuid"] == marker), None)
                    if index is None:
                        raise _Bad(f"Marker {marker} could not be found.")
                    items = items[index + 1:]
                items = items[:limit] if limit else []
                if limit and len(items) == limit:
                    links = self._next_link(req, "os-migrations", items[-1]["uuid"])
            views = [self._migration_view(req, m) for m in items if not m["hidden"]]
        payload: dict[str, Any] = {"migrations": views}
        if links:
            payload["migrations_links"] = links
        return self._ok(req, payload)

    def _server_migrations(self, req: _Request, sid: str) -> _Response:
        """GET /servers/{id}/migrations (>= 2.23): in-progress live migrations only."""
        if not req.ge("2.23"):
            raise _HTTPError(404, "The resource could not be found.")
        self._no_query_params(req)
        with self._lock:
            self._get_server(sid)
        return self._ok(req, {"migrations": []})

    # ------------------------------------------------------------------ compute: misc

    def _image_show(self, req: _Request, iid: str) -> _Response:
        """The image proxy: only below 2.36 (MAX_PROXY_API_SUPPORT_VERSION 2.35)."""
        if req.version > _MAX_PROXY_API_VERSION:
            raise _HTTPError(404, "The resource could not be found.")
        with self._lock:
            image = self._images.get(iid)
            if image is None:
                raise _HTTPError(404, "Image not found.")
            image = copy.deepcopy(image)
        base = req.base
        view = {
            "id": iid, "name": image["name"], "minRam": 0, "minDisk": 0,
            "metadata": image["properties"], "created": _isotime(image["created_at"]),
            "updated": _isotime(image["updated_at"]), "status": "ACTIVE", "progress": 100,
            "OS-EXT-IMG-SIZE:size": image["size"],
            "links": [
                {"rel": "self", "href": f"{base}/compute/v2.1/images/{iid}"},
                {"rel": "bookmark", "href": f"{base}/compute/images/{iid}"},
                {"rel": "alternate", "type": "application/vnd.openstack.image",
                 "href": f"{base}/image/images/{iid}"},
            ],
        }
        return self._ok(req, {"image": view})

    def _flavor_view(self, req: _Request, flavor: dict[str, Any], detail: bool) -> dict[str, Any]:
        fid = flavor["flavorid"]
        view: dict[str, Any] = {
            "id": fid, "name": flavor["name"],
            "links": [{"rel": "self", "href": f"{req.base}/compute/v2.1/flavors/{fid}"},
                      {"rel": "bookmark", "href": f"{req.base}/compute/flavors/{fid}"}],
        }
        if detail:
            view.update({
                "ram": flavor["memory_mb"], "disk": flavor["root_gb"],
                "swap": (flavor["swap"] or 0) if req.ge("2.75") else (flavor["swap"] or ""),
                "OS-FLV-EXT-DATA:ephemeral": flavor["ephemeral_gb"], "vcpus": flavor["vcpus"],
                "os-flavor-access:is_public": flavor["is_public"],
            })
            if not req.ge("2.102"):
                view["OS-FLV-DISABLED:disabled"] = False
                view["rxtx_factor"] = 1.0
            if req.ge("2.61"):
                view["extra_specs"] = dict(flavor["extra_specs"])
        if req.ge("2.55"):
            view["description"] = flavor["description"]
        return view

    def _flavors_index(self, req: _Request) -> _Response:
        with self._lock:
            flavors = [self._flavor_view(req, f, False) for f in self._flavors.values()]
        return self._ok(req, {"flavors": flavors})

    def _flavors_detail(self, req: _Request) -> _Response:
        with self._lock:
            flavors = [self._flavor_view(req, f, True) for f in self._flavors.values()]
        return self._ok(req, {"flavors": flavors})

    def _flavor_show(self, req: _Request, fid: str) -> _Response:
        self._no_query_params(req)
        with self._lock:
            flavor = self._flavors.get(fid)
            if flavor is None:
                raise _HTTPError(404, f"Flavor {fid} could not be found.")
            return self._ok(req, {"flavor": self._flavor_view(req, flavor, True)})

    def _flavor_extra_specs(self, req: _Request, fid: str) -> _Response:
        self._no_query_params(req)
        with self._lock:
            flavor = self._flavors.get(fid)
            if flavor is None:
                raise _HTTPError(404, f"Flavor {fid} could not be found.")
            return self._ok(req, {"extra_specs": dict(flavor["extra_specs"])})

    def _hypervisor_view(self, req: _Request, host: str, detail: bool) -> dict[str, Any]:
        num, hid = self._hypervisor_ids[host]
        svc = self._compute_service(host)
        view: dict[str, Any] = {
            "id": hid if req.ge("2.53") else num, "hypervisor_hostname": host,
            "state": "up" if self._service_is_up(svc) else "down",
            "status": "disabled" if svc.disabled else "enabled",
        }
        if detail:
            view.update({"host_ip": "127.0.0.1", "hypervisor_type": "fake",
                         "hypervisor_version": 1000,
                         "service": {"host": host, "id": svc.uuid if req.ge("2.53") else svc.id,
                                     "disabled_reason": svc.disabled_reason}})
            if not req.ge("2.88"):
                used = len(self._alloc[host])
                view.update({"vcpus": 1000, "vcpus_used": used, "running_vms": used})
        return view

    def _hypervisors_index(self, req: _Request) -> _Response:
        with self._lock:
            views = [self._hypervisor_view(req, h, False) for h in self._hosts]
        return self._ok(req, {"hypervisors": views})

    def _hypervisors_detail(self, req: _Request) -> _Response:
        with self._lock:
            views = [self._hypervisor_view(req, h, True) for h in self._hosts]
        return self._ok(req, {"hypervisors": views})

    # ------------------------------------------------------------------ /_testbed

    def _testbed(self, req: _Request) -> _Response:
        parts = [p for p in req.path.split("/") if p][1:]
        body = req.json() if req.body else {}
        body = body if isinstance(body, dict) else {}
        m, ok = req.method, self._json_response
        if parts == ["hosts"] and m == "GET":
            return ok(200, self.hosts())
        if len(parts) == 3 and parts[0] == "hosts" and m == "POST" and \
                parts[2] in ("crash", "start"):
            if parts[1] not in self._hosts:
                raise _HTTPError(404, f"unknown host {parts[1]}")
            if parts[2] == "crash":
                self.crash(parts[1])
            else:
                self.start(parts[1])
            return ok(200, {"host": parts[1], "running": self._hosts[parts[1]].running})
        if len(parts) == 3 and parts[0] == "hosts" and m == "POST" and parts[2] == "force-down":
            self.force_down(parts[1], bool(body.get("forced_down", True)))
            return ok(200, {"host": parts[1]})
        if parts == ["servers"] and m == "POST":
            try:
                ids = self.create_servers(
                    body["host"], int(body.get("count", 1)), body.get("name_prefix", "vm"),
                    body.get("flavor_extra_specs"), body.get("metadata"),
                    body.get("image_properties"), body.get("status", "ACTIVE"),
                    body.get("project_id"))
            except (KeyError, ValueError) as exc:
                raise _HTTPError(400, str(exc)) from exc
            return ok(200, {"ids": ids})
        if parts == ["servers"] and m == "GET":
            return ok(200, {"servers": self.servers()})
        if len(parts) == 2 and parts[0] == "servers" and m == "GET":
            try:
                return ok(200, self.server(parts[1]))
            except KeyError as exc:
                raise _HTTPError(404, f"unknown server {parts[1]}") from exc
        if parts == ["migrations"] and m == "GET":
            return ok(200, {"migrations": self.migrations()})
        if parts == ["log"] and m == "GET":
            return ok(200, {"log": self.request_log()})
        if parts == ["log"] and m == "DELETE":
            self.clear_log()
            return ok(200, {})
        if parts == ["api"] and m == "POST":
            self.set_api_down(bool(body.get("down")))
            return ok(200, {"down": self._api_down})
        if parts == ["config"] and m == "POST":
            for key in ("latency", "service_down_time", "report_interval", "evacuate_delay",
                        "evacuate_finish_window", "build_delay", "action_delay",
                        "host_capacity", "shared_storage", "token_ttl"):
                if key in body:
                    setattr(self, key, body[key])
            return ok(200, {})
        if parts == ["fail_next"] and m == "POST":
            self.fail_next(body["path_regex"], int(body.get("status", 500)),
                           int(body.get("count", 1)), body.get("method"),
                           apply=bool(body.get("apply", False)), message=body.get("message"))
            return ok(200, {})
        if parts == ["timeout_next"] and m == "POST":
            self.timeout_next(body["path_regex"], float(body["seconds"]),
                              int(body.get("count", 1)), body.get("method"),
                              respond=bool(body.get("respond", True)))
            return ok(200, {})
        if parts == ["expire_tokens"] and m == "POST":
            self.expire_tokens()
            return ok(200, {})
        if parts == ["evacuate_fail"] and m == "POST":
            if "probability" in body:
                self.evacuate_fail(float(body["probability"]))
            else:
                self.evacuate_fail(body.get("server_ids"))
            return ok(200, {})
        if parts == ["conflict_next_evacuate"] and m == "POST":
            self.conflict_next_evacuate(int(body.get("count", 1)))
            return ok(200, {})
        if parts == ["reset_faults"] and m == "POST":
            self.reset_faults()
            return ok(200, {})
        raise _HTTPError(404, f"no testbed route {m} {req.path}")
