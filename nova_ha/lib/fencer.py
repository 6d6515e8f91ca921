"""What fence_nova_evacuate does for each action (the life of a failed host, steps 1-3)."""

from __future__ import annotations

from nova_ha.lib import fence_proto, params
from nova_ha.lib.fence_proto import FenceRequest

# Actions that act on one host and so need 'port'.
_TARGETED = ("on", "off", "reboot", "status")


def validate(request: FenceRequest) -> list[str]:
    parsed = request.params
    problems = params.check_bmc(parsed) + params.check_evacuation(parsed)
    if request.action not in ("status", "on") or not params.has_bmc(parsed):
        problems += params.check_openstack(parsed)
    if request.action in _TARGETED and not parsed.get("port"):
        problems.append(f"parameter 'port' (the node to fence) is required for "
                        f"'{request.action}'")
    if request.action in ("status", "on") and not params.has_bmc(parsed):
        problems.append(f"'{request.action}' needs BMC parameters (ip, username, password); "
                        "without them this device only works in a fencing topology")
    return problems


HANDLERS: dict = {}

SHORTDESC = "Fence agent that powers off a Nova compute host and evacuates its servers"
LONGDESC = (
    "fence_nova_evacuate fences an OpenStack Nova compute host for Pacemaker: it powers the "
    "host off over IPMI and waits until the BMC confirms it, forces the host's nova-compute "
    "service down and disables it, records the host as fenced in the cluster, and evacuates "
    "its servers in parallel (at most max_parallel at once), following each to a terminal "
    "state. It never asks Nova to evacuate before the power-off is confirmed. Without BMC "
    "parameters it does no power action: use it then only in a fencing-topology level after a "
    "power device such as fence_ipmilan. Put OpenStack credentials in clouds.yaml (os_cloud), "
    "not in the CIB."
)

SPEC = fence_proto.FenceAgentSpec(
    name=params.FENCE,
    shortdesc=SHORTDESC,
    longdesc=LONGDESC,
    vendorurl="https://docs.openstack.org/nova/latest/admin/evacuate.html",
    handlers=HANDLERS,
    validate=validate,
)
