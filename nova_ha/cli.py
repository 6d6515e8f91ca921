"""The nova-ha command: operator tools.

    nova-ha status [--json]          every compute host: Pacemaker, power, Nova, record
    nova-ha history [HOST] [--json]  recorded events, newest first
    nova-ha reset HOST [--force]     the administrator's reset of a host's record
    nova-ha evacuate HOST            evacuate a fenced host by hand (progress bar)
    nova-ha params [AGENT] [--all]   parameter tables
    nova-ha install-agents           put the agents where Pacemaker finds them

Parameters (credentials included) are the agents' own, so none is typed twice; later sources
win: the CIB's fence_nova_evacuate devices and NovaEvacuate resource (``cibadmin --query
--scope resources``; ``--no-cib`` skips it), then the config file (``key = value`` lines,
default /etc/nova-ha/nova-ha.conf, ``--config``), then ``--os-cloud``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import logging
import os
import stat
import subprocess
import sys
import threading
import time
from typing import Any

from nova_ha.errors import NovaHaError
from nova_ha.lib import clock, docs, lifecycle, owners, params
from nova_ha.lib.lifecycle import Event, HostState, OperatorAction

FENCE_DIR = "/usr/sbin"
OCF_DIR = "/usr/lib/ocf/resource.d/nova-ha"
AGENTS = {  # agent -> (folder in a source checkout, default destination directory)
    "fence_nova_evacuate": ("fence", FENCE_DIR),
    "NovaCompute": ("ocf", OCF_DIR),
    "NovaEvacuate": ("ocf", OCF_DIR),
}
DEFAULT_CONFIG = "/etc/nova-ha/nova-ha.conf"
CIBSECRET_DIR = "/var/lib/pacemaker/lrm/secrets"  # cibsecret keeps "lrm://" values here
POWER_DEVICES = ("fence_nova_evacuate", "fence_ipmilan", "fence_ipmilanplus")
TOOL_TIMEOUT = 15.0

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class CliError(NovaHaError):
    """Stops a command with a message for the operator and an exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


# ---- install-agents -----------------------------------------------------------------------------

def _agent_source(name: str, python: str) -> str:
    """setup.py installs the agents as scripts beside the interpreter; a checkout has them
    under agents/."""
    candidates = [os.path.join(os.path.dirname(python), name)]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    candidates.append(os.path.join(root, "agents", AGENTS[name][0], name))
    for path in candidates:
        if os.path.isfile(path):
            with open(path) as source:
                return source.read()
    raise FileNotFoundError(f"agent {name} not found (looked in {', '.join(candidates)})")


def install_agents(python: str, fence_dir: str, ocf_dir: str) -> list[str]:
    """Write the agents where Pacemaker looks, run by `python` (which has our dependencies)."""
    written = []
    for name, (_, default_dir) in AGENTS.items():
        directory = fence_dir if default_dir == FENCE_DIR else ocf_dir
        os.makedirs(directory, exist_ok=True)
        text = _agent_source(name, python)
        body = text.split("\n", 1)[1] if text.startswith("#!") else text
        path = os.path.join(directory, name)
        tmp = path + ".tmp"
        with open(tmp, "w") as out:
            out.write(f"#!{python}\n{body}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, path)
        written.append(path)
    return written


# ---- where parameters come from ---------------------------------------------------------------

def _bounded(kind: type, low: float, high: float) -> Any:
    """An argparse type: a number of `kind` within [low, high] (no inf, nan or 1e10)."""
    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text[:20]!r} is not a number") from None
        if not low <= value <= high:  # also false for nan
            raise argparse.ArgumentTypeError(f"{text[:20]!r} is not between {low:g} and "
                                             f"{high:g}")
        return value
    return convert


def read_config(path: str) -> list[tuple[str, str]]:
    """`key = value` lines; '#' comments and blank lines ignored; values may be quoted."""
    try:
        with open(path) as stream:
            # "\n" only, as the agents read their input: str.splitlines() would also cut at
            # \x1c, \x85, \u2028... inside a value.
            lines = [line.removesuffix("\r") for line in stream.read(1 << 18).split("\n")]
    except OSError as err:
        raise CliError(f"cannot read {path}: {err.strerror}", EXIT_USAGE) from None
    items = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith(("#", ";")):
            continue
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise CliError(f"{path}, line {number}: expected 'name = value'", EXIT_USAGE)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        items.append((key.strip(), value))
    return items


def _config_warnings(path: str, items: list[tuple[str, str]]) -> list[str]:
    secrets = params.secret_names()
    if not any(params.canonical_name(k, params.CLI) in secrets for k, _ in items):
        return []
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return []
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        return [f"{path} holds a secret and is readable by others: chmod 600 {path}"]
    return []


