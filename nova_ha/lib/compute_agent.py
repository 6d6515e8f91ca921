"""What the NovaCompute OCF agent does on a compute node (the rejoin path)."""

from __future__ import annotations

from nova_ha import __version__
from nova_ha.lib import ocf_proto, params, service
from nova_ha.lib.ocf_proto import OcfError, OcfRequest

ACTIONS = [
    ocf_proto.OcfAction("start", 600),
    ocf_proto.OcfAction("stop", 120),
    ocf_proto.OcfAction("monitor", 30, interval=10, depth=0),
    ocf_proto.OcfAction("validate-all", 20),
    ocf_proto.OcfAction("meta-data", 5),
]

_CODES = {"configured": ocf_proto.OCF_ERR_CONFIGURED, "installed": ocf_proto.OCF_ERR_INSTALLED}


def validate(request: OcfRequest) -> list[tuple[int, str]]:
    parsed = request.params
    found = [(_CODES[kind], message) for kind, message in service.problems(
        parsed.get("start_command"), parsed.get("stop_command"), parsed.get("status_command"),
        parsed.get("systemd_unit"))]
    if parsed.get("check_nova_service"):
        found += [(ocf_proto.OCF_ERR_CONFIGURED, p) for p in params.check_openstack(parsed)]
    return found


def _service(request: OcfRequest) -> service.Service:
    parsed = request.params
    return service.make(parsed.get("start_command"), parsed.get("stop_command"),
                        parsed.get("status_command"), parsed.get("systemd_unit"))


def monitor(request: OcfRequest) -> int:
    svc = _service(request)
    try:
        running = svc.running()
    except service.ServiceError as err:
        raise OcfError(ocf_proto.OCF_ERR_GENERIC, f"cannot tell whether nova-compute runs: "
                                                   f"{err}") from None
    return ocf_proto.OCF_SUCCESS if running else ocf_proto.OCF_NOT_RUNNING


def start(request: OcfRequest) -> int:
    svc = _service(request)
    if svc.running():
        return ocf_proto.OCF_SUCCESS
    try:
        svc.start(request.timeout * 0.9)
    except service.ServiceError as err:
        raise OcfError(ocf_proto.OCF_ERR_GENERIC, f"nova-compute did not start: {err}") from None
    return ocf_proto.OCF_SUCCESS


def stop(request: OcfRequest) -> int:
    svc = _service(request)
    if not svc.running():
        return ocf_proto.OCF_SUCCESS
    try:
        svc.stop(request.timeout * 0.9)
    except service.ServiceError as err:
        raise OcfError(ocf_proto.OCF_ERR_GENERIC, f"nova-compute did not stop: {err}") from None
    return ocf_proto.OCF_SUCCESS


HANDLERS = {"start": start, "stop": stop, "monitor": monitor}


SHORTDESC = "Runs nova-compute and lets a fenced compute host rejoin safely"
LONGDESC = (
    "NovaCompute runs nova-compute on an OpenStack compute node (a pacemaker-remote node; "
    "clone it over the compute nodes). After the host was fenced by fence_nova_evacuate, "
    "start waits until the evacuations from this host have finished, starts nova-compute, "
    "waits until Nova reports the service up, and only then lifts the forced-down flag and "
    "re-enables the service if nova-ha disabled it. nova-compute is run by its systemd unit, "
    "or by start_command, stop_command and status_command."
)

SPEC = ocf_proto.OcfAgentSpec(
    name=params.COMPUTE,
    version=__version__,
    shortdesc=SHORTDESC,
    longdesc=LONGDESC,
    actions=ACTIONS,
    handlers=HANDLERS,
    validate=validate,
)
