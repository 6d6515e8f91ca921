"""The one table of parameters, and the typed parsing every agent shares.

Each parameter is declared once, in the table beside this module (parameters.json). The
fence-agent metadata and CLI (fence_proto), the OCF metadata (ocf_proto), validation, the docs
/ man pages and the typed settings below are all made from it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from nova_ha.errors import NovaHaError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

FENCE = "fence_nova_evacuate"
COMPUTE = "NovaCompute"
EVACUATE = "NovaEvacuate"
INSTANCE = "NovaInstanceHA"
CLI = "nova-ha"

_OPENSTACK = frozenset({FENCE, COMPUTE, EVACUATE, INSTANCE, CLI})
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


# Who takes a parameter, by the name the table gives.
_AGENT_SETS = {
    "openstack": _OPENSTACK,
    "evacuation": _EVACUATION,
    "fence": _FENCE_ONLY,
    "compute": _COMPUTE_ONLY,
    "evacuate": frozenset({EVACUATE}),
    # Which servers are chosen: the same for evacuating them and for restarting them.
    "chosen": _EVACUATION | {INSTANCE},
    "instance": frozenset({INSTANCE}),
}


def _param(entry: dict[str, Any]) -> Param:
    """One entry of parameters.json: long text as a list of lines, the agents by set name."""
    spec = dict(entry)
    spec["long"] = "".join(spec.get("long", ()))
    spec["agents"] = _AGENT_SETS[spec["agents"]]
    for key in ("aliases", "choices"):
        spec[key] = tuple(spec.get(key, ()))
    param = Param(**spec)
    if param.maximum is not None:
        # The limit is declared once (in the table); metadata, --help, man pages and docs
        # show it.
        param = replace(param, short=f"{param.short} ({param.range_text()})")
    return param


@dataclass(frozen=True)
class AgentText:
    """What an agent's metadata and man page say it is."""

    short: str
    long: str


def _load_table() -> tuple[dict[str, AgentText], tuple[Param, ...]]:
    # JSON, not TOML: every agent run reads it, and json parses it in well under a
    # millisecond where tomllib's import alone costs several.
    with open(Path(__file__).with_name("parameters.json"), encoding="utf-8") as file:
        table = json.load(file)
    agents = {
        name: AgentText(text["short"], "".join(text["long"]))
        for name, text in table["agents"].items()
    }
    return agents, tuple(_param(entry) for entry in table["parameters"])


# The one table: nova_ha/lib/parameters.json, each agent's description and one entry a
# parameter.
AGENTS, PARAMETERS = _load_table()

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


@dataclass
class Request:
    """What one run of an agent was asked: the action and the typed parameters."""

    action: str
    params: Parsed


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


def _part(group: type) -> Any:
    """A settings field that is a group of its own (TLS, how nova-compute is run), filled
    from the table as well."""
    return field(metadata={"group": group})


def _build(cls: type[_S], parsed: Parsed, **extra: Any) -> _S:
    """`cls` with each field read from its parameter; `extra`: the fields that are not."""
    values = dict(extra)
    for item in fields(cls):
        meta = item.metadata
        if "param" in meta:
            value = table_value(parsed, meta["param"], meta["zero_is_default"])
            values[item.name] = meta["convert"](value) if meta["convert"] else value
        elif "group" in meta:
            values[item.name] = _build(meta["group"], parsed)
    return cls(**values)


def parameter_values(settings: DataclassInstance) -> dict[str, Any]:
    """{parameter name: value} of a settings group, its parts included."""
    values: dict[str, Any] = {}
    for item in fields(settings):
        if "param" in item.metadata:
            values[item.metadata["param"]] = getattr(settings, item.name)
        elif "group" in item.metadata:
            values.update(parameter_values(getattr(settings, item.name)))
    return values


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
class TlsSettings:
    """How Keystone's and Nova's certificates are checked, and ours presented."""

    insecure: bool = _setting("os_insecure")
    cacert: str | None = _setting("os_cacert")
    cert: str | None = _setting("os_cert")
    key: str | None = _setting("os_key")


@dataclass(frozen=True)
class OpenStackSettings:
    """Keystone and Nova: credentials, endpoint choice, TLS, timeouts."""

    # Where: the cloud entry of clouds.yaml, or Keystone and the endpoint to use.
    cloud: str | None = _setting("os_cloud")
    auth_url: str | None = _setting("os_auth_url")
    region_name: str | None = _setting("os_region_name")
    interface: str = _setting("os_interface")
    # Who: a user and project, or an application credential.
    username: str | None = _setting("os_username")
    password: str | None = _setting("os_password")
    password_script: str | None = _setting("os_password_script")
    project_name: str | None = _setting("os_project_name")
    user_domain_name: str = _setting("os_user_domain_name")
    project_domain_name: str = _setting("os_project_domain_name")
    application_credential_id: str | None = _setting("os_application_credential_id")
    application_credential_secret: str | None = _setting("os_application_credential_secret")
    tls: TlsSettings = _part(TlsSettings)
    # How: each call's timeout, the microversion cap, tokens kept between runs.
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
    target_policy: str = _setting("target_policy")
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
class ServiceRunner:
    """How nova-compute is run: its systemd unit, or the three commands."""

    unit: str | None = _setting("systemd_unit")
    start: str | None = _setting("start_command")
    stop: str | None = _setting("stop_command")
    status: str | None = _setting("status_command")


@dataclass(frozen=True)
class ComputeSettings:
    """NovaCompute: how nova-compute is run, and what start and stop do around it."""

    start_wait: float = _setting("start_wait", zero_is_default=True)
    check_nova_service: bool = _setting("check_nova_service")
    disable_on_stop: bool = _setting("disable_on_stop")
    runner: ServiceRunner = _part(ServiceRunner)


@dataclass(frozen=True)
class InstanceSettings:
    """NovaInstanceHA's monitor: where libvirt is, the heartbeat, the crash-loop cap, the
    recovery's bounds and its journal."""

    libvirt_uri: str = _setting("libvirt_uri")
    heartbeat: bool = _setting("heartbeat")
    heartbeat_interval: float = _setting("heartbeat_interval")
    heartbeat_timeout: float = _setting("heartbeat_timeout")
    heartbeat_threshold: int = _setting("heartbeat_threshold", int)
    recover_guest_shutdown: bool = _setting("recover_guest_shutdown")
    max_restarts: int = _setting("max_restarts", int)
    restart_window: float = _setting("restart_window")
    recovery_timeout: float = _setting("recovery_timeout")
    retry_window: float = _setting("recovery_retry_window")
    state_dir: str = _setting("state_dir")


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
    instance = _Group(InstanceSettings)

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