def cib_resources(timeout: float = TOOL_TIMEOUT) -> Any | None:
    """The CIB's resources section (honours CIB_file), or None when it cannot be read."""
    from lxml import etree

    try:
        done = subprocess.run(["cibadmin", "--query", "--scope", "resources"],
                              capture_output=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    try:
        return etree.fromstring(done.stdout)
    except etree.XMLSyntaxError:
        return None


def _primitive_attrs(primitive: Any) -> dict[str, str]:
    """A primitive's instance attributes, first value of a name wins; cibsecret's 'lrm://'
    values are read from the local secrets store when we may."""
    attrs: dict[str, str] = {}
    for nvset in primitive.findall("instance_attributes"):
        for nv in nvset.findall("nvpair"):
            name, value = nv.get("name"), nv.get("value")
            if not name or value is None or name in attrs:
                continue
            if value == "lrm://":
                path = os.path.join(CIBSECRET_DIR, primitive.get("id", ""), name)
                try:
                    with open(path) as secret:
                        value = secret.read().strip()
                except OSError:
                    continue
            attrs[name] = value
    return attrs


def _primitives(resources: Any, cls: str, type_: str) -> list[Any]:
    if resources is None:
        return []
    return [p for p in resources.iter("primitive")
            if p.get("class") == cls and p.get("type") == type_]


def device_params(resources: Any) -> list[tuple[str, str]]:
    """The CLI's parameters from the cluster: NovaEvacuate's first (its evacuate mode is
    one that moves servers), then the fence devices'. Per-device ones (BMC, port) are left."""
    merged: dict[str, str] = {}
    sources = _primitives(resources, "ocf", params.EVACUATE) + \
        _primitives(resources, "stonith", params.FENCE)
    for primitive in sources:
        for name, value in _primitive_attrs(primitive).items():
            key = params.canonical_name(name, params.CLI)
            if key is not None and key not in merged:
                merged[key] = value
    return list(merged.items())


def _hosts_of(attrs: dict[str, str]) -> list[str]:
    import re

    if attrs.get("pcmk_host_list"):
        return [h for h in re.split(r"[\s,;]+", attrs["pcmk_host_list"]) if h]
    if attrs.get("pcmk_host_map"):
        return [pair.split(":", 1)[0] for pair in re.split(r"[\s,;]+", attrs["pcmk_host_map"])
                if ":" in pair]
    return []


def bmc_devices(resources: Any) -> dict[str, dict[str, str]]:
    """{node: BMC parameters} from the fence devices that have one BMC for one host."""
    found: dict[str, dict[str, str]] = {}
    for type_ in POWER_DEVICES:
        for primitive in _primitives(resources, "stonith", type_):
            attrs = _primitive_attrs(primitive)
            hosts = _hosts_of(attrs)
            if len(hosts) != 1 or not (attrs.get("ip") or attrs.get("ipaddr")):
                continue
            found.setdefault(hosts[0], attrs)
    return found


@dataclasses.dataclass
class Context:
    """One command's parameters and the clients made from them, lazily."""

    parsed: params.Parsed
    resources: Any = None
    warnings: list[str] = dataclasses.field(default_factory=list)
    _store: Any = None

    def store(self) -> Any:
        from nova_ha.lib import state

        if self._store is None:
            self._store = state.CibStateStore()
        return self._store

    def nova(self) -> Any:
        from nova_ha.openstack.compute import Nova

        problems = params.check_openstack(self.parsed)
        if problems:
            raise CliError("; ".join(problems) + " (in the config file, --os-cloud, or the "
                           "cluster's fence_nova_evacuate device)", EXIT_USAGE)
        return Nova.from_params(self.parsed)

    def notifier(self) -> Any:
        from nova_ha.lib import notify

        return notify.Notifier.from_settings(self.parsed.settings.notify, params.CLI)


def load_context(args: argparse.Namespace) -> Context:
    raw: list[tuple[str, str]] = []
    warnings: list[str] = []
    resources = None
    if not args.no_cib:
        resources = cib_resources()
        raw += device_params(resources)
    config = args.config or (DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None)
    if config:
        items = read_config(config)
        warnings += _config_warnings(config, items)
        for name, _ in items:
            if params.canonical_name(name, params.CLI) is None:
                warnings.append(f"{config}: ignoring unknown parameter '{name}'")
        raw += [(k, v) for k, v in items if params.canonical_name(k, params.CLI)]
    if args.os_cloud:
        raw.append(("os_cloud", args.os_cloud))
    parsed = params.parse(raw, params.CLI)
    from nova_ha.lib import log

    log.REDACTOR.add(*parsed.secrets())
    problems = parsed.problems + params.check_evacuation(parsed) + params.check_notify(parsed)
    if problems:
        raise CliError("; ".join(problems), EXIT_USAGE)
    warnings += [w for w in parsed.warnings if "deprecated" in w]
    return Context(parsed=parsed, resources=resources, warnings=warnings)


# ---- output helpers -----------------------------------------------------------------------------

_COLOURS = {"red": "31", "green": "32", "yellow": "33", "bold": "1", "dim": "2"}
_GOOD = {"online", "on", "up", "ok", "enabled", "evacuated"}
_BAD = {"fenced", "down", "failed", "off", "unclean", "forced down", "HELD"}
_WARN = {"evacuating", "disabled", "offline", "unknown", "standby", "maintenance"}


def _use_colour(mode: str, stream: Any) -> bool:
    if mode == "always":
        return True
    if mode == "never" or os.environ.get("NO_COLOR"):
        return False
    return hasattr(stream, "isatty") and stream.isatty()


def _paint(text: str, colour: str | None, on: bool) -> str:
    if not on or not colour or not text:
        return text
    return f"\x1b[{_COLOURS[colour]}m{text}\x1b[0m"


def _tone(word: str) -> str | None:
    first = word.split(" ")[0].split(",")[0]
    if word in _BAD or first in _BAD:
        return "red"
    if word in _WARN or first in _WARN:
        return "yellow"
    if word in _GOOD or first in _GOOD:
        return "green"
    return None


def _line(text: Any) -> str:
    """Data on one line of output: names and messages from Nova or the CIB can hold control
    characters (a newline would forge a line of the table); they are shown escaped."""
    from nova_ha.lib import log

    return log.escape(str(text))


def table(header: list[str], rows: list[list[str]], colour: bool,
          tones: list[list[str | None]] | None = None) -> str:
    header = [_line(h) for h in header]
    rows = [[_line(c) for c in row] for row in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    lines = ["  ".join(_paint(h, "bold", colour) + " " * (w - len(h))
                       for h, w in zip(header, widths, strict=True)).rstrip()]
    for r, row in enumerate(rows):
        cells = []
        for c, (cell, width) in enumerate(zip(row, widths, strict=True)):
            tone = tones[r][c] if tones else None
            cells.append(_paint(str(cell), tone, colour) + " " * (width - len(str(cell))))
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _age(iso: str | None, now: float) -> str:
    then = clock.epoch(iso)
    if then is None:
        return ""
    seconds = max(0, int(now - then))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


# ---- status -------------------------------------------------------------------------------------

def pacemaker_nodes(timeout: float = TOOL_TIMEOUT) -> tuple[dict[str, dict] | None, str]:
    """{node: {state, type, last_fenced}} from crm_mon, or (None, why) when it cannot tell."""
    try:
        done = subprocess.run(["crm_mon", "--output-as=xml", "-1", "--fence-history=2"],
                              capture_output=True, timeout=timeout, check=False)
    except FileNotFoundError:
        return None, "crm_mon not found"
    except subprocess.TimeoutExpired:
        return None, f"crm_mon gave no answer within {timeout:g} s"
    return parse_crm_mon(done.stdout, done.returncode, done.stderr.decode(errors="replace"))


def parse_crm_mon(xml: bytes, code: int = 0, err: str = "") -> tuple[dict[str, dict] | None,
                                                                       str]:
    from lxml import etree

    try:
        root = etree.fromstring(xml)
    except etree.XMLSyntaxError:
        first = (err.strip().splitlines() or [f"exit {code}"])[0]
        return None, f"crm_mon: {first}"
    errors = [e.text for e in root.iter("error") if e.text]
    nodes = root.find("nodes")
    if nodes is None:
        return None, "crm_mon: " + (errors[0] if errors else f"no node list (exit {code})")
    stack = root.find("summary/stack")
    dc = root.find("summary/current_dc")
    if stack is not None and stack.get("type") == "unknown" and dc is not None \
            and dc.get("present") == "false":
        return None, "no running cluster: an offline CIB has no node status"
    fenced: dict[str, str] = {}
    for event in root.iter("fence_event"):
        target = event.get("target")
        if event.get("status") == "success" and event.get("action") in ("off", "reboot") \
                and target and target not in fenced:  # newest first
            fenced[target] = event.get("completed") or "yes"
    out: dict[str, dict] = {}
    for node in nodes.findall("node"):
        name = node.get("name")
        if not name:
            continue
        if node.get("online") == "true":
            state = "online"
            for flag in ("standby", "maintenance"):
                if node.get(flag) == "true":
                    state = flag
        elif node.get("unclean") == "true":
            state = "unclean"
        else:
            state = "fenced" if name in fenced else "offline"
        out[name] = {"state": state, "type": node.get("type"),
                     "last_fenced": fenced.get(name)}
    return out, ""


def power_states(devices: dict[str, dict[str, str]], timeout: float = 5.0) -> dict[str, str]:
    """{node: on|off|unknown (why)} from each host's BMC, asked in parallel."""
    if not devices:
        return {}
    from nova_ha.lib import fence_path, log, power

    def ask(node: str, attrs: dict[str, str]) -> str:
        device = params.parse(attrs, params.FENCE)
        log.REDACTOR.add(*device.secrets())
        bmc = device.settings.bmc
        try:
            cfg = fence_path.bmc_config(bmc, node)
            with power.Bmc(dataclasses.replace(cfg, connect_timeout=timeout)) as client:
                return client.status()
        except NovaHaError as err:  # the BMC's, its password script's, its parameters'
            return f"unknown ({log.REDACTOR.redact(str(err))[:80]})"

    with concurrent.futures.ThreadPoolExecutor(min(16, len(devices))) as pool:
        futures = {node: pool.submit(ask, node, attrs) for node, attrs in devices.items()}
        return {node: future.result() for node, future in futures.items()}


def _nova_cell(svc: dict[str, Any] | None) -> str:
    if svc is None:
        return "-"
    parts = [svc["state"] or "?"]
    if svc["forced_down"]:
        parts.append("forced down")
    if svc["status"] == "disabled":
        reason = svc.get("disabled_reason") or ""
        if reason.startswith("nova-ha"):
            parts.append("disabled by nova-ha")  # the full reason is in --json
        else:
            parts.append("disabled" + (f": {reason[:30]}" if reason else ""))
    return ", ".join(parts)


def _nova_tone(svc: dict[str, Any] | None) -> str | None:
    if svc is None:
        return None
    if svc["forced_down"] or svc["state"] != "up":
        return "red"
    return "yellow" if svc["status"] == "disabled" else "green"


def build_rows(records: dict[str, Any], pcmk: dict[str, dict] | None,
               services: list[Any] | None, servers: list[Any] | None,
               powers: dict[str, str], parsed: params.Parsed,
               now: float | None = None) -> list[dict[str, Any]]:
    """One row per compute host, from data fetched once per source."""
    from nova_ha.lib import guard

    now = time.time() if now is None else now
    naming = parsed.settings.naming
    nova_host = {node: rec.service_host or naming.nova_host(node)
                 for node, rec in records.items()}
    by_host = {h: n for n, h in nova_host.items()}
    svc_by_node: dict[str, Any] = {}
    for svc in services or []:
        node = by_host.get(svc.host) or naming.node_for(svc.host)
        svc_by_node[node] = svc
        nova_host.setdefault(node, svc.host)
    for node, info in (pcmk or {}).items():
        if info.get("type") == "remote" or node in svc_by_node:
            nova_host.setdefault(node, naming.nova_host(node))
    counts: dict[str, dict[str, int]] = {}
    for server in servers or []:  # openstack.views.Server
        host = server.host
        if host:
            statuses = counts.setdefault(host, {})
            status = server.status or "?"
            statuses[status] = statuses.get(status, 0) + 1
    total = len(services) if services else None
    rows = []
    for node in sorted(nova_host):
        host, rec, svc = nova_host[node], records.get(node), svc_by_node.get(node)
        row: dict[str, Any] = {"node": node, "nova_host": host}
        if pcmk is None:
            row["pacemaker"] = "unknown"
        else:
            info = pcmk.get(node)
            row["pacemaker"] = info["state"] if info else "unknown"
            if info and info["state"] == "offline" and rec is not None \
                    and rec.state in lifecycle.POWERED_OFF:
                row["pacemaker"] = "fenced"
            row["last_fenced"] = info.get("last_fenced") if info else None
        row["power"] = powers.get(node)
        row["nova"] = None if svc is None else {
            "state": svc.state, "status": svc.status, "forced_down": svc.forced_down,
            "disabled_reason": svc.disabled_reason}
        if servers is None:
            row["servers"] = None
        else:
            statuses = counts.get(host, {})
            row["servers"] = {"total": sum(statuses.values()), "by_status": statuses}
        if rec is None:
            row["record"] = None
            row["held"] = False
        else:
            row["record"] = {
                "state": rec.state, "since": rec.since, "lease_owner": rec.lease_owner,
                "lease_expires": rec.lease_expires, "lease_live": rec.lease_live(now),
                "found": rec.found, "evacuated": rec.evacuated, "failed": rec.failed,
                "mode": rec.mode,
            }
            verdict = guard.check(records, parsed.settings.evacuation, node,
                                  total_hosts=total)
            row["held"] = verdict.blocked and rec.state in lifecycle.INCIDENT
            if row["held"]:
                row["guard"] = verdict.as_dict()
        rows.append(row)
    return rows


def collect_status(ctx: Context, with_power: bool = True) -> dict[str, Any]:
    from nova_ha.lib import state
    from nova_ha.openstack.transport import Deadline

    problems: list[str] = []
    bad: dict[str, str] = {}
    try:
        # Per host: one record that does not read is reported, the others are shown.
        records, bad = ctx.store().readable()
    except state.StateError as err:
        records = {}
        problems.append(f"cluster records: {err}")
    problems += [f"the record of {node} does not read ({why}); 'nova-ha reset {node}' "
                 "replaces it" for node, why in bad.items()]
    pcmk, why = pacemaker_nodes()
    if pcmk is None:
        problems.append(f"Pacemaker: unknown ({why})")
    services = servers = None
    try:
        nova = ctx.nova()
        deadline = Deadline(ctx.parsed.settings.openstack.api_timeout * 3)
        services = nova.services(deadline)
        servers = nova.all_servers(deadline)
    except NovaHaError as err:  # no usable parameters (CliError), or Nova's
        problems.append(f"Nova: {err}")
    powers = power_states(bmc_devices(ctx.resources)) if with_power else {}
    rows = build_rows(records, pcmk, services, servers, powers, ctx.parsed)
    for row in rows:
        if row.get("node") in bad:
            row["record"] = {"state": "UNREADABLE"}
    return {"time": clock.iso_utc(time.time()), "hosts": rows, "problems": problems}


def render_status(data: dict[str, Any], colour: bool, now: float | None = None) -> str:
    now = time.time() if now is None else now
    rows = data["hosts"]
    with_power = any(r.get("power") for r in rows)
    header = ["NODE", "PACEMAKER"] + (["POWER"] if with_power else []) + \
        ["NOVA", "SERVERS", "NOVA-HA", "SINCE", "LEASE", "FOUND/EVAC/FAIL"]
    cells, tones = [], []
    for row in rows:
        rec = row.get("record") or {}
        servers = row.get("servers")
        if servers is None:
            server_cell = "?"
        else:
            others = {k: v for k, v in servers["by_status"].items() if k != "ACTIVE"}
            server_cell = str(servers["total"]) + (
                " (" + ", ".join(f"{v} {k}" for k, v in sorted(others.items())) + ")"
                if others else "")
        state_cell = rec.get("state", "-") + (" HELD" if row.get("held") else "")
        since = rec.get("since")
        since_cell = f"{since} ({_age(since, now)})" if since else "-"
        lease = "-"
        if rec.get("lease_owner"):
            lease = rec["lease_owner"] + ("" if rec.get("lease_live") else " (expired)")
        counts = "-" if not (rec.get("found") or rec.get("evacuated") or rec.get("failed")) \
            else f"{rec['found']}/{rec['evacuated']}/{rec['failed']}"
        node = row["node"] + (f" ({row['nova_host']})" if row["nova_host"] != row["node"]
                              else "")
        line = [node, row["pacemaker"]] + ([row.get("power") or "-"] if with_power else []) + \
            [_nova_cell(row.get("nova")), server_cell, state_cell, since_cell, lease, counts]
        tone = [None, _tone(row["pacemaker"])] + (
            [_tone(row.get("power") or "")] if with_power else []) + \
            [_nova_tone(row.get("nova")), None,
             "red" if row.get("held") else _tone(rec.get("state", "")), None,
             "yellow" if rec.get("lease_live") else None,
             "red" if rec.get("failed") else None]
        cells.append(line)
        tones.append(tone)
    out = [table(header, cells, colour, tones)] if rows else ["no compute host found"]
    if any(r.get("held") for r in rows):
        out.append(_paint("HELD: the mass-failure guard stopped automatic evacuation of these "
                          "hosts; decide with 'nova-ha evacuate HOST' or 'nova-ha reset HOST'",
                          "red", colour))
    for problem in data["problems"]:
        out.append(_paint(f"note: {_line(problem)}", "yellow", colour))
    return "\n".join(out)


def cmd_status(ctx: Context, args: argparse.Namespace) -> int:
    data = collect_status(ctx, with_power=not args.no_power)
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(render_status(data, _use_colour(args.color, sys.stdout)))
    return EXIT_OK


# ---- history ------------------------------------------------------------------------------------

def events_newest_first(records: dict[str, Any]) -> list[dict[str, str]]:
    flat = []
    for node, rec in records.items():
        for index, event in enumerate(rec.history):
            flat.append(((event.time, index), {"time": event.time, "node": node,
                                               "event": event.name, "detail": event.detail}))
    flat.sort(key=lambda item: item[0], reverse=True)
    return [entry for _, entry in flat]


def cmd_history(ctx: Context, args: argparse.Namespace) -> int:
    from nova_ha.lib import state

    store = ctx.store()
    try:
        if args.host:
            records, bad = {args.host: store.get(args.host)}, {}
        else:
            records, bad = store.readable()
    except state.StateError as err:
        raise CliError(f"cannot read the records: {err}") from None
    for node, why in bad.items():
        print(_line(f"warning: the record of {node} does not read ({why})"), file=sys.stderr)
    events = events_newest_first(records)
    if args.limit:
        events = events[:args.limit]
    if args.json:
        print(json.dumps(events, indent=2))
        return EXIT_OK
    if not events:
        print(f"no recorded event{' for ' + args.host if args.host else ''}")
        return EXIT_OK
    colour = _use_colour(args.color, sys.stdout)
    tones = {Event.FENCED: "red", Event.EVACUATION_FAILED: "red",
             Event.EVACUATION_BLOCKED: "red", Event.EVACUATION_FINISHED: "green",
             Event.REJOINED: "green", Event.RESET: "yellow"}
    rows = [[e["time"], e["node"], e["event"], e["detail"]] for e in events]
    print(table(["TIME", "NODE", "EVENT", "DETAIL"], rows, colour,
                [[None, None, tones.get(e["event"]), None] for e in events]))
    return EXIT_OK


# ---- reset --------------------------------------------------------------------------------------

def _who() -> str:
    import getpass

    try:
        user = os.environ.get("SUDO_USER") or getpass.getuser()
    except (KeyError, OSError):
        user = "uid" + str(os.getuid())
    return f"{user}@{os.uname().nodename}"


def _known_node(records: dict[str, Any], node: str) -> str:
    """The node as the CIB spells it (Pacemaker compares names case-insensitively)."""
    for name in records:
        if name.lower() == node.lower():
            return name
    known = ", ".join(sorted(records)) or "none"
    raise CliError(f"{node} is not a compute node of this cluster (known: {known})")


def cmd_reset(ctx: Context, args: argparse.Namespace) -> int:
    from nova_ha.lib import state

    store = ctx.store()
    now = time.time()
    try:
        records = store.all()
    except state.StateError:
        records = None  # a damaged record: reset is the way out, try it host by host
    node = _known_node(records, args.host) if records is not None else args.host
    try:
        before = store.get(node)
    except state.StateError as err:
        before = None
        print(_line(f"{node}: the record does not read ({err}); resetting it"))
    decision = lifecycle.operator_reset(
        before, now, owner_gone=owners.gone(before.lease_owner if before else None),
        force=args.force, skew=store.skew)
    if decision.action is OperatorAction.REFUSE:
        raise CliError(decision.reason)
    if decision.action is OperatorAction.NOTHING:
        print(_line(decision.reason))
        return EXIT_OK
    note = (args.note or "") + (" " if args.note else "") + f"by {_who()}"
    if args.force:
        note += " (forced)"
    try:
        after = store.reset(node, note=note)
    except state.StateError as err:
        raise CliError(f"cannot reset {node}: {err}") from None
    for line in describe_reset(before, after, now):
        print(_line(line))
    if before is None or before.state != HostState.OK:
        print(_line(f"  Nova is not changed: nova-compute on {after.service_host or node} "
                    "stays forced down and disabled until NovaCompute starts it there (it "
                    "lifts nova-ha's force-down once the service reports up)."))
    ctx.notifier().send(Event.RESET, node, host=after.service_host, detail=note,
                        previous_state=before.state if before else None)
    return EXIT_OK


def describe_reset(before: Any, after: Any, now: float) -> list[str]:
    node = after.host
    if before is None:
        return [f"{node}: unreadable record replaced: state ok, lease cleared, "
                f"history kept with a 'reset' event"]
    lines = [f"{node}: state {before.state} -> ok" if before.state != HostState.OK
             else f"{node}: state stays ok"]
    counts = [f"{n}={getattr(before, n)}" for n in ("found", "evacuated", "failed")
              if getattr(before, n)]
    if counts:
        lines.append(f"  counts {' '.join(counts)} cleared")
    if before.mode:
        lines.append(f"  mode {before.mode} cleared")
    if before.lease_owner:
        alive = "live" if before.lease_live(now) else "expired"
        lines.append(f"  lease of {before.lease_owner} ({alive}) released")
    lines.append(f"  history kept ({len(before.history)} events), 'reset' event added")
    return lines


# ---- evacuate -----------------------------------------------------------------------------------

class ProgressBar:
    """The evacuation Progress callback: a redrawn bar on a terminal, lines otherwise."""

    def __init__(self, total: int, stream: Any = None, tty: bool | None = None,
                 colour: bool = False) -> None:
        self.total, self.stream = total, stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.colour = colour
        self.accepted: set[str] = set()
        self.finished: dict[str, str] = {}
        self.started = time.monotonic()
        self._lock = threading.Lock()

    def __call__(self, event: str, outcome: Any) -> None:
        with self._lock:
            if event == "accepted":
                self.accepted.add(outcome.server_id)
            elif event == "finished":
                self.finished[outcome.server_id] = outcome.result
            if self.tty:
                self._draw()
            elif event in ("finished", "retry"):
                what = outcome.result if event == "finished" else "retrying"
                detail = f" - {_line(outcome.detail)}" if outcome.detail else ""
                self.stream.write(f"  {what:<10} {_line(outcome.name or '-')} "
                                  f"({_line(outcome.server_id)}){detail}\n")
                self.stream.flush()

    def _draw(self) -> None:
        done = len(self.finished)
        total = max(self.total, done)
        width = 30
        filled = int(width * done / total) if total else width
        results = [r for r in self.finished.values()]
        failed = results.count("failed")
        bar = _paint("#" * filled, "red" if failed else "green", self.colour) + \
            "-" * (width - filled)
        flight = len(self.accepted - set(self.finished))
        self.stream.write(f"\r  [{bar}] {done}/{total} done, {results.count('evacuated')} "
                          f"evacuated, {failed} failed, {flight} in flight, "
                          f"{time.monotonic() - self.started:.0f}s\x1b[K")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            with self._lock:
                self._draw()
                self.stream.write("\n")
                self.stream.flush()


def cmd_evacuate(ctx: Context, args: argparse.Namespace) -> int:
    from nova_ha.lib import guard, handover, proof, recovery, state
    from nova_ha.openstack.exceptions import NovaError
    from nova_ha.openstack.transport import Deadline

    store = ctx.store()
    now = time.time()
    try:
        records, bad = store.readable()
    except state.StateError as err:
        raise CliError(f"cannot read the records: {err}") from None
    if args.host in bad:
        raise CliError(f"the record of {args.host} does not read ({bad[args.host]}); "
                       f"'nova-ha reset {args.host}' replaces it")
    node = _known_node(records, args.host)
    record = records[node]
    if args.take_over and record.lease_owner == handover.SERVICE_OWNER:
        try:
            store.release_lease(node, handover.SERVICE_OWNER)
        except state.StateError as err:
            raise CliError(f"cannot take the lease of {node}: {err}") from None
        print(_line(f"{node}: lease taken from {handover.SERVICE_OWNER}"))
        record = store.get(node)
    decision = lifecycle.operator_evacuate(record, now,
                                           owner_gone=owners.gone(record.lease_owner),
                                           service=handover.SERVICE_OWNER)
    if decision.action is not OperatorAction.GO:
        raise CliError(f"refusing: {decision.reason}")
    settings = ctx.parsed.settings
    evacuation = settings.evacuation
    host = record.service_host or settings.naming.nova_host(node)
    confirmed = proof.from_record(record, host)
    if confirmed is None:
        raise CliError(f"refusing: {node} is recorded '{record.state}': its power-off is not "
                       "confirmed")
    mode = args.mode or (record.mode if record.mode in ("all", "tagged") else None) or \
        (evacuation.mode if evacuation.mode in ("all", "tagged") else "all")
    verdict = guard.check(records, evacuation, node)
    if verdict.blocked:
        print(_line(f"note: the mass-failure guard holds {node} ({verdict.message()}); "
                    "evacuating it by hand as asked"))
    nova = ctx.nova()
    timeout = args.timeout or max(evacuation.timeout, 600.0)
    deadline = Deadline(timeout)
    notifier = ctx.notifier()
    try:
        recovery.force_down(nova, deadline, confirmed)  # done at fencing; makes sure of it
        total = len(nova.servers_on(deadline, host))
    except NovaError as err:
        raise CliError(f"cannot prepare the evacuation of {host}: {err}") from None
    print(_line(f"{node}: recorded '{record.state}'; {total} servers on {host}; evacuating "
                f"({mode}, at most {evacuation.max_parallel} at once, within "
                f"{timeout:g} s)"))
    colour = _use_colour(args.color, sys.stdout)
    bar = ProgressBar(total, colour=colour)
    options = recovery.Options.from_settings(evacuation, mode, notifier)
    try:
        summary = recovery.evacuate_host(nova, store, confirmed, options, deadline,
                                         owners.name(params.CLI), progress=bar)
    except NovaError as err:
        bar.close()
        raise CliError(f"evacuation of {node} interrupted: {err}; the record is back to "
                       "'fenced' (NovaEvacuate or this command resumes it)") from None
    bar.close()
    if summary is None:
        raise CliError(f"{node}: another runner took the host's lease first; leaving it "
                       "to them")
    print(_line(summary.line()))
    for outcome in summary.outcomes:
        if outcome.result in ("failed", "unfinished", "skipped"):
            print(_line(f"  {outcome.result:<10} {outcome.name or '-'} ({outcome.server_id})"
                        f"{' - ' + outcome.detail if outcome.detail else ''}"))
    return EXIT_OK if not (summary.count("failed") or summary.count("unfinished")) \
        else EXIT_FAILED


# ---- main ---------------------------------------------------------------------------------------

def _setup_logging(verbose: bool) -> None:
    from nova_ha.lib import log

    log.setup("nova-ha", verbose=verbose)
    if not verbose:  # the library's INFO lines go to syslog; people see warnings
        for handler in logging.getLogger().handlers:
            if type(handler) is logging.StreamHandler:
                handler.setLevel(logging.WARNING)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nova-ha", description="nova-ha operator tools",
        epilog="Parameters come from the cluster's NovaEvacuate resource and fence_nova_evacuate "
               "devices, then "
               f"the config file ({DEFAULT_CONFIG}), then --os-cloud.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH",
                        help=f"parameter file, 'name = value' lines (default: {DEFAULT_CONFIG} "
                             "if it exists)")
    common.add_argument("--os-cloud", metavar="CLOUD", help="cloud name in clouds.yaml")
    common.add_argument("--no-cib", action="store_true",
                        help="do not read parameters from the cluster's fence devices")
    common.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                        help="colours (default: on a terminal only)")
    common.add_argument("-v", "--verbose", action="store_true", help="show debug messages")
    sub = parser.add_subparsers(dest="command", required=True)
    status = sub.add_parser("status", parents=[common],
                            help="every compute host: Pacemaker, power, Nova, nova-ha record")
    status.add_argument("--json", action="store_true", help="JSON for machines")
    status.add_argument("--no-power", action="store_true", help="do not ask the BMCs")
    history = sub.add_parser("history", parents=[common],
                             help="recorded events, newest first")
    history.add_argument("host", nargs="?", help="only this host (Pacemaker node name)")
    history.add_argument("--json", action="store_true")
    history.add_argument("-n", "--limit", type=_bounded(int, 0, 100000), default=0,
                         help="at most N events")
    reset = sub.add_parser("reset", parents=[common],
                           help="administrator's reset of a host's record (after a repair)")
    reset.add_argument("host", help="Pacemaker node name of the compute host")
    reset.add_argument("--force", action="store_true",
                       help="reset even while a lease is live (its holder must be gone)")
    reset.add_argument("--note", default="", help="why, kept in the host's history")
    evacuate = sub.add_parser("evacuate", parents=[common],
                              help="evacuate a fenced host by hand")
    evacuate.add_argument("host", help="Pacemaker node name of the fenced compute host")
    evacuate.add_argument("--mode", choices=("all", "tagged"),
                          help="which servers (default: as recorded, else the 'evacuate' "
                               "parameter, else all)")
    evacuate.add_argument("--take-over", action="store_true",
                          help="take the host's lease from NovaEvacuate (when it is stopped "
                               "or cannot work the host) instead of waiting for its end")
    evacuate.add_argument("--timeout", type=_bounded(float, 0, 86400), default=0,
                          help="seconds allowed (default: 600, or evacuate_timeout if longer)")
    inst = sub.add_parser("install-agents", help="install the agents where Pacemaker finds them")
    inst.add_argument("--python", default=sys.executable,
                      help="interpreter the agents run with (default: this one)")
    inst.add_argument("--fence-dir", default=FENCE_DIR)
    inst.add_argument("--ocf-dir", default=OCF_DIR)
    doc = sub.add_parser("params", help="print an agent's parameters as a Markdown table")
    doc.add_argument("agent", nargs="?", choices=[params.FENCE, params.COMPUTE, params.EVACUATE])
    doc.add_argument("--all", action="store_true", help="the whole docs/parameters.md page")
    sub.add_parser("manpage", help="print this command's man page (troff)")
    return parser


