"""The one table of parameters, and the typed parsing every agent shares.

Each parameter is declared once here. The fence-agent metadata and CLI (fence_proto), the OCF
metadata (ocf_proto), validation, and the docs / man pages are all rendered from this table.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from nova_ha.errors import NovaHaError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

FENCE = "fence_nova_evacuate"
COMPUTE = "NovaCompute"
EVACUATE = "NovaEvacuate"
CLI = "nova-ha"

_OPENSTACK = frozenset({FENCE, COMPUTE, EVACUATE, CLI})
_EVACUATION = frozenset({FENCE, EVACUATE, CLI})
_FENCE_ONLY = frozenset({FENCE})
_COMPUTE_ONLY = frozenset({COMPUTE})

TRUE_WORDS = frozenset({"1", "yes", "y", "on", "true", "t"})
FALSE_WORDS = frozenset({"0", "no", "n", "off", "false", "f"})


@dataclass(frozen=True)
class Param:
    """One parameter, as every agent and document sees it."""

    name: str
    type: str  # string | integer | second | boolean | select
    short: str  # one line, for metadata shortdesc and --help
    long: str = ""  # the why and how, for OCF longdesc and the man page
    default: str | None = None
    required: bool = False
    secret: bool = False
    aliases: tuple[str, ...] = ()  # deprecated names still accepted
    choices: tuple[str, ...] = ()
    agents: frozenset[str] = field(default_factory=frozenset)
    group: str = "general"
    getopt: str = ""  # fence CLI short option letter (fence_ipmilan's letters where shared)
    cli: str = ""  # fence CLI long option when it differs from the name (fence-agents' "plug")
    metavar: str = ""
    # Bounds of an integer or second (a number of seconds), checked where the value is
    # parsed: a value far out of range passes no sanity check and crashes at run time
    # (OverflowError, "timestamp out of range") instead of being refused by validate-all.
    minimum: float | None = None  # None: 0
    maximum: float | None = None

    @property
    def longopt(self) -> str:
        return (self.cli or self.name).replace("_", "-")

    def is_flag(self) -> bool:
        """A boolean that defaults to false is a bare flag on the command line."""
        return self.type == "boolean" and self.default in (None, "0")

    def range_text(self) -> str:
        """'1-65535', 'at most 600 s', or '' for a parameter without a maximum."""
        if self.maximum is None:
            return ""
        unit = " s" if self.type == "second" else ""
        if self.minimum:
            return f"{_number(self.minimum)}-{_number(self.maximum)}{unit}"
        return f"at most {_number(self.maximum)}{unit}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _p(name: str, type_: str, short: str, long: str = "", **kw: Any) -> Param:
    param = Param(name=name, type=type_, short=short, long=long, **kw)
    if param.maximum is not None:
        # The limit is declared once (here); metadata, --help, man pages and docs show it.
        param = replace(param, short=f"{short} ({param.range_text()})")
    return param


PARAMETERS: tuple[Param, ...] = (
    # ---- shared settings --------------------------------------------------------------------
    _p(
        "config_file",
        "string",
        "File of shared settings (name=value lines)",
        "One file for the settings every device and resource shares (host_map, os_*, "
        "evacuation, BMC user...) instead of repeating them in each: 'name=value' lines, "
        "'#' comments, the parameter names of nova-ha (deprecated ones too). It is read first; "
        "parameters given to the agent directly override it. Parameters of other agents are "
        "skipped (one file serves all agents); an unknown name is an error, and so are 'port' "
        "and 'action'. An absolute path to a regular file of at most 256 KiB, belonging to "
        "root (or the agent's user) and writable by nobody else; when it holds a secret "
        "(os_password, password, ...) readable by nobody else either (mode 0600).",
        agents=_OPENSTACK,
        group="shared",
        metavar="path",
    ),
    # ---- host selection -------------------------------------------------------------------
    _p(
        "port",
        "string",
        "Pacemaker node name of the compute host to fence",
        "Pacemaker passes the target node as 'port' (fence-agents call it 'plug'). It is "
        "mapped to Nova's compute host name with host_map and domain.",
        cli="plug",
        aliases=("nodename",),
        agents=_FENCE_ONLY,
        group="host",
        getopt="n",
        metavar="node",
    ),
    _p(
        "host_map",
        "string",
        "Map of Pacemaker node names to Nova host names",
        "Pairs 'node:novahost' separated by ';', ',' or spaces, for clouds whose Nova host "
        "names differ from the Pacemaker node names. Unlisted nodes use their own name "
        "(plus domain).",
        agents=_OPENSTACK,
        group="host",
        metavar="map",
    ),
    _p(
        "domain",
        "string",
        "DNS domain appended to node names to form Nova host names",
        "Set this when Nova knows compute hosts by their fully qualified names and the "
        "Pacemaker nodes by their short names. A name that already ends in the domain is "
        "left as it is.",
        agents=_OPENSTACK,
        group="host",
        metavar="domain",
    ),
    # ---- OpenStack --------------------------------------------------------------------------
    _p(
        "os_cloud",
        "string",
        "Cloud name in clouds.yaml (recommended: no password in the CIB)",
        "Name of an entry in clouds.yaml (/etc/openstack/clouds.yaml or "
        "~/.config/openstack/clouds.yaml, or the file named by OS_CLIENT_CONFIG_FILE). Its "
        "settings are read first; os_* parameters given here override them. This keeps the "
        "OpenStack password out of the CIB.",
        agents=_OPENSTACK,
        group="openstack",
        metavar="cloud",
    ),
    _p(
        "os_auth_url",
        "string",
        "Keystone v3 URL",
        "Keystone identity endpoint, e.g. https://keystone.example.com:5000/v3.",
        aliases=("auth_url",),
        agents=_OPENSTACK,
        group="openstack",
        metavar="url",
    ),
    _p(
        "os_username",
        "string",
        "OpenStack user name",
        "Keystone user with the admin role (force-down, evacuate and listing all tenants' "
        "servers need it). fence_compute called this 'username'; here 'username' is the "
        "BMC's, as in fence_ipmilan.",
        agents=_OPENSTACK,
        group="openstack",
        metavar="name",
    ),
    _p(
        "os_password",
        "string",
        "OpenStack password",
        "Prefer os_cloud or os_password_script: a password given here is stored in the CIB.",
        secret=True,
        agents=_OPENSTACK,
        group="openstack",
        metavar="password",
    ),
    _p(
        "os_password_script",
        "string",
        "Command that prints the OpenStack password",
        "Run without a shell (split like a shell would); its first line of standard output "
        "is the password.",
        agents=_OPENSTACK,
        group="openstack",
        metavar="command",
    ),
    _p(
        "os_project_name",
        "string",
        "OpenStack project (tenant) name",
        aliases=("tenant_name",),
        agents=_OPENSTACK,
        group="openstack",
        metavar="name",
    ),
    _p(
        "os_user_domain_name",
        "string",
        "Keystone domain of the user",
        default="Default",
        aliases=("user_domain",),
        agents=_OPENSTACK,
        group="openstack",
        metavar="name",
    ),
    _p(
        "os_project_domain_name",
        "string",
        "Keystone domain of the project",
        default="Default",
        aliases=("project_domain",),
        agents=_OPENSTACK,
        group="openstack",
        metavar="name",
    ),
    _p(
        "os_application_credential_id",
        "string",
        "Keystone application credential ID",
        "An application credential replaces user name and password.",
        agents=_OPENSTACK,
        group="openstack",
        metavar="id",
    ),
    _p(
        "os_application_credential_secret",
        "string",
        "Keystone application credential secret",
        secret=True,
        agents=_OPENSTACK,
        group="openstack",
        metavar="secret",
    ),
    _p(
        "os_region_name",
        "string",
        "OpenStack region",
        aliases=("region_name",),
        agents=_OPENSTACK,
        group="openstack",
        metavar="region",
    ),
    _p(
        "os_interface",
        "select",
        "Endpoint interface to use for Nova",
        "Which catalog endpoint of Nova to use. fence_compute's publicURL / internalURL / "
        "adminURL are accepted too.",
        default="internal",
        choices=("public", "internal", "admin"),
        aliases=("endpoint_type",),
        agents=_OPENSTACK,
        group="openstack",
    ),
    _p(
        "os_cacert",
        "string",
        "CA bundle to verify Keystone and Nova TLS certificates",
        agents=_OPENSTACK,
        group="openstack",
        metavar="path",
    ),
    _p(
        "os_cert",
        "string",
        "Client certificate for TLS",
        agents=_OPENSTACK,
        group="openstack",
        metavar="path",
    ),
    _p(
        "os_key",
        "string",
        "Client certificate key for TLS",
        agents=_OPENSTACK,
        group="openstack",
        metavar="path",
    ),
    _p(
        "os_insecure",
        "boolean",
        "Do not verify TLS certificates (test clouds only)",
        default="0",
        aliases=("insecure",),
        agents=_OPENSTACK,
        group="openstack",
    ),
    _p(
        "os_api_timeout",
        "second",
        "Timeout of one Keystone or Nova request, in seconds",
        "Each request is bounded by this; failed requests are retried with backoff inside "
        "the action's overall budget.",
        default="10",
        maximum=300,
        agents=_OPENSTACK,
        group="openstack",
    ),
    _p(
        "os_compute_api_version",
        "string",
        "Highest Nova microversion to use",
        "'auto' negotiates the newest microversion both Nova and nova-ha support; set e.g. "
        "2.52 to pin an older behaviour.",
        default="auto",
        agents=_OPENSTACK,
        group="openstack",
        metavar="version",
    ),
    _p(
        "os_token_cache",
        "boolean",
        "Keep Keystone's token for the next run of the agent",
        "The token and catalog are kept in /run/nova-ha/tokens (tmpfs, root-only, one file per "
        "set of credentials) and used while they have more than two minutes of life left: "
        "a fence then starts without a Keystone round trip, and the monitors do not ask "
        "Keystone for a token every few seconds.",
        default="1",
        agents=_OPENSTACK,
        group="openstack",
    ),
    # ---- BMC (fence_ipmilan's names) ---------------------------------------------------------
    _p(
        "ip",
        "string",
        "BMC address (IPMI over LAN)",
        "Without BMC parameters the agent does no power action: use it then only in a "
        "fencing-topology level after a power device such as fence_ipmilan, which confirms "
        "the power-off before this agent runs.",
        aliases=("ipaddr",),
        agents=_FENCE_ONLY,
        group="bmc",
        getopt="a",
        metavar="ip",
    ),
    _p(
        "bmc_map",
        "string",
        "BMC of each node, for one device fencing many nodes",
        "Pairs 'node=address[:port]' separated by ';', ',' or spaces (IPv6 in brackets: "
        "node=[fd00::5]:623; ipport when no port is given), instead of 'ip': the device powers "
        "off the BMC of the node it is asked to fence and refuses a node that is not listed. "
        "username and password or password_script are shared; password_script is run with "
        "the node's name appended as its last argument (cluster/crm-config/bmc-password "
        "then finds that BMC's password). One device and one monitor for all compute nodes "
        "(list them in pcmk_host_list) instead of one each.",
        agents=_FENCE_ONLY,
        group="bmc",
        metavar="map",
    ),
    _p(
        "bmc_node",
        "string",
        "Node that the BMC at 'ip' powers (other nodes are refused)",
        "With 'ip': the device refuses to power off a node other than this one, so a device "
        "copied with another node's BMC address, or listing a wrong node in pcmk_host_list, "
        "cannot power off the wrong host.",
        agents=_FENCE_ONLY,
        group="bmc",
        metavar="node",
    ),
    _p(
        "ipport",
        "integer",
        "BMC UDP port",
        default="623",
        minimum=1,
        maximum=65535,
        agents=_FENCE_ONLY,
        group="bmc",
        getopt="u",
        metavar="port",
    ),
    _p(
        "username",
        "string",
        "BMC user name",
        aliases=("login",),
        agents=_FENCE_ONLY,
        group="bmc",
        getopt="l",
        metavar="name",
    ),
    _p(
        "password",
        "string",
        "BMC password",
        secret=True,
        aliases=("passwd",),
        agents=_FENCE_ONLY,
        group="bmc",
        getopt="p",
        metavar="password",
    ),
    _p(
        "password_script",
        "string",
        "Command that prints the BMC password",
        "Run without a shell; its first line of standard output is the password.",
        aliases=("passwd_script",),
        agents=_FENCE_ONLY,
        group="bmc",
        getopt="S",
        metavar="command",
    ),
    _p(
        "lanplus",
        "boolean",
        "Use IPMI 2.0 (lanplus)",
        "Accepted for fence_ipmilan compatibility: nova-ha always speaks IPMI 2.0 (RMCP+).",
        default="0",
        agents=_FENCE_ONLY,
        group="bmc",
        getopt="P",
    ),
    _p(
        "cipher",
        "integer",
        "IPMI 2.0 cipher suite",
        "Accepted for fence_ipmilan compatibility; the cipher suite is negotiated with the "
        "BMC (SHA-1/AES, suite 3, when the BMC offers nothing better that is supported).",
        maximum=255,
        agents=_FENCE_ONLY,
        group="bmc",
        getopt="C",
        metavar="suite",
    ),
    _p(
        "privlvl",
        "select",
        "IPMI privilege level",
        default="administrator",
        choices=("callback", "user", "operator", "administrator"),
        agents=_FENCE_ONLY,
        group="bmc",
        getopt="L",
    ),
    _p(
        "power_timeout",
        "second",
        "Seconds to wait for the BMC to confirm a power change",
        "If the BMC does not report 'off' within this time the fence fails and nothing is "
        "done in Nova.",
        default="20",
        maximum=600,
        agents=_FENCE_ONLY,
        group="bmc",
    ),
    _p(
        "power_wait",
        "second",
        "Seconds to wait after a confirmed power change",
        default="0",
        maximum=300,
        agents=_FENCE_ONLY,
        group="bmc",
    ),
    # ---- evacuation ---------------------------------------------------------------------------
    _p(
        "evacuate",
        "select",
        "Which servers to evacuate after fencing",
        "all: every server of the host; tagged: only servers whose flavor extra_specs, image "
        "properties or server metadata carry evacuable_tag with a true value; none: fence "
        "and force down only; record: fence, force down and record the host as needing "
        "evacuation, leaving the work to the NovaEvacuate resource.",
        default="all",
        choices=("all", "tagged", "none", "record"),
        agents=_EVACUATION,
        group="evacuation",
    ),
    _p(
        "evacuable_tag",
        "string",
        "Tag that marks a server evacuable (evacuate=tagged)",
        default="evacuable",
        agents=_EVACUATION,
        group="evacuation",
        metavar="tag",
    ),
    _p(
        "max_parallel",
        "integer",
        "Evacuation requests in flight at once",
        default="16",
        minimum=1,
        maximum=256,
        agents=_EVACUATION,
        group="evacuation",
        metavar="n",
    ),
    _p(
        "evacuate_timeout",
        "second",
        "Seconds allowed for evacuating a host",
        "The budget of one evacuation run by NovaEvacuate's evacuation service (beside "
        "Pacemaker, not inside a fence action), and the life of the host's lease that the "
        "fence device grants it. What is not finished by then stays recorded 'fenced' and "
        "the service takes it up again. It no longer counts in the stonith-timeout.",
        default="40",
        maximum=86400,
        agents=_EVACUATION,
        group="evacuation",
    ),
    _p(
        "evacuate_retries",
        "integer",
        "Retries of a failed evacuation of one server",
        default="2",
        maximum=20,
        agents=_EVACUATION,
        group="evacuation",
        metavar="n",
    ),
    _p(
        "target_hosts",
        "string",
        "Reserved hosts to evacuate to (comma separated)",
        "Empty: Nova's scheduler chooses. Otherwise these hosts are enabled first and each "
        "server is sent to one of them with room; when they are full the remaining servers "
        "go to Nova's scheduler.",
        agents=_EVACUATION,
        group="evacuation",
        metavar="hosts",
    ),
    _p(
        "power_on_after",
        "boolean",
        "Power the host back on at the end of a reboot",
        "With reboot, power on after evacuation so the repaired host can rejoin through "
        "NovaCompute; set 0 to leave it off for inspection (reboot then acts like off).",
        default="1",
        agents=_FENCE_ONLY,
        group="evacuation",
    ),
    _p(
        "max_fenced_hosts",
        "string",
        "Mass-failure guard: more hosts fenced within fenced_window stop automatic evacuation",
        "A count ('3') or a percentage of the compute hosts ('25%', rounded down, at least 1); "
        "0 turns the guard off. When more hosts than this were fenced within fenced_window "
        "seconds of each other, a shared cause (a switch, the controllers' network, a power "
        "feed) is far more likely than that many independent deaths: fencing goes on (that "
        "is Pacemaker's call), but no evacuation of those hosts starts automatically, neither "
        "here nor in NovaEvacuate; an 'evacuation_blocked' event is raised once per host and "
        "the hosts stay recorded 'fenced' until an administrator runs 'nova-ha evacuate HOST' "
        "(a real failure) or 'nova-ha reset HOST' (let it rejoin with its servers). The "
        "default, 25%, because independent hardware failures seldom take two hosts within "
        "minutes, while a network or controller fault fences a large share at once; "
        "evacuating that share would pile it onto hosts that may be next and exhaust the "
        "capacity that the fenced hosts, once back, would have kept. A percentage scales with "
        "the cloud where a count does not: 2 suits ten hosts but would stop a 500-host cloud "
        "on its third ordinary failure. The percentage is of the compute services Nova knows "
        "(or of the compute nodes in the CIB).",
        default="25%",
        agents=_EVACUATION,
        group="evacuation",
        metavar="count|percent",
    ),
    _p(
        "fenced_window",
        "second",
        "Time window of the mass-failure guard, in seconds",
        "Hosts whose latest fencing (from their records in the CIB) lies within this many "
        "seconds of each other count as one wave for max_fenced_hosts. 600 s holds a wave "
        "fenced over several minutes by a flapping network, and is short against the time "
        "between independent hardware failures.",
        default="600",
        maximum=86400,
        agents=_EVACUATION,
        group="evacuation",
    ),
    _p(
        "watch_interval",
        "second",
        "Seconds between the evacuation service's reads of the records",
        "NovaEvacuate's evacuation service is woken at once by a fence device on its own "
        "controller; a fence run on another controller is seen at the next read of the "
        "records (one small CIB query).",
        default="1",
        maximum=300,
        agents=frozenset({EVACUATE}),
        group="evacuation",
    ),
    _p(
        "max_hosts",
        "integer",
        "Hosts evacuated at once by the evacuation service",
        "Each host is evacuated by a worker process of its own (max_parallel requests "
        "each); further hosts wait for a free worker.",
        default="8",
        minimum=1,
        maximum=64,
        agents=frozenset({EVACUATE}),
        group="evacuation",
        metavar="n",
    ),
    # ---- notifications --------------------------------------------------------------------------
    _p(
        "notify_url",
        "string",
        "Webhook URL that nova-ha events are POSTed to (JSON)",
        "Each event (fenced, evacuation_finished, evacuation_failed, evacuation_blocked, "
        "rejoined, reset) is POSTed as one JSON object (Content-Type application/json) from a "
        "detached process, so fencing never waits for it: each attempt is bounded by "
        "notify_timeout, failed attempts (no answer, HTTP 408, 429 or 5xx) are retried twice "
        "with backoff. http:// and https:// (verified with the system's CAs) only. Events "
        "carry no secret. Every event also goes to syslog (ident nova-ha, facility daemon) "
        "whatever is set here.",
        agents=_OPENSTACK,
        group="general",
        metavar="url",
    ),
    _p(
        "notify_command",
        "string",
        "Command run for each nova-ha event (event JSON on stdin)",
        "Run without a shell (split like a shell would), detached from the agent, with the "
        "event as one JSON object on standard input and its name in NOVA_HA_EVENT; killed "
        "after notify_timeout. Its environment carries no OCF_RESKEY_* parameter (no "
        "secret).",
        agents=_OPENSTACK,
        group="general",
        metavar="command",
    ),
    _p(
        "notify_timeout",
        "second",
        "Seconds allowed for one webhook attempt or the command",
        default="5",
        maximum=300,
        agents=_OPENSTACK,
        group="general",
    ),
    # ---- NovaCompute ---------------------------------------------------------------------------
    _p(
        "systemd_unit",
        "string",
        "systemd unit of nova-compute",
        "Default: the first of nova-compute.service and openstack-nova-compute.service that "
        "exists. Ignored when start_command is set.",
        agents=_COMPUTE_ONLY,
        group="compute",
        metavar="unit",
    ),
    _p(
        "start_command",
        "string",
        "Command that starts nova-compute (instead of systemd)",
        "Run without a shell. Use with stop_command and status_command for setups without systemd.",
        agents=_COMPUTE_ONLY,
        group="compute",
        metavar="command",
    ),
    _p(
        "stop_command",
        "string",
        "Command that stops nova-compute",
        agents=_COMPUTE_ONLY,
        group="compute",
        metavar="command",
    ),
    _p(
        "status_command",
        "string",
        "Command that exits 0 while nova-compute runs",
        agents=_COMPUTE_ONLY,
        group="compute",
        metavar="command",
    ),
    _p(
        "start_wait",
        "second",
        "Seconds start waits for an unsafe host to become safe",
        "While the host's evacuation is unfinished, start waits at most this long (and never "
        "more than 60% of its timeout), then fails with the reason; Pacemaker starts it again "
        "once the failure expires (the clone's failure-timeout). Keep it short: while any "
        "action runs, Pacemaker starts no new transition, so a long wait here would delay "
        "the fencing of another node.",
        default="10",
        maximum=3600,
        agents=_COMPUTE_ONLY,
        group="compute",
    ),
    _p(
        "check_nova_service",
        "boolean",
        "monitor also asks Nova whether the service is up",
        default="0",
        agents=_COMPUTE_ONLY,
        group="compute",
    ),
    _p(
        "disable_on_stop",
        "boolean",
        "Disable the Nova service when the resource stops",
        default="0",
        agents=_COMPUTE_ONLY,
        group="compute",
    ),
)

BY_NAME: dict[str, Param] = {p.name: p for p in PARAMETERS}
ALIASES: dict[str, str] = {a: p.name for p in PARAMETERS for a in (*p.aliases, p.cli) if a}


def for_agent(agent: str) -> list[Param]:
    return [p for p in PARAMETERS if agent in p.agents]


def canonical_name(name: str, agent: str) -> str | None:
    """Canonical parameter name for a name or alias ('-' and '_' alike); None if unknown."""
    key = name.strip().replace("-", "_")
    key = ALIASES.get(key, key)
    param = BY_NAME.get(key)
    return key if param is not None and agent in param.agents else None


def secret_names() -> frozenset[str]:
    return frozenset(p.name for p in PARAMETERS if p.secret) | frozenset(
        a for p in PARAMETERS if p.secret for a in p.aliases
    )


class ParamError(NovaHaError):
    """A parameter value is wrong; the message names the parameter, never a secret value."""


def _shown(param: Param, raw: str) -> str:
    if param.secret:
        return "(hidden)"
    return repr(raw if len(raw) <= 60 else raw[:57] + "...")


def convert(param: Param, raw: str) -> Any:
    """Typed value of one parameter, or ParamError naming it."""
    value = raw.strip()
    if param.type == "string":
        return value
    try:
        to_type = _CONVERTERS[param.type]
    except KeyError:
        raise AssertionError(f"unknown parameter type {param.type}") from None
    return to_type(param, value, raw)


def _boolean(param: Param, value: str, raw: str) -> bool:
    low = value.lower()
    if low in TRUE_WORDS:
        return True
    if low in FALSE_WORDS:
        return False
    raise ParamError(
        f"parameter '{param.name}': {_shown(param, raw)} is not a boolean "
        "(use 1/0, yes/no, true/false)"
    )


def _integer(param: Param, value: str, raw: str) -> float:
    # ASCII digits only: int() also takes '1_000' and other scripts' digits.
    if not re.fullmatch(r"[+-]?[0-9]+", value):
        raise ParamError(f"parameter '{param.name}': {_shown(param, raw)} is not an integer")
    # int() refuses thousands of digits; such a number is beyond any bound anyway.
    number = int(value) if len(value) <= 100 else float("-inf" if value[0] == "-" else "inf")
    return _bounded(param, number, raw)


def _seconds(param: Param, value: str, raw: str) -> float:
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)\s*(s|sec|ms)?", value.lower())
    if not match:
        raise ParamError(
            f"parameter '{param.name}': {_shown(param, raw)} is not a number of seconds"
        )
    seconds = float(match.group(1))  # inf for hundreds of digits: above any maximum
    return _bounded(param, seconds / 1000 if match.group(2) == "ms" else seconds, raw)


def _choice(param: Param, value: str, raw: str) -> str:
    low = value.lower()
    if param.name == "os_interface" and low.endswith("url"):
        low = low[:-3]  # fence_compute's publicURL / internalURL / adminURL
    if low not in param.choices:
        raise ParamError(
            f"parameter '{param.name}': {_shown(param, raw)} is not one of "
            f"{', '.join(param.choices)}"
        )
    return low


_CONVERTERS: dict[str, Callable[[Param, str, str], Any]] = {
    "boolean": _boolean,
    "integer": _integer,
    "second": _seconds,
    "select": _choice,
}


def _bounded(param: Param, number: float, raw: str) -> float:
    """`number` when it lies within the parameter's bounds; ParamError naming the limit."""
    unit = " seconds" if param.type == "second" else ""
    if param.minimum is None and number < 0:
        raise ParamError(f"parameter '{param.name}': must not be negative")
    if param.minimum is not None and number < param.minimum:
        raise ParamError(
            f"parameter '{param.name}': {_shown(param, raw)} is below the "
            f"minimum of {_number(param.minimum)}{unit}"
        )
    if param.maximum is not None and number > param.maximum:
        raise ParamError(
            f"parameter '{param.name}': {_shown(param, raw)} is above the "
            f"maximum of {_number(param.maximum)}{unit}"
        )
    return number


