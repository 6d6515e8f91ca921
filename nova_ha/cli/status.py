"""nova-ha status: every compute host as Pacemaker, its BMC, Nova and nova-ha's record see it.

Each source is read once for all hosts; a source that does not answer becomes a note, and the
others are still shown."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from nova_ha.cli import sources
from nova_ha.cli.arguments import JSON_OUTPUT, Command, option
from nova_ha.cli.context import EXIT_OK, Context
from nova_ha.cli.output import age, escaped, paint, table, tone_of, use_colour
from nova_ha.errors import NovaHaError
from nova_ha.lib import clock, lifecycle, params

# ---- collect ------------------------------------------------------------------------------------


def collect_status(ctx: Context, with_power: bool = True) -> dict[str, Any]:
    """The status as `--json` prints it: {time, hosts: rows, problems: notes}."""
    problems: list[str] = []
    records, bad = _records(ctx, problems)
    pcmk, why = sources.pacemaker_nodes()
    if pcmk is None:
        problems.append(f"Pacemaker: unknown ({why})")
    services, servers = _nova_facts(ctx, problems)
    powers = sources.power_states(sources.bmc_devices(ctx.resources)) if with_power else {}
    rows = build_rows(records, pcmk, services, servers, powers, ctx.parsed)
    for row in rows:
        if row.get("node") in bad:
            row["record"] = {"state": "UNREADABLE"}
    return {"time": clock.iso_utc(time.time()), "hosts": rows, "problems": problems}


def _records(ctx: Context, problems: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The readable records and {node: why} of the others: one record that does not read is
    reported, the others are shown."""
    from nova_ha.lib import state

    try:
        records, bad = ctx.store().readable()
    except state.StateError as err:
        problems.append(f"cluster records: {err}")
        return {}, {}
    problems += [
        f"the record of {node} does not read ({why}); 'nova-ha reset {node}' replaces it"
        for node, why in bad.items()
    ]
    return records, bad


def _nova_facts(ctx: Context, problems: list[str]) -> tuple[list[Any] | None, list[Any] | None]:
    """Nova's compute services and every server; None for what Nova did not give."""
    from nova_ha.openstack.transport import Deadline

    services = servers = None
    try:
        nova = ctx.nova()
        deadline = Deadline(ctx.parsed.settings.openstack.api_timeout * 3)
        services = nova.services(deadline)
        servers = nova.all_servers(deadline)
    except NovaHaError as err:  # no usable parameters (CliError), or Nova's
        problems.append(f"Nova: {err}")
    return services, servers


# ---- one row per host ---------------------------------------------------------------------------


def build_rows(
    records: dict[str, Any],
    pcmk: dict[str, dict] | None,
    services: list[Any] | None,
    servers: list[Any] | None,
    powers: dict[str, str],
    parsed: params.Parsed,
    now: float | None = None,
) -> list[dict[str, Any]]:
    """One row per compute host, from data fetched once per source."""
    now = time.time() if now is None else now
    nova_host, svc_by_node = _compute_hosts(records, pcmk, services, parsed.settings.naming)
    counts = None if servers is None else _servers_by_host(servers)
    total = len(services) if services else None
    rows = []
    for node in sorted(nova_host):
        host, rec = nova_host[node], records.get(node)
        row: dict[str, Any] = {"node": node, "nova_host": host}
        row.update(_pacemaker_fields(pcmk, node, rec))
        row["power"] = powers.get(node)
        row["nova"] = _service_fields(svc_by_node.get(node))
        if counts is None:
            row["servers"] = None
        else:
            statuses = counts.get(host, {})
            row["servers"] = {"total": sum(statuses.values()), "by_status": statuses}
        row.update(_record_fields(records, node, parsed.settings.evacuation, total, now))
        rows.append(row)
    return rows


def _compute_hosts(
    records: dict[str, Any],
    pcmk: dict[str, dict] | None,
    services: list[Any] | None,
    naming: params.HostNaming,
) -> tuple[dict[str, str], dict[str, Any]]:
    """{node: Nova host} of every compute host (recorded, known to Nova, or a Pacemaker remote
    node), and {node: its nova-compute service}."""
    nova_host = {node: rec.service_host or naming.nova_host(node) for node, rec in records.items()}
    by_host = {h: n for n, h in nova_host.items()}
    svc_by_node: dict[str, Any] = {}
    for svc in services or []:
        node = by_host.get(svc.host) or naming.node_for(svc.host)
        svc_by_node[node] = svc
        nova_host.setdefault(node, svc.host)
    for node, info in (pcmk or {}).items():
        if info.get("type") == "remote" or node in svc_by_node:
            nova_host.setdefault(node, naming.nova_host(node))
    return nova_host, svc_by_node


def _servers_by_host(servers: list[Any]) -> dict[str, dict[str, int]]:
    """{Nova host: {server status: count}} of openstack.views.Server."""
    counts: dict[str, dict[str, int]] = {}
    for server in servers:
        if server.host:
            statuses = counts.setdefault(server.host, {})
            status = server.status or "?"
            statuses[status] = statuses.get(status, 0) + 1
    return counts


def _pacemaker_fields(pcmk: dict[str, dict] | None, node: str, rec: Any) -> dict[str, Any]:
    if pcmk is None:
        return {"pacemaker": "unknown"}
    info = pcmk.get(node)
    state = info["state"] if info else "unknown"
    if (
        info
        and info["state"] == "offline"
        and rec is not None
        and rec.state in lifecycle.POWERED_OFF
    ):
        state = "fenced"
    return {"pacemaker": state, "last_fenced": info.get("last_fenced") if info else None}