COMMANDS = {"status": cmd_status, "history": cmd_history, "reset": cmd_reset,
            "evacuate": cmd_evacuate}


def main(argv: list[str] | None = None) -> int:
    """The command; a reader that leaves early (`nova-ha reset HOST | head -2`) changes
    nothing but the output: the command finishes its work, quietly."""
    from nova_ha.lib import log

    with log.PipeSafeOutput():
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "install-agents":
        for path in install_agents(os.path.abspath(args.python), args.fence_dir, args.ocf_dir):
            print(f"installed {path}")
        return 0
    if args.command == "params":
        print(docs.parameters_page() if args.all or not args.agent
              else docs.markdown_table(args.agent))
        return 0
    if args.command == "manpage":
        print(docs.cli_man_page(_parser()))
        return 0
    _setup_logging(args.verbose)
    try:
        ctx = load_context(args)
        for warning in ctx.warnings:
            print(f"nova-ha: warning: {_line(warning)}", file=sys.stderr)
        return COMMANDS[args.command](ctx, args)
    except CliError as err:
        from nova_ha.lib import log

        print(f"nova-ha {args.command}: {_line(log.REDACTOR.redact(str(err)))}",
              file=sys.stderr)
        return err.code
    except KeyboardInterrupt:
        print(f"nova-ha {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