@dataclass
class Parsed:
    """Typed parameter values of one agent run, with what was wrong in the input."""

    values: dict[str, Any]
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    given: set[str] = field(default_factory=set)

    def __getitem__(self, name: str) -> Any:
        return self.values.get(name)

    def get(self, name: str, default: Any = None) -> Any:
        value = self.values.get(name)
        return default if value is None or value == "" else value

    def secrets(self) -> list[str]:
        return [str(self.values[n]) for n in secret_names() if self.values.get(n)]

    @cached_property
    def settings(self) -> Settings:
        """The typed settings groups of these values; what every module reads."""
        return Settings(self)


def parse(raw: Mapping[str, str] | Iterable[tuple[str, str]], agent: str) -> Parsed:
    """Canonicalise names, apply defaults, convert types. Never raises for bad input.

    With config_file, that file's values come first and the values given here override them.
    """
    items = raw.items() if isinstance(raw, Mapping) else raw
    result = Parsed(values={})
    for name, value in items:
        key = canonical_name(name, agent)
        if key is None:
            # Only the name: the value of a misspelt password parameter must not be shown.
            result.warnings.append(f"ignoring unknown parameter '{_printable(name)}'")
            continue
        if name.replace("-", "_") != key:
            result.warnings.append(f"parameter '{name}' is deprecated, use '{key}'")
        if key in result.given and name.replace("-", "_") != key:
            continue  # the canonical name wins over its deprecated alias
        result.given.add(key)
        try:
            result.values[key] = convert(BY_NAME[key], value)
        except ParamError as err:
            result.problems.append(str(err))
    if result.values.get("config_file"):
        _merge_config_file(result, result.values["config_file"], agent)
    for param in for_agent(agent):
        if param.name not in result.values and param.default is not None:
            result.values[param.name] = convert(param, param.default)
        if param.required and param.name not in result.given:
            result.problems.append(f"parameter '{param.name}' is required")
    return result


