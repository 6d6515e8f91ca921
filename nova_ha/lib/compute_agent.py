"""What the NovaCompute OCF agent does on a compute node (the rejoin path).

start, for a host that was fenced:
1. wait while its evacuations run: Nova's evacuation migrations from this host not yet in a
   terminal state, or its cluster record still 'fenced'/'evacuating' (nova-compute deletes
   local copies of instances it believes were evacuated when it starts: starting before the
   evacuations finished would race them);
2. start nova-compute;
3. wait for its heartbeat in Nova (a forced-down service reads 'down' whatever it does, so
   the heartbeat is the service's updated_at moving); on start it cleans up the evacuated
   servers and turns their migrations from 'done' to 'completed';
4. lift forced_down (Nova refuses while 'done' evacuation migrations remain: retried) and
   enable the service, only if nova-ha disabled it (an operator's own disable stays);
5. record the host 'ok' with a 'rejoined' event.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from nova_ha.lib import clock, lifecycle, log, ocf_proto, params, service
from nova_ha.lib.lifecycle import Event, HostState, RejoinAction, RejoinStep
from nova_ha.lib.ocf_proto import OcfError, OcfRequest

if TYPE_CHECKING:
    from nova_ha.lib.state import StateStore
    from nova_ha.openstack.compute import Nova
    from nova_ha.openstack.transport import Deadline
    from nova_ha.openstack.views import Service

LOG = log.get("compute")
OURS = "nova-ha"  # prefix of the disabled_reason nova-ha writes
RECHECK = 3.0  # seconds between safety checks while waiting

_CODES = {"configured": ocf_proto.OCF_ERR_CONFIGURED, "installed": ocf_proto.OCF_ERR_INSTALLED}


def service_problems(
    request: OcfRequest, roles: tuple[str, ...] = service.ROLES
) -> list[tuple[int, str]]:
    """What makes the service unusable for `roles` (start, stop, status): its commands or
    unit. Nothing else is needed to check or stop nova-compute."""
    run = request.params.settings.compute.runner
    return [
        (_CODES[kind], message)
        for kind, message in service.problems(run.start, run.stop, run.status, run.unit, roles)
    ]


def validate(request: OcfRequest) -> list[tuple[int, str]]:
    """Everything, for start and validate-all. stop and monitor are 'unchecked': they get
    these as warnings and use only service_problems (a rotated-away os_cacert, a bad
    notify_url or missing OpenStack credentials never keep them from the truth)."""
    parsed = request.params
    found = service_problems(request)
    # Nova is needed to know when a rejoin is safe: without credentials nothing is started.
    found += [
        (ocf_proto.OCF_ERR_CONFIGURED, p)
        for p in params.check_openstack(parsed) + params.check_notify(parsed)
    ]
    return found


def _nova_host(request: OcfRequest) -> str:
    return request.params.settings.naming.nova_host(request.node)


def _store() -> StateStore | None:
    from nova_ha.lib import state

    return state.CibStateStore()


def unsafe_reason(
    nova: Nova, deadline: Deadline, store: StateStore | None, node: str, host: str
) -> str | None:
    """Why nova-compute must not start yet on this host, or None when it is safe: the
    lifecycle decides, from the record, then (only if it allows a start) from Nova."""
    from nova_ha.lib import state
    from nova_ha.openstack.views import newest_per_server

    record, unreadable = None, None
    if store is not None:
        try:
            record = store.get(node)
        except state.StateError as err:
            unreadable = str(err)
    decision = lifecycle.compute_start(record, host, unreadable=unreadable)
    if decision.action is RejoinAction.ASK_NOVA:
        # Per server its newest evacuation only: one whose rebuild died with its target (a
        # second failed host) stays 'running' in Nova for ever, and was asked again since.
        newest = newest_per_server(nova.evacuation_migrations(deadline, source_host=host))
        unfinished = [m.server_id for m in newest.values() if not m.finished]
        running = sum(1 for server_id in unfinished if _moving(nova, deadline, server_id, host))
        decision = lifecycle.compute_start(record, host, evacuations_running=running)
    return None if decision.action is RejoinAction.START else decision.reason


def _moving(nova: Nova, deadline: Deadline, server_id: str, host: str) -> bool:
    """Is the server of an unfinished migration still being moved: on this host yet, or
    with a task? One ACTIVE elsewhere, task done, has arrived whatever its migration says
    (Nova can leave one 'accepted' after an evacuation asked again)."""
    from nova_ha.openstack.exceptions import NotFound

    try:
        server = nova.server(deadline, server_id)
    except NotFound:
        return False  # deleted: nothing left to move
    return server.host == host or bool(server.task_state)


def _wait_until_safe(
    nova: Nova, deadline: Deadline, store: StateStore | None, node: str, host: str, until: float
) -> None:
    from nova_ha.openstack.exceptions import NovaError

    reason: str | None = "not checked"
    while True:
        try:
            reason = unsafe_reason(nova, deadline, store, node, host)
        except NovaError as err:
            reason = f"cannot ask Nova ({err})"
        if reason is None:
            return
        if time.monotonic() >= until:
            raise OcfError(
                ocf_proto.OCF_ERR_GENERIC, f"not starting nova-compute on {host}: {reason}"
            )
        LOG.info("waiting before starting nova-compute on %s: %s", host, reason)
        time.sleep(RECHECK)


def _rejoin(
    nova: Nova, deadline: Deadline, host: str, baseline: str | None, fenced_by_us: bool
) -> str:
    """Wait for the heartbeat, then lift nova-ha's force-down and disable, as the lifecycle
    decides at each step. Returns the note for the record."""
    from nova_ha.openstack.exceptions import BadRequest

    while True:
        svc = nova.service(deadline, host)
        step = lifecycle.rejoin_step(_facts(svc, baseline), fenced_by_us)
        if step.action is RejoinStep.ENABLE:
            nova.update_service(deadline, svc, enable=True)
            continue
        if step.action in (RejoinStep.DONE, RejoinStep.LEAVE):
            return step.reason
        if step.action is RejoinStep.LIFT:
            try:
                nova.update_service(deadline, svc, forced_down=False)
                LOG.info("lifted forced_down of %s", host)
                continue
            except BadRequest as err:  # 'done' evacuations remain: the compute will
                # complete them shortly
                LOG.info("Nova does not let %s up yet: %s", host, err)
        if deadline.expired():
            raise OcfError(
                ocf_proto.OCF_ERR_GENERIC,
                f"nova-compute on {host} started but Nova does not report it up",
            )
        time.sleep(1.0)


def _facts(svc: Service, baseline: str | None) -> lifecycle.ComputeService:
    """What the rejoin decides on, from Nova's view of the service."""
    return lifecycle.ComputeService(
        up=svc.state == "up",
        forced_down=svc.forced_down,
        disabled=svc.status == "disabled",
        disabled_by_nova_ha=(svc.disabled_reason or "").startswith(OURS),
        beating=svc.updated_at is not None and svc.updated_at != baseline,
    )


