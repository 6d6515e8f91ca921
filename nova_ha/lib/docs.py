"""Man pages and Markdown parameter tables, rendered from the parameter table."""

from __future__ import annotations

import datetime
from typing import Any

from nova_ha.lib import params

# xml.sax.saxutils would do, but it imports urllib.request: 25 ms of every agent start-up.
_XML_ENTITIES = str.maketrans(
    {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&apos;"}
)


def xml_escape(text: str) -> str:
    return text.translate(_XML_ENTITIES)


def xml_attr(text: str) -> str:
    return f'"{xml_escape(text)}"'


_GROUP_TITLES = {
    "shared": "Shared settings file",
    "host": "Target host",
    "openstack": "OpenStack (Keystone and Nova)",
    "bmc": "BMC (IPMI over LAN)",
    "evacuation": "Evacuation",
    "compute": "nova-compute service",
    "general": "General",
}


def _troff(text: str) -> str:
    text = text.replace("\\", "\\\\").replace("-", "\\-")
    return "\n".join(
        ("\\&" + line) if line.startswith((".", "'")) else line for line in text.splitlines()
    )


def _option_label(param: params.Param, fence: bool) -> str:
    if not fence:
        return param.name
    label = (f"-{param.getopt}, " if param.getopt else "") + f"--{param.longopt}"
    return label if param.is_flag() else f"{label}={param.metavar or param.type}"


def man_page(agent: str, shortdesc: str, longdesc: str, fence: bool) -> str:
    """troff man page (section 8) for an agent."""
    date = datetime.date.today().isoformat()
    out = [
        f'.TH {agent.upper()} 8 "{date}" "nova-ha" "System Administration"',
        ".SH NAME",
        f"{agent} \\- {_troff(shortdesc)}",
        ".SH DESCRIPTION",
        _troff(longdesc),
    ]
    if fence:
        out += [
            ".SH SYNOPSIS",
            f".B {agent}",
            "[\\fIOPTIONS\\fR]",
            ".PP",
            "Pacemaker passes parameters on standard input as name=value lines; "
            "on the command line they are long options (--name=value).",
        ]
    else:
        out += [
            ".SH SYNOPSIS",
            "Run by Pacemaker with parameters in OCF_RESKEY_<name> "
            "environment variables; actions: start, stop, monitor, validate\\-all, "
            "meta\\-data.",
        ]
    out += _parameters(agent, fence)
    out += [".SH SEE ALSO", "nova\\-ha(8), fence_ipmilan(8), pacemaker\\-fenced(7)"]
    return "\n".join(out)


def _parameters(agent: str, fence: bool) -> list[str]:
    """The PARAMETERS section of an agent's man page, by group."""
    groups: dict[str, list[params.Param]] = {}
    for param in params.for_agent(agent):
        groups.setdefault(param.group, []).append(param)
    out = [".SH PARAMETERS"]
    for group, members in groups.items():
        out += [f".SS {_GROUP_TITLES.get(group, group)}"]
        for param in members:
            out += [
                ".TP",
                f".B {_troff(_option_label(param, fence))}",
                _troff(param.short)
                + (f" (default: {_troff(param.default)})" if param.default else ""),
            ]
            if param.long:
                out += [".br", _troff(param.long)]
            if param.aliases:
                out += [".br", "Deprecated names: " + _troff(", ".join(param.aliases)) + "."]
    return out


def cli_man_page(parser: Any) -> str:
    """troff man page (section 8) of the nova-ha command, from its argparse parser and the
    parameter table (the parameters it reads from the CIB or its config file)."""
    date = datetime.date.today().isoformat()
    out = [
        f'.TH NOVA-HA 8 "{date}" "nova-ha" "System Administration"',
        ".SH NAME",
        "nova\\-ha \\- operator tools of nova-ha (instance HA for OpenStack Nova)",
        ".SH SYNOPSIS",
        ".B nova\\-ha",
        "\\fICOMMAND\\fR [\\fIOPTIONS\\fR]",
        ".SH DESCRIPTION",
        _troff(parser.description or ""),
        ".PP",
        _troff(parser.epilog or ""),
        ".SH COMMANDS",
    ]
    subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    helps = {a.dest: a.help for a in subparsers._choices_actions}
    for name, sub in subparsers.choices.items():
        out += [".TP", f".B {_troff(name)}", _troff(helps.get(name) or "")]
        for action in sub._actions:
            if not action.option_strings or action.dest == "help":
                continue
            out += [
                ".br",
                f"\\fB{_troff(', '.join(action.option_strings))}\\fR: " + _troff(action.help or ""),
            ]
    out.append(".SH PARAMETERS")
    for param in params.for_agent(params.CLI):
        out += [
            ".TP",
            f".B {_troff(param.name)}",
            _troff(param.short) + (f" (default: {_troff(param.default)})" if param.default else ""),
        ]
    out += [".SH SEE ALSO", "fence_nova_evacuate(8), NovaCompute(7), NovaEvacuate(7)"]
    return "\n".join(out)


def markdown_table(agent: str) -> str:
    """Markdown table of an agent's parameters, for the README."""
    rows = ["| parameter | type | default | description |", "|---|---|---|---|"]
    for param in params.for_agent(agent):
        name = f"`{param.name}`" + (
            f" (old: {', '.join(f'`{a}`' for a in param.aliases)})" if param.aliases else ""
        )
        kind = param.type + (f": {'/'.join(param.choices)}" if param.choices else "")
        default = f"`{param.default}`" if param.default else ""
        secret = " Secret." if param.secret else ""
        rows.append(f"| {name} | {kind} | {default} | {param.short}.{secret} |")
    return "\n".join(rows)


def parameters_page() -> str:
    """docs/parameters.md: every agent's parameter table (kept in sync by a test)."""
    parts = [
        "# Parameters",
        "",
        "Generated from `nova_ha/lib/params.py` by `nova-ha params --all`; do not edit.",
        "",
    ]
    for agent in (params.FENCE, params.COMPUTE, params.EVACUATE, params.INSTANCE):
        parts += [f"## {agent}", "", markdown_table(agent), ""]
    return "\n".join(parts)
