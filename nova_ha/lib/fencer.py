"""What fence_nova_evacuate does for each action (the life of a failed host, steps 1-3)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from nova_ha.errors import NovaHaError
from nova_ha.lib import fence_proto, log, params
from nova_ha.lib.fence_proto import FenceRequest

if TYPE_CHECKING:
    from nova_ha.lib import power

# The power, Nova, state and evacuation modules are imported by the actions that use them:
# metadata, --help and validate-all must start fast (Pacemaker runs them often).
LOG = log.get("fencer")

# Actions that act on one host and so need 'port'.
_TARGETED = ("on", "off", "reboot", "status")


def validate(request: FenceRequest) -> list[str]:
    parsed = request.params
    problems = (
        params.check_bmc(parsed) + params.check_evacuation(parsed) + params.check_notify(parsed)
    )
    has_bmc = parsed.settings.bmc.configured
    if request.action not in ("status", "on") or not has_bmc:
        problems += params.check_openstack(parsed)
    if request.action in _TARGETED and not parsed.settings.target_node:
        problems.append(f"parameter 'port' (the node to fence) is required for '{request.action}'")
    if request.action in ("status", "on") and not has_bmc:
        problems.append(
            f"'{request.action}' needs BMC parameters (ip, username, password); "
            "without them this device only works in a fencing topology"
        )
    return problems


def fence_off(request: FenceRequest) -> int:
    """The safety work only (fence_path.HostFence); the evacuation is handed over."""
    from nova_ha.lib import fence_path

    return fence_path.HostFence(request.params, request.params.settings.target_node).run()


def fence_reboot(request: FenceRequest) -> int:
    code = fence_off(request)
    bmc = request.params.settings.bmc
    if code != fence_proto.EC_OK or not bmc.configured or not bmc.power_on_after:
        return code
    return fence_on(request)


def _ask_bmc(request: FenceRequest, what: str, call: Callable[[power.Bmc], Any]) -> Any:
    """One BMC operation; None (logged, never a traceback) when it fails."""
    from nova_ha.lib import fence_path

    node = request.params.settings.target_node
    try:
        with fence_path.bmc_for(request.params.settings.bmc, node) as bmc:
            return call(bmc)
    except NovaHaError as err:  # the BMC's, its password script's, its parameters'
        LOG.error("%s of %s failed: %s", what, node, err)
        return None


def fence_on(request: FenceRequest) -> int:
    """Power on only: the host rejoins Nova through NovaCompute once its evacuations are done
    (Nova refuses to un-force a host while 'done' evacuation migrations remain)."""
    took = _ask_bmc(request, "power-on", lambda bmc: bmc.on_and_confirm())
    if took is None:
        return fence_proto.EC_GENERIC_ERROR
    LOG.info("%s powered on (confirmed in %.2fs)", request.params.settings.target_node, took)
    return fence_proto.EC_OK


def fence_status(request: FenceRequest) -> int:
    """0 on, 2 off, 1 when the BMC cannot tell (never 'on' by default)."""
    current = _ask_bmc(request, "reading the power state", lambda bmc: bmc.status())
    if current is None:
        return fence_proto.EC_GENERIC_ERROR
    print(f"Status: {current.upper()}")
    return fence_proto.EC_OK if current == "on" else fence_proto.EC_STATUS_OFF


def _list(request: FenceRequest, with_status: bool) -> int:
    from nova_ha.openstack.compute import Nova
    from nova_ha.openstack.exceptions import NovaError
    from nova_ha.openstack.transport import Deadline

    parsed = request.params
    try:
        nova = Nova.from_params(parsed)
        services = nova.services(Deadline(parsed.settings.openstack.api_timeout * 3))
    except NovaError as err:
        LOG.error("cannot list compute hosts: %s", err)
        return fence_proto.EC_GENERIC_ERROR
    naming = parsed.settings.naming
    for svc in services:
        node = naming.node_for(svc.host)
        up = svc.state == "up" and not svc.forced_down
        # Nova's host names are data: Pacemaker splits this output at line ends, whitespace,
        # ',' and ';' into its dynamic host list, so those are escaped within a field.
        fields = [node, svc.host] + (["on" if up else "off"] if with_status else [])
        print(",".join(log.escape(str(f), field=True) for f in fields))
    return fence_proto.EC_OK


def fence_monitor(request: FenceRequest) -> int:
    """The device works: the BMC answers (when configured) and Keystone gives a token."""
    from nova_ha.lib import fence_path
    from nova_ha.openstack.compute import Nova
    from nova_ha.openstack.transport import Deadline

    parsed = request.params
    settings = parsed.settings
    try:
        # One BMC answers for the device: its own, or the first of its map.
        node = settings.bmc.monitor_node(settings.target_node)
        if settings.bmc.configured:
            with fence_path.bmc_for(settings.bmc, node) as bmc:
                bmc.status()
        nova = Nova.from_params(parsed)
        nova.microversion(Deadline(settings.openstack.api_timeout * 2))
    except NovaHaError as err:  # the BMC's, Nova's, a password script's, a parameter's
        LOG.error("monitor failed: %s", err)
        return fence_proto.EC_GENERIC_ERROR
    return fence_proto.EC_OK


HANDLERS: dict = {
    "off": fence_off,
    "reboot": fence_reboot,
    "on": fence_on,
    "status": fence_status,
    "list": lambda request: _list(request, False),
    "list-status": lambda request: _list(request, True),
    "monitor": fence_monitor,
}

SPEC = fence_proto.FenceAgentSpec(
    name=params.FENCE,
    shortdesc=params.AGENTS[params.FENCE].short,
    longdesc=params.AGENTS[params.FENCE].long,
    vendorurl="https://docs.openstack.org/nova/latest/admin/evacuate.html",
    handlers=HANDLERS,
    validate=validate,
)