def _service_fields(svc: Any) -> dict[str, Any] | None:
    if svc is None:
        return None
    return {
        "state": svc.state,
        "status": svc.status,
        "forced_down": svc.forced_down,
        "disabled_reason": svc.disabled_reason,
    }


def _record_fields(
    records: dict[str, Any],
    node: str,
    evacuation: params.EvacuationSettings,
    total: int | None,
    now: float,
) -> dict[str, Any]:
    """The record's fields, and whether the mass-failure guard holds the host (and why)."""
    from nova_ha.lib import guard

    rec = records.get(node)
    if rec is None:
        return {"record": None, "held": False}
    fields: dict[str, Any] = {
        "record": {
            "state": rec.state,
            "since": rec.since,
            "lease_owner": rec.lease_owner,
            "lease_expires": rec.lease_expires,
            "lease_live": rec.lease_live(now),
            "found": rec.found,
            "evacuated": rec.evacuated,
            "failed": rec.failed,
            "mode": rec.mode,
            "instance_recoveries": rec.instance_recoveries,
        }
    }
    verdict = guard.check(records, evacuation, node, total_hosts=total)
    fields["held"] = verdict.blocked and rec.state in lifecycle.INCIDENT
    if fields["held"]:
        fields["guard"] = verdict.as_dict()
    return fields


# ---- the table ----------------------------------------------------------------------------------


def render_status(data: dict[str, Any], colour: bool, now: float | None = None) -> str:
    now = time.time() if now is None else now
    rows = data["hosts"]
    with_power = any(r.get("power") for r in rows)
    header = (
        ["NODE", "PACEMAKER"]
        + (["POWER"] if with_power else [])
        + ["NOVA", "SERVERS", "NOVA-HA", "SINCE", "LEASE", "FOUND/EVAC/FAIL", "RESTARTED"]
    )
    lines = [_status_line(row, with_power, now) for row in rows]
    out = (
        [table(header, [cells for cells, _ in lines], colour, [tones for _, tones in lines])]
        if rows
        else ["no compute host found"]
    )
    if any(r.get("held") for r in rows):
        out.append(
            paint(
                "HELD: the mass-failure guard stopped automatic evacuation of these "
                "hosts; decide with 'nova-ha evacuate HOST' or 'nova-ha reset HOST'",
                "red",
                colour,
            )
        )
    for problem in data["problems"]:
        out.append(paint(f"note: {escaped(problem)}", "yellow", colour))
    return "\n".join(out)


def _status_line(
    row: dict[str, Any], with_power: bool, now: float
) -> tuple[list[str], list[str | None]]:
    """A row's cells and their colours."""
    rec = row.get("record") or {}
    power = row.get("power")
    node = row["node"] + (f" ({row['nova_host']})" if row["nova_host"] != row["node"] else "")
    cells = (
        [node, row["pacemaker"]]
        + ([power or "-"] if with_power else [])
        + [_nova_cell(row.get("nova")), _servers_cell(row.get("servers"))]
        + _record_cells(rec, row.get("held", False), now)
    )
    tones = (
        [None, tone_of(row["pacemaker"])]
        + ([tone_of(power or "")] if with_power else [])
        + [
            _nova_tone(row.get("nova")),
            None,
            "red" if row.get("held") else tone_of(rec.get("state", "")),
            None,
            "yellow" if rec.get("lease_live") else None,
            "red" if rec.get("failed") else None,
            None,
        ]
    )
    return cells, tones


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


def _servers_cell(servers: dict[str, Any] | None) -> str:
    """'12 (2 ERROR, 1 SHUTOFF)': the total, and the ones not ACTIVE by status."""
    if servers is None:
        return "?"
    others = {k: v for k, v in servers["by_status"].items() if k != "ACTIVE"}
    if not others:
        return str(servers["total"])
    return f"{servers['total']} (" + ", ".join(f"{v} {k}" for k, v in sorted(others.items())) + ")"


def _record_cells(rec: dict[str, Any], held: bool, now: float) -> list[str]:
    """NOVA-HA, SINCE, LEASE, FOUND/EVAC/FAIL and RESTARTED (guests the instance monitor
    restarted on the host)."""
    since = rec.get("since")
    lease = "-"
    if rec.get("lease_owner"):
        lease = rec["lease_owner"] + ("" if rec.get("lease_live") else " (expired)")
    counts = (
        "-"
        if not (rec.get("found") or rec.get("evacuated") or rec.get("failed"))
        else f"{rec['found']}/{rec['evacuated']}/{rec['failed']}"
    )
    return [
        rec.get("state", "-") + (" HELD" if held else ""),
        f"{since} ({age(since, now)})" if since else "-",
        lease,
        counts,
        str(rec.get("instance_recoveries") or "-"),
    ]


# ---- the command --------------------------------------------------------------------------------


def run(ctx: Context, args: argparse.Namespace) -> int:
    data = collect_status(ctx, with_power=not args.no_power)
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(render_status(data, use_colour(args.color, sys.stdout)))
    return EXIT_OK


COMMAND = Command(
    "status",
    "every compute host: Pacemaker, power, Nova, nova-ha record",
    options=(
        JSON_OUTPUT,
        option("--no-power", action="store_true", help="do not ask the BMCs"),
    ),
    on_cluster=run,
)
