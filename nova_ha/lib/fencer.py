"""What fence_nova_evacuate does for each action (the life of a failed host, steps 1-3)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from nova_ha.lib import fence_proto, log, params
from nova_ha.lib.fence_proto import FenceRequest

if TYPE_CHECKING:
    from nova_ha.lib import evacuation, power, recovery, state
    from nova_ha.lib.nova import Deadline, Nova

# The power, Nova, state and evacuation modules are imported by the actions that use them:
# metadata, --help and validate-all must start fast (Pacemaker runs them often).
LOG = log.get("fencer")

# Actions that act on one host and so need 'port'.
_TARGETED = ("on", "off", "reboot", "status")


def validate(request: FenceRequest) -> list[str]:
    parsed = request.params
    problems = params.check_bmc(parsed) + params.check_evacuation(parsed) + \
        params.check_notify(parsed)
    if request.action not in ("status", "on") or not params.has_bmc(parsed):
        problems += params.check_openstack(parsed)
    if request.action in _TARGETED and not parsed.get("port"):
        problems.append(f"parameter 'port' (the node to fence) is required for "
                        f"'{request.action}'")
    if request.action in ("status", "on") and not params.has_bmc(parsed):
        problems.append(f"'{request.action}' needs BMC parameters (ip, username, password); "
                        "without them this device only works in a fencing topology")
    return problems


def _node_and_host(parsed: params.Parsed) -> tuple[str, str]:
    node = parsed["port"]
    return node, params.nova_host_name(node, parsed.get("host_map", ""), parsed.get("domain", ""))


def _bmc(parsed: params.Parsed) -> power.Bmc:
    from nova_ha.lib import power

    password = parsed.get("password")
    if not password and parsed.get("password_script"):
        password = params.run_secret_script("password_script", parsed["password_script"])
        log.REDACTOR.add(password)
    return power.Bmc(power.BmcConfig(
        address=parsed["ip"], port=parsed.get("ipport", 623), username=parsed.get("username"),
        password=password or "", lanplus=True, cipher=parsed.get("cipher"),
        privlvl=parsed.get("privlvl", "administrator"),
        timeout=parsed.get("power_timeout", 20.0), wait=parsed.get("power_wait", 0.0)))


def _store() -> state.StateStore | None:
    from nova_ha.lib import state

    try:
        return state.CibStateStore()
    except state.StateError as err:
        LOG.error("no cluster record available: %s", err)
        return None


def _options(parsed: params.Parsed) -> recovery.Options:
    from nova_ha.lib import recovery

    targets = [h for h in (parsed.get("target_hosts") or "").replace(" ", ",").split(",") if h]
    return recovery.Options(mode=parsed["evacuate"], tag=parsed.get("evacuable_tag"),
                            max_parallel=parsed["max_parallel"],
                            retries=parsed["evacuate_retries"], target_hosts=targets)


class _NovaWarmUp:
    """Reads only, started while the BMC powers the host off: Keystone's token and the
    host's compute service. Nothing in Nova changes before the power-off is confirmed; each
    round trip done here brings the force-down and the first evacuation request sooner."""

    def __init__(self, parsed: params.Parsed, host: str) -> None:
        import threading

        self.nova: Nova | None = None
        self.service: Any = None
        self._authenticated = threading.Event()
        self._done = threading.Event()
        # A daemon thread: a Nova that does not answer must not keep a failed fence alive.
        threading.Thread(target=self._run, args=(parsed, host), daemon=True,
                         name="nova-warm-up").start()

    def _run(self, parsed: params.Parsed, host: str) -> None:
        from nova_ha.lib.nova import Deadline, Nova

        try:
            nova = Nova.from_params(parsed)
            nova.authenticate()
            self.nova = nova
            self._authenticated.set()
            # Bounded by one request's time: after the power-off the full path takes over.
            self.service = nova.service(Deadline(nova.timeout), host)
        except Exception as err:  # noqa: BLE001 - asked again, with errors reported, later
            LOG.debug("warm-up read failed (asked again after the power-off): %s", err)
        finally:
            self._authenticated.set()
            self._done.set()

    def client(self, wait: float) -> Nova | None:
        """The authenticated client, or None if it is not ready within `wait`."""
        return self.nova if self._authenticated.wait(wait) else None

    def known_service(self, wait: float) -> Any:
        """The host's service as read, or None."""
        return self.service if self._done.wait(wait) else None