def _printable(text: str) -> str:
    return "".join(ch if ch.isprintable() else "?" for ch in text)[:60]


# ---- config_file: the settings every device and resource shares ---------------------------------

CONFIG_FILE_MAX = 256 * 1024  # far above any real configuration; bounds what an agent reads
# Never from the shared file: Pacemaker gives the target and the action of each run, and a
# file naming another file would make the sources of a value hard to follow.
_NOT_FROM_FILE = frozenset({"port", "config_file"})
_FRAMEWORK_NAMES = frozenset({"action", "option"})


def _table_name(name: str) -> str | None:
    """Canonical name of a parameter of any agent (config files serve all of them)."""
    key = name.strip().replace("-", "_")
    key = ALIASES.get(key, key)
    return key if key in BY_NAME else None


def read_config_file(path: str) -> tuple[list[tuple[int, str, str]], list[str]]:
    """(line number, name, value) of each setting of a config_file, and the problems of
    malformed lines; ParamError naming 'config_file' and the path when the file as a whole
    is refused (missing, not a regular file, too large, not UTF-8, unsafe mode or owner).

    'name=value' lines (spaces around '=' allowed, a value in matching quotes is unquoted),
    '#' or ';' comment lines, blank lines: the format of the nova-ha command's
    /etc/nova-ha/nova-ha.conf, so one file serves the command and every agent. Only the
    canonical names are checked here; parse() decides what each agent takes.
    """
    import os

    where = _config_where(path)
    if not os.path.isabs(path):
        # Agents run with whatever working directory Pacemaker gives them.
        raise ParamError(f"{where} is not an absolute path")
    if "\0" in path:  # os.lstat() would raise ValueError
        raise ParamError(f"{where} is not a valid path")
    data, mode = _read_config_bytes(_open_config(path, where), where)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ParamError(f"{where} is not UTF-8 text") from None
    entries, problems = _config_lines(text, where)
    _check_secrets_private(entries, mode, where)
    return entries, problems