def _service(request: OcfRequest) -> service.Service:
    run = request.params.settings.compute.runner
    return service.make(run.start, run.stop, run.status, run.unit)


def _no_systemd(request: OcfRequest) -> bool:
    """Set up for systemd on a node without it: no unit of nova-compute can run here."""
    run = request.params.settings.compute.runner
    return not service.uses_commands(run.start, run.stop, run.status) and service.systemd_absent()


def _status_checked(request: OcfRequest, failure: str) -> service.Service:
    """The service, once its status check is usable; else the failure, with the reason."""
    blocking = service_problems(request, ("status",))
    if blocking:
        code, reason = blocking[0]
        raise OcfError(code, failure.format(reason))
    return _service(request)


def monitor(request: OcfRequest) -> int:
    """Never changes anything: the process or unit, and (optionally) Nova's view.

    Only the status check is needed: without it the answer is an error naming the
    parameter, never 'not running' (nova-compute may well run)."""
    if _no_systemd(request):
        return ocf_proto.OCF_NOT_RUNNING
    svc = _status_checked(request, "cannot tell whether nova-compute runs: {}")
    try:
        running = svc.running()
    except service.ServiceError as err:
        raise OcfError(
            ocf_proto.OCF_ERR_GENERIC, f"cannot tell whether nova-compute runs: {err}"
        ) from None
    if not running:
        return ocf_proto.OCF_NOT_RUNNING
    if request.params.settings.compute.check_nova_service and not request.is_probe:
        _check_up_in_nova(request)
    return ocf_proto.OCF_SUCCESS


def _check_up_in_nova(request: OcfRequest) -> None:
    """check_nova_service: OcfError unless Nova reports the host's nova-compute up."""
    from nova_ha.openstack.compute import Nova
    from nova_ha.openstack.exceptions import NovaError
    from nova_ha.openstack.transport import Deadline

    host = _nova_host(request)
    unusable = params.check_openstack(request.params)
    if unusable:
        raise OcfError(ocf_proto.OCF_ERR_GENERIC, f"cannot ask Nova about {host}: {unusable[0]}")
    try:
        nova_svc = Nova.from_params(request.params).service(Deadline(request.timeout * 0.8), host)
    except NovaError as err:
        raise OcfError(ocf_proto.OCF_ERR_GENERIC, f"cannot ask Nova about {host}: {err}") from None
    if nova_svc.state != "up":
        raise OcfError(
            ocf_proto.OCF_ERR_GENERIC, f"Nova reports nova-compute on {host} {nova_svc.state}"
        )


