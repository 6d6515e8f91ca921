"""The NovaEvacuate OCF agent: starts, monitors and stops the evacuation service.

The evacuations themselves run in the service (nova_ha.lib.evacuation_service), beside
Pacemaker: an action of this agent never waits for one, so it never holds up a transition
(a second failed host is fenced at once). The service's process handling is
daemon_agent's: a process group of its own, which stop ends whole (workers included), so
nothing outlives the resource.
"""

from __future__ import annotations

from nova_ha.lib import daemon_agent, ocf_proto, params
from nova_ha.lib.ocf_proto import OcfRequest

SERVICE_MODULE = "nova_ha.lib.evacuation_service"


def validate(request: OcfRequest) -> list[tuple[int, str]]:
    parsed = request.params
    found = [
        (ocf_proto.OCF_ERR_CONFIGURED, p)
        for p in params.check_openstack(parsed)
        + params.check_evacuation(parsed)
        + params.check_notify(parsed)
    ]
    if parsed.settings.evacuation.mode not in ("all", "tagged"):
        found.append(
            (
                ocf_proto.OCF_ERR_CONFIGURED,
                "parameter 'evacuate': NovaEvacuate "
                "evacuates 'all' or 'tagged' servers of hosts recorded with "
                "evacuate=record",
            )
        )
    return found


def _stale_after(request: OcfRequest) -> float:
    """The service reads the records every watch_interval: older than this, it is stuck."""
    return max(30.0, 10 * request.params.settings.evacuation.watch_interval)


def _service_env(request: OcfRequest) -> dict[str, str]:
    from nova_ha.lib import evacuation_service

    return evacuation_service._worker_env()


SERVICE = daemon_agent.Daemon(
    params.EVACUATE, "evacuation service", SERVICE_MODULE, _service_env, _stale_after
)
SPEC = daemon_agent.agent_spec(SERVICE, (20, 30, 20), validate)
