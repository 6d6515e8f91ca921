"""The NovaInstanceHA OCF agent: starts, monitors and stops the instance monitor.

The monitor (nova_ha.instance.service) runs beside Pacemaker: start spawns it detached and
returns once it is alive (a second or two), stop ends it by PID, monitor checks that it runs
and touched its liveness file lately. The process handling is daemon_agent's, as for
NovaEvacuate. libvirt is never imported here: only the monitor process connects.
"""

from __future__ import annotations

from nova_ha.lib import daemon_agent, ocf_proto, params
from nova_ha.lib.ocf_proto import OcfRequest

MODULE = "nova_ha.instance"


def validate(request: OcfRequest) -> list[tuple[int, str]]:
    parsed = request.params
    found = [
        (ocf_proto.OCF_ERR_CONFIGURED, problem)
        for problem in params.check_openstack(parsed) + params.check_notify(parsed)
    ]
    if parsed.settings.evacuation.mode not in ("all", "tagged"):
        found.append(
            (
                ocf_proto.OCF_ERR_CONFIGURED,
                "parameter 'evacuate': NovaInstanceHA recovers 'all' or 'tagged' servers",
            )
        )
    return found


def _stale_after(request: OcfRequest) -> float:
    """The monitor touches its liveness file every few seconds, a heartbeat round
    (bounded by heartbeat_timeout per ping) included."""
    instance = request.params.settings.instance
    return max(30.0, 3 * instance.heartbeat_interval + 10 * instance.heartbeat_timeout)


def _monitor_env(request: OcfRequest) -> dict[str, str]:
    """The evacuation service's environment rules (no OCF_RESKEY_*: the parameters,
    secrets included, come on stdin), and the node's name as Pacemaker knows it."""
    from nova_ha.instance.service import NODE_ENV
    from nova_ha.lib import evacuation_service

    return {**evacuation_service._worker_env(), NODE_ENV: request.node}


MONITOR = daemon_agent.Daemon(
    params.INSTANCE, "instance monitor", MODULE, _monitor_env, _stale_after
)
SPEC = daemon_agent.agent_spec(MONITOR, (20, 30, 20), validate)
