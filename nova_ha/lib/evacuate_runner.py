"""Evacuate one recorded host now: what a worker of the evacuation service does, and what a
fence action does itself when no cluster record can carry the hand-over.

The precondition is the host's confirmed power-off, proven by its 'fenced' record (the
service) or by the fence action's own BMC call (the fallback).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nova_ha.lib import log, owners, params

if TYPE_CHECKING:
    from nova_ha.lib import evacuation, recovery, state
    from nova_ha.lib.proof import PowerOffConfirmed
    from nova_ha.openstack.compute import Nova
    from nova_ha.openstack.transport import Deadline

LOG = log.get("evacuate")


def evacuate_now(
    parsed: params.Parsed,
    store: state.StateStore | None,
    proof: PowerOffConfirmed,
    nova: Nova | None,
    *,
    runner: str | None,
    lease_owner: str | None = None,
    mode: str | None = None,
    record: state.HostRecord | None = None,
) -> evacuation.Summary | None:
    """Evacuate the powered-off host under its lease. None when another runner holds the
    lease, or when Nova could not be reached (recorded for a retry). `record`: the host's
    record as just read. The reads (servers, earlier requests, the service) start at once,
    side by side: each needs only the proof of the power-off."""
    from nova_ha.lib import evacuation, notify, recovery
    from nova_ha.openstack.compute import Nova
    from nova_ha.openstack.exceptions import NovaError
    from nova_ha.openstack.transport import Deadline

    node, host = proof.node, proof.host
    settings = parsed.settings
    mode = mode or settings.evacuation.mode
    if mode not in ("all", "tagged"):
        LOG.info("%s: evacuate=%s: nothing evacuated here", node, mode)
        return None
    source = params.EVACUATE if lease_owner else params.FENCE
    notifier = notify.Notifier.from_settings(settings.notify, source)
    options = recovery.Options.from_settings(settings.evacuation, mode, notifier)
    deadline = Deadline(settings.evacuation.timeout)
    try:
        nova = nova or Nova.from_params(parsed)
    except NovaError as err:
        LOG.error("evacuation of %s not started: %s", node, err)
        return None
    prefetch = evacuation.Prefetch(
        nova,
        deadline,
        host,
        lambda: recovery.incident_start(store, node, record),
        options.policy.target_policy,
    )
    owner = lease_owner or owners.name(source)
    return _under_lease(nova, store, proof, options, deadline, owner, runner, prefetch, record)


def _under_lease(
    nova: Nova,
    store: state.StateStore | None,
    proof: PowerOffConfirmed,
    options: recovery.Options,
    deadline: Deadline,
    owner: str,
    runner: str | None,
    prefetch: evacuation.Prefetch,
    record: state.HostRecord | None,
) -> evacuation.Summary | None:
    """Take the lease and evacuate. A record of this version is written after the
    force-down; one of an earlier version may not be: made sure of alongside taking the
    lease, not before it."""
    # Over 40 lines only as formatted: each of its nine parameters has a line of its own.
    import concurrent.futures

    from nova_ha.lib import recovery
    from nova_ha.openstack.exceptions import NovaError

    node = proof.node
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        forced = pool.submit(recovery.force_down, nova, deadline, proof)
        lease = recovery.Lease(store, node, owner, deadline.remaining() + recovery.LEASE_MARGIN)
        lease.acquire(record)
        try:
            forced.result()
            if not lease.held:
                LOG.info("%s: %s", node, lease.start.reason)
                return None
            return recovery.evacuate_host(
                nova,
                store,
                proof,
                options,
                deadline,
                owner,
                lease=lease,
                runner=runner,
                prefetch=prefetch,
            )
        except NovaError as err:
            LOG.error("evacuation of %s interrupted: %s", node, err)
            lease.release()
            return None
