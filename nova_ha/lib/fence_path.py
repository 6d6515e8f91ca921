"""The fence action's safety work for one host, as named steps (the life of a failed host,
step 2): power off and confirm, force down, record, hand over.

Pacemaker starts no new transition while any action runs, so this is all a fence action
does: the evacuation runs beside Pacemaker, in NovaEvacuate's evacuation service.

The safety rule, "nothing in Nova changes for a host before its power-off is confirmed", is
held by a type: every step after the power-off takes a ``PowerOffConfirmed``, and only
``HostFence.power_off`` makes one, after the BMC confirmed the host off or when the device
runs as a later fencing-topology level (an earlier level confirmed it).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from nova_ha.errors import NovaHaError
from nova_ha.lib import fence_proto, handover, lifecycle, log, params
from nova_ha.lib.lifecycle import Event, FenceAction, HostState
from nova_ha.lib.proof import PowerOffConfirmed, by_bmc, by_topology

if TYPE_CHECKING:
    from nova_ha.lib import power, state
    from nova_ha.openstack.compute import Nova
    from nova_ha.openstack.transport import Deadline
    from nova_ha.openstack.views import Service

LOG = log.get("fencer")


def bmc_config(settings: params.BmcSettings, node: str) -> power.BmcConfig:
    """How to reach the BMC of `node` as this device knows it (its own, or its entry in
    bmc_map); runs the password script if there is one. ParamError when this device must
    not power `node` (another node's BMC)."""
    from nova_ha.lib import power

    endpoint = settings.endpoint(node)
    if endpoint is None:
        raise params.ParamError("this device has no BMC parameters (ip or bmc_map)")
    password = settings.password
    script = settings.password_command(node)
    if not password and script:
        password = params.run_secret_script("password_script", script)
        log.REDACTOR.add(password)
    return power.BmcConfig(
        address=endpoint[0],
        port=endpoint[1],
        username=settings.username or "",
        password=password or "",
        lanplus=True,
        cipher=settings.cipher,
        privlvl=settings.privlvl,
        timeout=settings.power_timeout,
        wait=settings.power_wait,
    )


def bmc_for(settings: params.BmcSettings, node: str) -> power.Bmc:
    """A client of the BMC of `node` (see bmc_config)."""
    from nova_ha.lib import power

    return power.Bmc(bmc_config(settings, node))


class _NovaWarmUp:
    """Reads only, started while the BMC powers the host off: Keystone's token and the
    host's compute service. Each round trip done here brings the force-down sooner."""

    def __init__(self, parsed: params.Parsed, host: str) -> None:
        self.nova: Nova | None = None
        self.service: Service | None = None
        self._authenticated = threading.Event()
        self._done = threading.Event()
        # A daemon thread: a Nova that does not answer must not keep a failed fence alive.
        threading.Thread(
            target=self._run, args=(parsed, host), daemon=True, name="nova-warm-up"
        ).start()

    def _run(self, parsed: params.Parsed, host: str) -> None:
        from nova_ha.openstack.compute import Nova
        from nova_ha.openstack.transport import Deadline

        try:
            nova = Nova.from_params(parsed)
            nova.authenticate()
            self.nova = nova
            self._authenticated.set()
            self.service = nova.service(Deadline(nova.timeout), host)
        except Exception as err:  # noqa: BLE001 - asked again, with errors reported, later
            LOG.debug("warm-up read failed (asked again after the power-off): %s", err)
        finally:
            self._authenticated.set()
            self._done.set()

    def client(self, wait: float) -> Nova | None:
        return self.nova if self._authenticated.wait(wait) else None

    def known_service(self, wait: float) -> Service | None:
        return self.service if self._done.wait(wait) else None


class HostFence:
    """`off` for one host. Each step returns what the next needs; `run` is the order."""

    def __init__(self, parsed: params.Parsed, node: str) -> None:
        self.parsed = parsed
        self.settings = parsed.settings
        self.node = node
        self.host = self.settings.naming.nova_host(node)
        self.mode: str = self.settings.evacuation.mode
        self.evacuating = self.mode in ("all", "tagged", "record")
        self._warm_up: _NovaWarmUp | None = None
        self._nova: Nova | None = None

    # -- the steps -----------------------------------------------------------------------

    def power_off(self) -> PowerOffConfirmed | None:
        """Power off and wait for the BMC to confirm it; None (logged) if it did not."""
        self._warm_up = _NovaWarmUp(self.parsed, self.host)
        if not self.settings.bmc.configured:
            LOG.info(
                "no BMC parameters: the power-off of %s was confirmed by an earlier "
                "fencing-topology level",
                self.node,
            )
            return by_topology(self.node, self.host)
        try:
            with bmc_for(self.settings.bmc, self.node) as bmc:
                took = bmc.off_and_confirm()
        except NovaHaError as err:  # the BMC's, its password script's, its parameters'
            LOG.error("power-off of %s not confirmed: %s; nothing done in Nova", self.node, err)
            return None
        LOG.info("power-off of %s confirmed by its BMC in %.2fs", self.node, took)
        return by_bmc(self.node, self.host)

    def force_down(self, proof: PowerOffConfirmed, deadline: Deadline) -> Service:
        """Force the host's nova-compute down (what evacuation needs). Raises NovaError."""
        from nova_ha.lib import recovery
        from nova_ha.openstack.compute import Nova

        warm = self._warm_up.client(wait=deadline.remaining()) if self._warm_up else None
        self._nova = warm or Nova.from_params(self.parsed)
        known = (
            self._warm_up.known_service(wait=deadline.remaining())
            if warm is not None and self._warm_up is not None
            else None
        )
        return recovery.force_down(self._nova, deadline, proof, known=known)

    def disable(self, proof: PowerOffConfirmed, deadline: Deadline, svc: Service) -> None:
        """After the force-down, never before (see recovery.disable); failures only logged."""
        from nova_ha.lib import recovery
        from nova_ha.openstack.exceptions import NovaError

        assert self._nova is not None and proof.host == svc.host
        try:
            recovery.disable(self._nova, deadline, svc)
        except NovaError as err:
            LOG.error("could not disable nova-compute on %s: %s", proof.host, err)

    def record(
        self, proof: PowerOffConfirmed, store: state.StateStore | None
    ) -> state.HostRecord | None:
        """'fenced', with the lease granted to the evacuation service: one CIB write, the
        hand-over itself. None when there is no cluster record to write."""
        from nova_ha.lib import recovery, state

        if store is None:
            return None
        grant = None
        if self.evacuating:
            grant = (
                handover.SERVICE_OWNER,
                self.settings.evacuation.timeout + recovery.LEASE_MARGIN,
            )
        try:
            return store.mark(
                proof.node,
                HostState.FENCED,
                Event.FENCED,
                f"power-off confirmed by {proof.by}",
                mode=self.mode,
                service_host=proof.host,
                grant=grant,
            )
        except state.StateError as err:
            LOG.error("cannot record %s as fenced: %s", proof.node, err)
            return None

    def decide(self, recorded: state.HostRecord | None) -> lifecycle.Decision[FenceAction]:
        """What follows the record: the lifecycle decides, from the mode and the record."""
        return lifecycle.after_fence(self.mode, recorded, handover.SERVICE_OWNER)

    def hand_over(self, proof: PowerOffConfirmed, recorded: state.HostRecord | None) -> str:
        """Leave the evacuation to the service (woken when it runs on this node), or to the
        runner holding the lease; the sentence says to whom, for the log."""
        decision = self.decide(recorded)
        if decision.action is not FenceAction.HAND_OVER:
            return decision.reason
        woken = handover.wake(proof.node)
        return decision.reason + (
            " (woken on this node)" if woken else " (it sees the record at its next read)"
        )

    # -- the order ----------------------------------------------------------------------

    def run(self) -> int:
        """Power off; force down; record while disabling (the record needs the force-down:
        'fenced' says the host is off and forced down); hand over. 0 once the host is safe."""
        import concurrent.futures

        from nova_ha.openstack.exceptions import NovaError
        from nova_ha.openstack.transport import Deadline

        proof = self.power_off()
        if proof is None:
            return fence_proto.EC_GENERIC_ERROR
        deadline = Deadline(max(2 * self.settings.openstack.api_timeout, 10.0))
        store = _store()
        try:
            svc = self.force_down(proof, deadline)
        except NovaError as err:
            LOG.error(
                "%s is powered off but could not be forced down in Nova: %s; nothing "
                "recorded, Pacemaker fences again",
                proof.node,
                err,
            )
            return fence_proto.EC_GENERIC_ERROR
        with concurrent.futures.ThreadPoolExecutor(1) as background:
            disabled = background.submit(self.disable, proof, deadline, svc)
            try:
                self._after_force_down(proof, store)
            except Exception as err:  # noqa: BLE001 - the host is safe: the fence succeeded
                LOG.error("%s is off and forced down; what followed failed: %s", proof.node, err)
            disabled.result()
        return fence_proto.EC_OK

    def _after_force_down(self, proof: PowerOffConfirmed, store: state.StateStore | None) -> None:
        """Record, announce, hand over. Nothing here can make the fence fail any more."""
        record = self.record(proof, store)
        self._announce(proof)
        decision = self.decide(record)
        if decision.action is FenceAction.FINISH:
            self._finish_without_evacuation(store, decision.reason)
        elif decision.action is FenceAction.EVACUATE_HERE:
            LOG.warning("%s: %s", proof.node, decision.reason)
            self._evacuate_here(proof, None)
        else:
            LOG.info("%s fenced: %s", proof.node, self.hand_over(proof, record))

    # -- the rest ------------------------------------------------------------------------

    def _announce(self, proof: PowerOffConfirmed) -> None:
        from nova_ha.lib import notify

        notify.Notifier.from_settings(self.settings.notify, params.FENCE).send(
            Event.FENCED,
            proof.node,
            host=proof.host,
            mode=self.mode,
            detail=f"power-off confirmed by {proof.by}, nova-compute forced down",
        )

    def _finish_without_evacuation(self, store: state.StateStore | None, why: str) -> None:
        from nova_ha.lib import recovery

        recovery.record(
            store,
            lambda s: s.mark(self.node, HostState.EVACUATED, Event.EVACUATION_FINISHED, why),
            "mode",
        )

    def _evacuate_here(self, proof: PowerOffConfirmed, store: state.StateStore | None) -> None:
        """No cluster record could carry the hand-over (run by hand, or the CIB out of
        reach): this process holds the proof, so it evacuates itself, without a lease (no
        one can coordinate through a CIB that cannot be reached, and Nova itself refuses a
        second evacuation of a server being rebuilt)."""
        from nova_ha.lib import evacuate_runner

        evacuate_runner.evacuate_now(self.parsed, store, proof, self._nova, runner=None)


def _store() -> state.StateStore | None:
    from nova_ha.lib import state

    try:
        return state.CibStateStore(fail_fast=True)
    except state.StateError as err:
        LOG.error("no cluster record available: %s", err)
        return None


def fence_off(request: fence_proto.FenceRequest) -> int:
    return HostFence(request.params, request.params.settings.target_node).run()