def start(request: OcfRequest) -> int:
    from nova_ha.openstack.compute import Nova
    from nova_ha.openstack.exceptions import NovaError
    from nova_ha.openstack.transport import Deadline

    svc = _service(request)
    if svc.running():
        return ocf_proto.OCF_SUCCESS
    node, host = request.node, _nova_host(request)
    budget = request.timeout * 0.95
    deadline = Deadline(budget)
    started = time.monotonic()
    store = _store()
    try:
        nova = Nova.from_params(request.params)
        wait = min(request.params.settings.compute.start_wait, budget * 0.6)
        _wait_until_safe(nova, deadline, store, node, host, started + wait)
        before = nova.service(deadline, host)
        record = store.get(node) if store is not None else None
        fenced_by_us = record is not None and record.state in lifecycle.POWERED_OFF
        svc.start(max(deadline.remaining() / 2, 5.0))
        note = _rejoin(nova, deadline, host, before.updated_at, fenced_by_us)
    except service.ServiceError as err:
        raise OcfError(ocf_proto.OCF_ERR_GENERIC, f"nova-compute did not start: {err}") from None
    except NovaError as err:
        raise OcfError(ocf_proto.OCF_ERR_GENERIC, f"cannot check {host} in Nova: {err}") from None
    if fenced_by_us:
        _record_rejoin(request, store, host, note)
    LOG.info("nova-compute on %s started (%s)", host, note)
    return ocf_proto.OCF_SUCCESS


def _record_rejoin(request: OcfRequest, store: StateStore | None, host: str, note: str) -> None:
    """The end of the incident: the record back to ok with a 'rejoined' event, announced."""
    from nova_ha.lib import notify, recovery

    node = request.node
    recovery.record(store, lambda s: s.mark(node, HostState.OK, Event.REJOINED, note), "rejoin")
    notify.send(
        request.params.settings.notify, Event.REJOINED, node, params.COMPUTE, host=host, detail=note
    )


def stop(request: OcfRequest) -> int:
    """Success only once nova-compute does not run: stopped, or checked not running.

    Needs the status check and the stop command (or systemctl), nothing else: another
    parameter's problem is a warning. Without the status check, or nova-compute running
    without a usable stop command, stop fails with the reason (Pacemaker then recovers the
    node) rather than claim a stop that did not happen."""
    if request.params.settings.compute.disable_on_stop:
        _disable_on_stop(request)
    if _no_systemd(request):
        return ocf_proto.OCF_SUCCESS
    svc = _status_checked(request, "cannot stop nova-compute: cannot tell whether it runs ({})")
    try:
        if not svc.running():
            return ocf_proto.OCF_SUCCESS
        blocking = service_problems(request, ("stop",))
        if blocking:
            code, reason = blocking[0]
            raise OcfError(code, f"nova-compute runs and cannot be stopped: {reason}")
        svc.stop(request.timeout * 0.9)
    except service.ServiceError as err:
        raise OcfError(ocf_proto.OCF_ERR_GENERIC, f"nova-compute did not stop: {err}") from None
    return ocf_proto.OCF_SUCCESS


def _disable_on_stop(request: OcfRequest) -> None:
    """disable_on_stop=true: no new servers are scheduled here while the resource is stopped
    (best effort: a stop must not fail because Nova is unreachable)."""
    from nova_ha.openstack.compute import Nova
    from nova_ha.openstack.exceptions import NovaError
    from nova_ha.openstack.transport import Deadline

    host = _nova_host(request)
    unusable = params.check_openstack(request.params)
    if unusable:
        LOG.warning("not disabling %s in Nova on stop: %s", host, unusable[0])
        return
    try:
        nova = Nova.from_params(request.params)
        deadline = Deadline(min(request.timeout * 0.3, 30))
        svc = nova.service(deadline, host)
        if svc.status != "disabled":
            nova.update_service(
                deadline,
                svc,
                disabled_reason=f"{OURS}: resource stopped at {clock.iso_utc(time.time())}",
            )
    except NovaError as err:
        LOG.warning("could not disable %s in Nova on stop: %s", host, err)
    except Exception as err:  # best effort: nothing here may keep nova-compute running
        LOG.warning("could not disable %s in Nova on stop: %s", host, type(err).__name__)


SPEC = ocf_proto.service_agent_spec(params.COMPUTE, (600, 120, 30), start, stop, monitor, validate)
