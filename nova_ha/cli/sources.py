"""What the CLI reads from the cluster around it: the CIB's resources (parameters and BMCs of
the fence devices), Pacemaker's node view (crm_mon), and each host's power from its BMC."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from typing import Any

from nova_ha.errors import NovaHaError
from nova_ha.lib import params

CIBSECRET_DIR = "/var/lib/pacemaker/lrm/secrets"  # cibsecret keeps "lrm://" values here
POWER_DEVICES = ("fence_nova_evacuate", "fence_ipmilan", "fence_ipmilanplus")
TOOL_TIMEOUT = 15.0


def _tool(argv: list[str], timeout: float) -> subprocess.CompletedProcess[bytes] | str:
    """A Pacemaker tool's run, or why it did not run."""
    try:
        return subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
    except FileNotFoundError:
        return f"{argv[0]} not found"
    except OSError as err:
        return f"{argv[0]}: {err.strerror}"
    except subprocess.TimeoutExpired:
        return f"{argv[0]} gave no answer within {timeout:g} s"


# ---- the CIB's resources ------------------------------------------------------------------------


def cib_resources(timeout: float = TOOL_TIMEOUT) -> Any | None:
    """The CIB's resources section (honours CIB_file), or None when it cannot be read."""
    from lxml import etree

    done = _tool(["cibadmin", "--query", "--scope", "resources"], timeout)
    if isinstance(done, str) or done.returncode != 0:
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
    return [
        p for p in resources.iter("primitive") if p.get("class") == cls and p.get("type") == type_
    ]


def device_params(resources: Any) -> list[tuple[str, str]]:
    """The CLI's parameters from the cluster: NovaEvacuate's first (its evacuate mode is
    one that moves servers), then the fence devices'. Per-device ones (BMC, port) are left."""
    merged: dict[str, str] = {}
    found = _primitives(resources, "ocf", params.EVACUATE) + _primitives(
        resources, "stonith", params.FENCE
    )
    for primitive in found:
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
        return [
            pair.split(":", 1)[0]
            for pair in re.split(r"[\s,;]+", attrs["pcmk_host_map"])
            if ":" in pair
        ]
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


# ---- Pacemaker's view of the nodes --------------------------------------------------------------


def pacemaker_nodes(timeout: float = TOOL_TIMEOUT) -> tuple[dict[str, dict] | None, str]:
    """{node: {state, type, last_fenced}} from crm_mon, or (None, why) when it cannot tell."""
    done = _tool(["crm_mon", "--output-as=xml", "-1", "--fence-history=2"], timeout)
    if isinstance(done, str):
        return None, done
    return parse_crm_mon(done.stdout, done.returncode, done.stderr.decode(errors="replace"))


def parse_crm_mon(xml: bytes, code: int = 0, err: str = "") -> tuple[dict[str, dict] | None, str]:
    """crm_mon's XML as pacemaker_nodes returns it; (None, why) for an error or no cluster."""
    from lxml import etree

    try:
        root = etree.fromstring(xml)
    except etree.XMLSyntaxError:
        first = (err.strip().splitlines() or [f"exit {code}"])[0]
        return None, f"crm_mon: {first}"
    nodes = root.find("nodes")
    if nodes is None:
        errors = [e.text for e in root.iter("error") if e.text]
        return None, "crm_mon: " + (errors[0] if errors else f"no node list (exit {code})")
    if _offline_cib(root):
        return None, "no running cluster: an offline CIB has no node status"
    fenced = _last_fenced(root)
    out: dict[str, dict] = {}
    for node in nodes.findall("node"):
        name = node.get("name")
        if name:
            out[name] = {
                "state": _node_state(node, name in fenced),
                "type": node.get("type"),
                "last_fenced": fenced.get(name),
            }
    return out, ""


def _offline_cib(root: Any) -> bool:
    """crm_mon on a CIB file (no cluster stack, no DC) lists nodes it knows nothing about."""
    stack = root.find("summary/stack")
    dc = root.find("summary/current_dc")
    return (
        stack is not None
        and stack.get("type") == "unknown"
        and dc is not None
        and dc.get("present") == "false"
    )


def _last_fenced(root: Any) -> dict[str, str]:
    """{node: completion time} of each node's newest successful off or reboot."""
    fenced: dict[str, str] = {}
    for event in root.iter("fence_event"):
        target = event.get("target")
        if (
            event.get("status") == "success"
            and event.get("action") in ("off", "reboot")
            and target
            and target not in fenced
        ):  # newest first
            fenced[target] = event.get("completed") or "yes"
    return fenced


def _node_state(node: Any, was_fenced: bool) -> str:
    if node.get("online") == "true":
        state = "online"
        for flag in ("standby", "maintenance"):
            if node.get(flag) == "true":
                state = flag
        return state
    if node.get("unclean") == "true":
        return "unclean"
    return "fenced" if was_fenced else "offline"


# ---- the BMCs ---------------------------------------------------------------------------------


def power_states(devices: dict[str, dict[str, str]], timeout: float = 5.0) -> dict[str, str]:
    """{node: on|off|unknown (why)} from each host's BMC, asked in parallel."""
    if not devices:
        return {}
    import concurrent.futures  # only here: --help and the other commands do without

    with concurrent.futures.ThreadPoolExecutor(min(16, len(devices))) as pool:
        futures = {
            node: pool.submit(_power_of, node, attrs, timeout) for node, attrs in devices.items()
        }
        return {node: future.result() for node, future in futures.items()}


def _power_of(node: str, attrs: dict[str, str], timeout: float) -> str:
    from nova_ha.lib import fence_path, log, power

    device = params.parse(attrs, params.FENCE)
    log.REDACTOR.add(*device.secrets())
    bmc = device.settings.bmc
    try:
        cfg = fence_path.bmc_config(bmc, node)
        with power.Bmc(dataclasses.replace(cfg, connect_timeout=timeout)) as client:
            return client.status()
    except NovaHaError as err:  # the BMC's, its password script's, its parameters'
        return f"unknown ({log.REDACTOR.redact(str(err))[:80]})"