def _open_config(path: str, where: str) -> int:
    """A read-only descriptor of the config_file, refused unless it is a regular file."""
    import errno
    import os
    import stat

    try:
        # lstat first: a FIFO or device is refused without being opened at all; the fstat
        # of the opened file (_read_config_bytes) is what counts (the path may change in between).
        if not stat.S_ISREG(os.lstat(path).st_mode):
            raise ParamError(f"{where} is not a regular file")
        # O_NONBLOCK: opening a FIFO swapped in meanwhile must not wait for a writer.
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        if err.errno == errno.ENOENT:
            raise ParamError(f"{where} does not exist") from None
        if err.errno == errno.ELOOP:
            raise ParamError(f"{where} is not a regular file") from None
        raise ParamError(f"{where} cannot be read ({err.strerror})") from None


def _read_config_bytes(fd: int, where: str) -> tuple[bytes, int]:
    """The file's content and mode, after checking its type, size, owner and mode; closes fd."""
    import os
    import stat

    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ParamError(f"{where} is not a regular file")
        if info.st_size > CONFIG_FILE_MAX:
            raise ParamError(f"{where} is larger than {CONFIG_FILE_MAX // 1024} KiB")
        # It names commands the agents run as root (password_script, notify_command...).
        if info.st_uid not in (0, os.geteuid()):
            raise ParamError(f"{where} must belong to root (or the agent's user)")
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise ParamError(f"{where} must not be writable by group or others (chmod 600)")
        chunks, size = [], 0
        while size <= CONFIG_FILE_MAX:  # st_size may be stale: bound the reading itself
            chunk = os.read(fd, CONFIG_FILE_MAX + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as err:
        raise ParamError(f"{where} cannot be read ({err.strerror})") from None
    finally:
        os.close(fd)
    if size > CONFIG_FILE_MAX:
        raise ParamError(f"{where} is larger than {CONFIG_FILE_MAX // 1024} KiB")
    return b"".join(chunks), info.st_mode


def _config_lines(text: str, where: str) -> tuple[list[tuple[int, str, str]], list[str]]:
    """The 'name=value' entries of a config_file's text, and the problems of malformed lines."""
    entries, problems = [], []
    # "\n" only: str.splitlines() also splits at \v, \f, \x1c-\x1e, \x85, \u2028...,
    # which would cut a value in two and shift every line number after it.
    for number, line in enumerate(text.split("\n"), 1):
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        name, sep, value = line.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name:
            # Not the line itself: it may hold a password.
            problems.append(f"{where}, line {number}: expected 'name=value'")
            continue
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        entries.append((number, name, value))
    return entries, problems


def _check_secrets_private(entries: list[tuple[int, str, str]], mode: int, where: str) -> None:
    """A file holding a secret must not be readable by group or others."""
    import stat

    # Any agent's secret counts: the file serves all of them.
    secrets = [
        key for _, n, _ in entries if (key := _table_name(n)) is not None and BY_NAME[key].secret
    ]
    if secrets and mode & (stat.S_IRGRP | stat.S_IROTH):
        raise ParamError(
            f"{where} holds '{secrets[0]}' and is readable by group or others (chmod 600)"
        )


def _config_where(path: str) -> str:
    shown = "".join(ch if ch.isprintable() else "?" for ch in path)
    return f"parameter 'config_file': {shown[:200]!r}"


def _merge_config_file(result: Parsed, path: str, agent: str) -> None:
    """Values of the config_file that were not given directly, into `result`."""
    try:
        entries, problems = read_config_file(path)
    except ParamError as err:
        result.problems.append(str(err))
        return
    result.problems.extend(problems)
    where = _config_where(path)
    direct = set(result.given)
    taken: set[str] = set()
    for number, name, value in entries:
        key = _table_name(name)
        shown = _printable(name)
        if key is None:
            if name.replace("-", "_") in _FRAMEWORK_NAMES:
                result.problems.append(
                    f"{where}, line {number}: '{shown}' is given by Pacemaker, not by a file"
                )
            else:
                result.problems.append(f"{where}, line {number}: unknown parameter '{shown}'")
            continue
        if key in _NOT_FROM_FILE:
            result.problems.append(f"{where}, line {number}: '{shown}' cannot be set in the file")
            continue
        if agent not in BY_NAME[key].agents:
            continue  # another agent's parameter: one file serves them all
        alias = name.replace("-", "_") != key
        if alias:
            result.warnings.append(
                f"{where}, line {number}: parameter '{shown}' is deprecated, use '{key}'"
            )
        if key in direct or (key in taken and alias):
            continue  # given directly: that wins; the canonical name wins over its alias
        taken.add(key)
        result.given.add(key)
        try:
            result.values[key] = convert(BY_NAME[key], value)
        except ParamError as err:
            result.problems.append(f"{where}, line {number}: {err}")


def parse_host_map(text: str) -> dict[str, str]:
    """'node1:host1;node2:host2' (also ',', spaces, '=') -> {node: host}."""
    pairs: dict[str, str] = {}
    for item in re.split(r"[;,\s]+", text.strip()):
        if not item:
            continue
        node, sep, host = item.replace("=", ":").partition(":")
        if not sep or not node or not host:
            raise ParamError(f"parameter 'host_map': entry {item!r} is not 'node:host'")
        pairs[node] = host
    return pairs


# ---- cross-parameter checks (validate-all and every action) ------------------------------------


def _command_problem(name: str, command: str) -> str | None:
    import shlex
    import shutil

    try:
        argv = shlex.split(command)
    except ValueError as err:
        return f"parameter '{name}': cannot split the command ({err})"
    if not argv:
        return f"parameter '{name}': empty command"
    if shutil.which(argv[0]) is None:
        return f"parameter '{name}': {argv[0]!r} is not an executable"
    return None


def check_openstack(parsed: Parsed) -> list[str]:
    """Enough to authenticate with Keystone, without contacting it."""
    import os

    problems = []
    for name in ("os_cacert", "os_cert", "os_key"):
        path = parsed.get(name)
        if path and not os.path.isfile(path):
            problems.append(f"parameter '{name}': file {path!r} does not exist")
    if parsed.get("os_password_script"):
        problem = _command_problem("os_password_script", parsed["os_password_script"])
        if problem:
            problems.append(problem)
    if parsed.get("os_cloud"):
        return problems  # the cloud's entry is checked where clouds.yaml is read
    if not parsed.get("os_auth_url"):
        return problems + ["parameter 'os_auth_url' (or 'os_cloud') is required"]
    if parsed.get("os_application_credential_id"):
        if not parsed.get("os_application_credential_secret"):
            problems.append(
                "parameter 'os_application_credential_secret' is required with "
                "'os_application_credential_id'"
            )
        return problems
    if not parsed.get("os_username"):
        problems.append(
            "parameter 'os_username' is required (or use os_cloud or an application credential)"
        )
    if not (parsed.get("os_password") or parsed.get("os_password_script")):
        problems.append("parameter 'os_password' or 'os_password_script' is required")
    if not parsed.get("os_project_name"):
        problems.append("parameter 'os_project_name' is required")
    return problems


def _bmc_address(text: str, where: str) -> tuple[str, int | None]:
    """'address', 'address:port', '[v6]', '[v6]:port' or a bare IPv6 address."""
    if text.startswith("["):
        address, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ParamError(f"{where} is not 'address[:port]'")
        port_text = rest[1:] if rest else None
    elif text.count(":") == 1:
        address, _, port_text = text.partition(":")
    else:
        address, port_text = text, None  # a name, IPv4, or IPv6 without a port
    if not address:
        raise ParamError(f"{where} has no address")
    if port_text is None:
        return address, None
    # ASCII digits only: str.isdigit() accepts '²', which int() refuses.
    if not re.fullmatch(r"[0-9]{1,5}", port_text) or not 0 < int(port_text) < 65536:
        raise ParamError(f"{where}: the port is not a number from 1 to 65535")
    return address, int(port_text)


def parse_bmc_map(text: str) -> dict[str, tuple[str, int | None]]:
    """bmc_map 'node1=10.0.0.1;node2=10.0.0.2:6230' -> {node: (address, port or None)}.

    ParamError (naming bmc_map and the entry) on a malformed entry, a node listed twice or
    two nodes with the same BMC: powering off one would power off the other.
    """
    entries: dict[str, tuple[str, int | None]] = {}
    owners: dict[tuple[str, int | None], str] = {}
    for item in re.split(r"[;,\s]+", text.strip()):
        if not item:
            continue
        where = f"parameter 'bmc_map': entry {_printable(item)!r}"
        node, sep, address = item.partition("=")
        if not sep or not node or not address:
            raise ParamError(f"{where} is not 'node=address[:port]'")
        if node in entries:
            raise ParamError(f"parameter 'bmc_map': node {_printable(node)!r} is listed twice")
        entries[node] = _bmc_address(address, where)
        endpoint = (entries[node][0].lower(), entries[node][1])
        if endpoint in owners:
            raise ParamError(
                f"parameter 'bmc_map': nodes {owners[endpoint]!r} and "
                f"{_printable(node)!r} have the same BMC"
            )
        owners[endpoint] = _printable(node)
    if not entries:
        raise ParamError("parameter 'bmc_map': no 'node=address[:port]' entry")
    return entries


def check_bmc(parsed: Parsed) -> list[str]:
    """BMC parameters are all-or-nothing: none means a fencing-topology level."""
    given = [
        n
        for n in ("ip", "bmc_map", "bmc_node", "username", "password", "password_script")
        if parsed.get(n)
    ]
    if not given:
        return []
    problems = []
    with_what = "'bmc_map'" if parsed.get("bmc_map") else "'ip'"
    if parsed.get("ip") and parsed.get("bmc_map"):
        problems.append(
            "parameters 'ip' and 'bmc_map' are mutually exclusive (one BMC, or one per node)"
        )
    elif not (parsed.get("ip") or parsed.get("bmc_map")):
        problems.append("parameter 'ip' (or 'bmc_map') is required when BMC credentials are given")
    if parsed.get("bmc_map"):
        try:
            parse_bmc_map(parsed["bmc_map"])
        except ParamError as err:
            problems.append(str(err))
        if parsed.get("bmc_node"):
            problems.append(
                "parameter 'bmc_node' goes with 'ip' only: each entry of 'bmc_map' names its node"
            )
    if not parsed.get("username"):
        problems.append(f"parameter 'username' (the BMC's user) is required with {with_what}")
    if not (parsed.get("password") or parsed.get("password_script")):
        problems.append(
            f"parameter 'password' or 'password_script' (the BMC's) is required with {with_what}"
        )
    if parsed.get("password_script"):
        problem = _command_problem("password_script", parsed["password_script"])
        if problem:
            problems.append(problem)
    if parsed.get("cipher") not in (None, "", 3, 17):
        # pyghmi negotiates suite 17 (SHA-256) and falls back to 3 (SHA-1); no other.
        problems.append("parameter 'cipher': only cipher suites 3 and 17 are supported")
    return problems


def check_evacuation(parsed: Parsed) -> list[str]:
    problems = []  # numbers are bounded where they are parsed (Param.minimum, maximum)
    for name in ("host_map",):
        if parsed.get(name):
            try:
                parse_host_map(parsed[name])
            except ParamError as err:
                problems.append(str(err))
    if parsed.get("max_fenced_hosts") is not None:
        try:
            parse_host_limit(str(parsed["max_fenced_hosts"]))
        except ParamError as err:
            problems.append(str(err))
    return problems


def parse_host_limit(text: str) -> tuple[float, bool]:
    """max_fenced_hosts: '3' -> (3, False), '25%' -> (25.0, True); '' or '0' -> (0, False)."""
    value = text.strip()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(%?)", value)
    if value == "":
        return 0, False
    if not match or (not match.group(2) and "." in match.group(1)):
        raise ParamError(
            f"parameter 'max_fenced_hosts': {value[:60]!r} is not a count of "
            "hosts or a percentage (e.g. 3 or 25%)"
        )
    if match.group(2):
        percent = float(match.group(1))
        if percent > 100:
            raise ParamError("parameter 'max_fenced_hosts': a percentage is at most 100%")
        return percent, True
    return int(match.group(1)), False


def check_notify(parsed: Parsed) -> list[str]:
    """notify_url and notify_command, without contacting or running anything."""
    problems = []
    url = parsed.get("notify_url")
    if url:
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(url)
            ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        except ValueError:
            ok = False
        if not ok:
            # The URL may carry credentials (user:password@): only its scheme is shown.
            problems.append("parameter 'notify_url': not an http:// or https:// URL with a host")
    if parsed.get("notify_command"):
        problem = _command_problem("notify_command", parsed["notify_command"])
        if problem:
            problems.append(problem)
    return problems


class SecretScriptError(NovaHaError):
    """A password script could not be run, failed, or printed nothing."""


def run_secret_script(name: str, command: str, timeout: float = 10.0) -> str:
    """First line printed by a password script. Runs without a shell; output never logged."""
    import shlex
    import subprocess

    try:
        from nova_ha.lib import service

        # The script gets no other secret than the one it prints.
        done = subprocess.run(
            shlex.split(command),
            capture_output=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
            env=service.clean_env(),
        )
    except (OSError, ValueError, subprocess.TimeoutExpired) as err:
        raise SecretScriptError(
            f"parameter '{name}': cannot run the script ({type(err).__name__})"
        ) from None
    if done.returncode != 0:
        raise SecretScriptError(f"parameter '{name}': the script exited {done.returncode}")
    # Up to the first "\n" (a trailing "\r" dropped), as fence-agents read lines:
    # str.splitlines() would also cut at \x1c-\x1e, \x85, \u2028... inside a password.
    first = done.stdout.decode("utf-8", "replace").split("\n", 1)[0]
    if first.endswith("\r"):
        first = first[:-1]
    if not first:
        raise SecretScriptError(f"parameter '{name}': the script printed nothing")
    return first


# ---- typed settings: the groups of parameters that are read together ----------------------------
#
# Built once per run from a Parsed (``parsed.settings.bmc`` ...), each group on first use. A
# field names its parameter; its value is the parsed one, or the table's default when the
# parameter is unset or empty: no default is written anywhere but in PARAMETERS.

_S = TypeVar("_S", bound="DataclassInstance")


def _setting(
    param: str,
    convert: Callable[[Any], Any] | None = None,
    *,
    zero_is_default: bool = False,
    hidden: bool = False,
) -> Any:
    """A settings field filled from parameter `param` (converted by `convert`, if given).
    `zero_is_default`: 0 counts as unset too (a zero timeout or wait was never meant).
    Secrets, and `hidden` fields, stay out of repr(): a settings object may end up in a log."""
    return field(
        repr=not (hidden or BY_NAME[param].secret),
        metadata={"param": param, "convert": convert, "zero_is_default": zero_is_default},
    )


def table_value(parsed: Parsed, name: str, zero_is_default: bool = False) -> Any:
    """The parsed value of parameter `name`, or the table's default when it is unset or
    empty (also for an agent that does not take the parameter: it then has the default)."""
    value = parsed.get(name)
    param = BY_NAME[name]
    if (value is None or (zero_is_default and not value)) and param.default is not None:
        return convert(param, param.default)
    return value


def _build(cls: type[_S], parsed: Parsed, **extra: Any) -> _S:
    """`cls` with each field read from its parameter; `extra`: the fields that are not."""
    values = dict(extra)
    for item in fields(cls):
        meta = item.metadata
        if "param" in meta:
            value = table_value(parsed, meta["param"], meta["zero_is_default"])
            values[item.name] = meta["convert"](value) if meta["convert"] else value
    return cls(**values)


def _host_map(text: str | None) -> Mapping[str, str]:
    return MappingProxyType(parse_host_map(text) if text else {})


def _domain(text: str | None) -> str:
    return (text or "").strip(".")


def parse_host_list(text: str | None) -> tuple[str, ...]:
    """target_hosts: host names separated by commas and/or whitespace."""
    return tuple(h for h in re.split(r"[,\s]+", text or "") if h)


@dataclass(frozen=True)
class HostNaming:
    """Pacemaker node names and Nova compute host names: the one place they are mapped.
    Building it raises ParamError for a malformed host_map."""

    host_map: Mapping[str, str] = _setting("host_map", _host_map)
    domain: str = _setting("domain", _domain)

    def nova_host(self, node: str) -> str:
        """Nova's compute host name for a Pacemaker node name."""
        mapped = self.host_map.get(node)
        if mapped:
            return mapped
        if self.domain and not node.endswith("." + self.domain):
            return f"{node}.{self.domain}"
        return node

    def node_for(self, host: str) -> str:
        """The Pacemaker node name for a Nova compute host name (inverse of nova_host)."""
        for node, mapped in self.host_map.items():
            if mapped == host:
                return node
        if self.domain and host.endswith("." + self.domain):
            return host[: -len(self.domain) - 1]
        return host


@dataclass(frozen=True)
class BmcSettings:
    """The device's BMC (fence_ipmilan's names): one at 'ip', or one per node in bmc_map."""

    ip: str | None = _setting("ip")
    bmc_map: str | None = _setting("bmc_map")  # as given: parsed by `nodes`, when used
    bmc_node: str | None = _setting("bmc_node")
    ipport: int = _setting("ipport")
    username: str | None = _setting("username")
    password: str | None = _setting("password")
    password_script: str | None = _setting("password_script")
    lanplus: bool = _setting("lanplus")
    cipher: int | None = _setting("cipher")
    privlvl: str = _setting("privlvl")
    power_timeout: float = _setting("power_timeout")
    power_wait: float = _setting("power_wait")
    power_on_after: bool = _setting("power_on_after")

    @property
    def configured(self) -> bool:
        """False: no BMC, the device runs in a fencing-topology level after a power device."""
        return bool(self.ip or self.bmc_map)

    @cached_property
    def nodes(self) -> Mapping[str, tuple[str, int | None]]:
        """bmc_map parsed (ParamError when malformed: validation reports it first)."""
        return MappingProxyType(parse_bmc_map(self.bmc_map) if self.bmc_map else {})

    def endpoint(self, node: str) -> tuple[str, int] | None:
        """(address, UDP port) of the BMC that powers `node` (the fence 'port'); None when the
        device has no BMC.

        ParamError when this device must not power `node`: not in bmc_map, or not the
        bmc_node of the device's 'ip'. An empty `node` (monitor, no target) is only accepted
        for an 'ip' device.
        """
        if self.ip and self.bmc_map:
            raise ParamError("parameters 'ip' and 'bmc_map' are mutually exclusive")
        if self.bmc_map:
            entry = self.nodes.get(node)
            if entry is None:
                raise ParamError(
                    f"parameter 'port': node {_printable(node)!r} has no BMC in parameter 'bmc_map'"
                )
            return entry[0], entry[1] or self.ipport
        if not self.ip:
            return None
        if self.bmc_node and node and node != self.bmc_node:
            raise ParamError(
                f"parameter 'port': node {_printable(node)!r} is not the node "
                f"whose BMC this device has (parameter 'bmc_node' "
                f"{_printable(self.bmc_node)!r})"
            )
        return self.ip, self.ipport

    def password_command(self, node: str) -> str | None:
        """The password_script command for `node`'s BMC: with bmc_map the node's name is
        appended as the last argument (one script serves every BMC of the device, as
        `bmc-password KEY` does); otherwise the command as given. None without a script."""
        if not self.password_script:
            return None
        if self.bmc_map:
            import shlex

            return f"{self.password_script} {shlex.quote(node)}"
        return self.password_script

    def monitor_node(self, target: str) -> str:
        """The node whose BMC a monitor asks: the target, else the first of bmc_map (asking
        every BMC of a shared device each minute would cost as much as one device per
        node), else '' (the device's own BMC at 'ip')."""
        return target or (next(iter(self.nodes), "") if self.bmc_map else "")


@dataclass(frozen=True)
class OpenStackSettings:
    """Keystone and Nova: credentials, endpoint choice, TLS, timeouts."""

    cloud: str | None = _setting("os_cloud")
    auth_url: str | None = _setting("os_auth_url")
    username: str | None = _setting("os_username")
    password: str | None = _setting("os_password")
    password_script: str | None = _setting("os_password_script")
    project_name: str | None = _setting("os_project_name")
    user_domain_name: str = _setting("os_user_domain_name")
    project_domain_name: str = _setting("os_project_domain_name")
    application_credential_id: str | None = _setting("os_application_credential_id")
    application_credential_secret: str | None = _setting("os_application_credential_secret")
    region_name: str | None = _setting("os_region_name")
    interface: str = _setting("os_interface")
    cacert: str | None = _setting("os_cacert")
    cert: str | None = _setting("os_cert")
    key: str | None = _setting("os_key")
    insecure: bool = _setting("os_insecure")
    api_timeout: float = _setting("os_api_timeout")
    compute_api_version: str = _setting("os_compute_api_version")
    token_cache: bool = _setting("os_token_cache")
    # The os_* parameters given to this run (directly or in config_file), as opposed to
    # defaults: they win over the os_cloud entry of clouds.yaml, which wins over defaults.
    given: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class EvacuationSettings:
    """What to evacuate, how fast, within what time, and the mass-failure guard."""

    mode: str = _setting("evacuate")
    tag: str = _setting("evacuable_tag")
    max_parallel: int = _setting("max_parallel")
    timeout: float = _setting("evacuate_timeout")
    retries: int = _setting("evacuate_retries")
    target_hosts: tuple[str, ...] = _setting("target_hosts", parse_host_list)
    max_fenced_hosts: str = _setting("max_fenced_hosts")
    fenced_window: float = _setting("fenced_window")
    watch_interval: float = _setting("watch_interval")
    max_hosts: int = _setting("max_hosts")


@dataclass(frozen=True)
class NotifySettings:
    """Where nova-ha's events go besides syslog."""

    url: str | None = _setting("notify_url", hidden=True)  # may carry user:password@
    command: str | None = _setting("notify_command")
    timeout: float = _setting("notify_timeout", zero_is_default=True)


@dataclass(frozen=True)
class ComputeSettings:
    """NovaCompute: how nova-compute is run, and what start and stop do around it."""

    systemd_unit: str | None = _setting("systemd_unit")
    start_command: str | None = _setting("start_command")
    stop_command: str | None = _setting("stop_command")
    status_command: str | None = _setting("status_command")
    start_wait: float = _setting("start_wait", zero_is_default=True)
    check_nova_service: bool = _setting("check_nova_service")
    disable_on_stop: bool = _setting("disable_on_stop")


class _Group(Generic[_S]):
    """A group of Settings, built from the table on first use and then kept: like
    cached_property, the value lands in the instance's __dict__, which wins from then on."""

    def __init__(self, group: type[_S]) -> None:
        self.group = group

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, settings: Settings, owner: type | None = None) -> _S:
        value = _build(self.group, settings._parsed)
        settings.__dict__[self.name] = value
        return value


class Settings:
    """The typed settings of one run (``parsed.settings``). Each group is built on first
    use, then kept: an agent pays only for the groups it reads."""

    naming = _Group(HostNaming)
    bmc = _Group(BmcSettings)
    evacuation = _Group(EvacuationSettings)
    notify = _Group(NotifySettings)
    compute = _Group(ComputeSettings)

    def __init__(self, parsed: Parsed) -> None:
        self._parsed = parsed

    @cached_property
    def target_node(self) -> str:
        """The node Pacemaker asked the fence device to act on ('port'); '' when none."""
        return table_value(self._parsed, "port") or ""

    @cached_property
    def openstack(self) -> OpenStackSettings:
        given = frozenset(n for n in self._parsed.given if n.startswith("os_"))
        return _build(OpenStackSettings, self._parsed, given=given)