def fence_off(request: FenceRequest) -> int:
    """Power off and confirm, force down, record, evacuate. 0 once the host is safe."""
    import concurrent.futures
    import time

    from nova_ha.lib import evacuation, power, recovery
    from nova_ha.lib.nova import Deadline, Nova, NovaError

    parsed = request.params
    node, host = _node_and_host(parsed)
    warm_up = _NovaWarmUp(parsed, host)
    if params.has_bmc(parsed):
        try:
            with _bmc(parsed) as bmc:
                took = bmc.off_and_confirm()
        except (power.PowerError, params.SecretScriptError) as err:
            LOG.error("power-off of %s not confirmed: %s; nothing done in Nova", node, err)
            return fence_proto.EC_GENERIC_ERROR
        LOG.info("power-off of %s confirmed by its BMC in %.2fs", node, took)
    else:
        LOG.info("no BMC parameters: the power-off of %s was confirmed by an earlier "
                 "fencing-topology level", node)

    powered_off = time.time()
    deadline = Deadline(parsed["evacuate_timeout"])
    store = _store()
    mode = parsed["evacuate"]
    # The record needs only the confirmed power-off: written while Nova is asked to force
    # the host down (if that fails, Pacemaker retries and NovaEvacuate may resume anyway:
    # the host is off either way). Disabling runs alongside the evacuation.
    evacuating = mode in ("all", "tagged")
    lease = recovery.Lease(store, node, recovery.owner_name(params.FENCE),
                           deadline.remaining() + recovery.LEASE_MARGIN)
    with concurrent.futures.ThreadPoolExecutor(3) as background:
        recorded = background.submit(recovery.record, store, lambda s: s.mark(
            node, "fenced", "fenced", f"power off confirmed; forcing down {host}", mode=mode,
            service_host=host), "fencing")
        # The lease, too, needs only the power-off: taken while Nova is asked.
        leased = background.submit(lease.acquire) if evacuating else None
        # The guard's read of every record, once this host's mark is in.
        wave = background.submit(_records_after, recorded, store) if evacuating else None
        prefetch = None
        try:
            nova = warm_up.client(wait=deadline.remaining())
            if nova is None:
                nova = Nova.from_params(parsed)
            if evacuating:
                nova.authenticate()
                # Reading the host's servers needs only the confirmed power-off: it runs
                # while the host is forced down.
                prefetch = evacuation.Prefetch(nova, deadline, host,
                                               lambda: powered_off - 60.0)
            known = warm_up.known_service(wait=deadline.remaining()) \
                if nova is warm_up.nova else None
            svc = recovery.force_down(nova, deadline, host, known=known)
        except (NovaError, params.SecretScriptError) as err:
            LOG.error("%s is powered off but could not be forced down in Nova: %s", node, err)
            if leased is not None and leased.result():
                lease.release()
            return fence_proto.EC_GENERIC_ERROR
        disabled = background.submit(recovery.disable, nova, deadline, svc)
        recorded.result()  # 'fenced' first: every later state follows it
        if leased is not None:
            leased.result()
        _after_force_down(parsed, store, nova, deadline, node, host, mode, prefetch, lease,
                          wave.result() if wave is not None else None)
        lease.release()  # if still ours: evacuation not started (guard) or cut short
        try:
            disabled.result()
        except NovaError as err:
            LOG.error("could not disable nova-compute on %s: %s", host, err)
    return fence_proto.EC_OK


def _records_after(recorded: Any, store: state.StateStore | None) -> dict | None:
    """Every host's record, read once `recorded` (this host's mark) is done; None if the
    CIB cannot be read (the guard then reads, and reports, itself)."""
    from nova_ha.lib import state

    recorded.result()
    if store is None:
        return None
    try:
        return store.all()
    except state.StateError:
        return None


def _after_force_down(parsed: params.Parsed, store: state.StateStore | None, nova: Nova,
                      deadline: Deadline, node: str, host: str, mode: str,
                      prefetch: evacuation.Prefetch | None, lease: recovery.Lease,
                      records: dict | None = None) -> None:
    """Announce, apply the guard, evacuate (or leave it to NovaEvacuate by the mode)."""
    from nova_ha.lib import guard, notify, recovery
    from nova_ha.lib.nova import NovaError

    notifier = notify.Notifier.from_params(parsed, params.FENCE)
    notifier.send("fenced", node, host=host, mode=mode,
                  detail="power-off confirmed, nova-compute forced down")
    verdict = None
    if mode in ("all", "tagged"):
        verdict = guard.check_store(store, parsed, node, nova=nova, deadline=deadline,
                                    records=records)
    if mode == "none":
        recovery.record(store, lambda s: s.mark(node, "evacuated", "evacuation_finished",
                                                "evacuate=none: nothing evacuated"), "mode")
    elif mode == "record":
        LOG.info("%s recorded as fenced; NovaEvacuate evacuates it (evacuate=record)", node)
    elif verdict is not None and verdict.blocked:
        guard.hold(store, verdict, notifier, host=host)  # fenced; evacuation left to people
    else:
        options = _options(parsed)
        options.notifier = notifier
        try:
            recovery.evacuate_host(nova, store, node, host, options, deadline, lease.owner,
                                   prefetch=prefetch, lease=lease)
        except NovaError as err:
            # Fencing itself succeeded: the rest stays recorded for NovaEvacuate.
            LOG.error("evacuation of %s interrupted: %s", node, err)


def fence_reboot(request: FenceRequest) -> int:
    code = fence_off(request)
    parsed = request.params
    if code != fence_proto.EC_OK or not params.has_bmc(parsed) or not parsed["power_on_after"]:
        return code
    return fence_on(request)


def _ask_bmc(request: FenceRequest, what: str, call: Callable[[power.Bmc], Any]) -> Any:
    """One BMC operation; None (logged, never a traceback) when it fails."""
    from nova_ha.lib import power

    node, _ = _node_and_host(request.params)
    try:
        with _bmc(request.params) as bmc:
            return call(bmc)
    except (power.PowerError, params.SecretScriptError) as err:
        LOG.error("%s of %s failed: %s", what, node, err)
        return None


def fence_on(request: FenceRequest) -> int:
    """Power on only: the host rejoins Nova through NovaCompute once its evacuations are done
    (Nova refuses to un-force a host while 'done' evacuation migrations remain)."""
    took = _ask_bmc(request, "power-on", lambda bmc: bmc.on_and_confirm())
    if took is None:
        return fence_proto.EC_GENERIC_ERROR
    LOG.info("%s powered on (confirmed in %.2fs)", request.params["port"], took)
    return fence_proto.EC_OK


def fence_status(request: FenceRequest) -> int:
    """0 on, 2 off, 1 when the BMC cannot tell (never 'on' by default)."""
    current = _ask_bmc(request, "reading the power state", lambda bmc: bmc.status())
    if current is None:
        return fence_proto.EC_GENERIC_ERROR
    print(f"Status: {current.upper()}")
    return fence_proto.EC_OK if current == "on" else fence_proto.EC_STATUS_OFF


def _list(request: FenceRequest, with_status: bool) -> int:
    from nova_ha.lib.nova import Deadline, Nova, NovaError

    parsed = request.params
    try:
        nova = Nova.from_params(parsed)
        services = nova.services(Deadline(parsed.get("os_api_timeout", 10) * 3))
    except (NovaError, params.SecretScriptError) as err:
        LOG.error("cannot list compute hosts: %s", err)
        return fence_proto.EC_GENERIC_ERROR
    for svc in services:
        node = params.node_name_for_host(svc.host, parsed.get("host_map", ""),
                                         parsed.get("domain", ""))
        up = svc.state == "up" and not svc.forced_down
        print(f"{node},{svc.host}" + (f",{'on' if up else 'off'}" if with_status else ""))
    return fence_proto.EC_OK


def fence_monitor(request: FenceRequest) -> int:
    """The device works: the BMC answers (when configured) and Keystone gives a token."""
    from nova_ha.lib import power
    from nova_ha.lib.nova import Deadline, Nova, NovaError

    parsed = request.params
    try:
        if params.has_bmc(parsed):
            with _bmc(parsed) as bmc:
                bmc.status()
        nova = Nova.from_params(parsed)
        nova.microversion(Deadline(parsed.get("os_api_timeout", 10) * 2))
    except (power.PowerError, NovaError, params.SecretScriptError) as err:
        LOG.error("monitor failed: %s", err)
        return fence_proto.EC_GENERIC_ERROR
    return fence_proto.EC_OK


HANDLERS: dict = {
    "off": fence_off, "reboot": fence_reboot, "on": fence_on, "status": fence_status,
    "list": lambda request: _list(request, False),
    "list-status": lambda request: _list(request, True), "monitor": fence_monitor,
}

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
