"""What happened to a guest, and what to do about it: one place decides.

libvirt's numbers become a ``GuestEvent`` here (``from_lifecycle``, ``from_watchdog``,
``from_state``); the monitor gathers the ``Facts`` (Nova's view of the server, whether it is
chosen, the host's record, nova-compute's state, the server's recent restarts) and
``decide`` returns a ``Decision``: recover, ignore or give up, with its reason, which the
monitor logs. Nothing else decides.

Never fight users or Nova: a stop, reboot, delete, migration, evacuation, resize, shelve or
rescue shows as a libvirt detail (destroyed, migrated, saved) or as Nova's task_state and
vm_state, and is left alone; so is a guest that shut itself down (unless the operator asks),
and a host that is being fenced or whose nova-compute is down (the host path owns it).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nova_ha.lib.lifecycle import Decision, HostState

if TYPE_CHECKING:
    from nova_ha.openstack.views import Server


class GuestEvent(enum.StrEnum):
    """A guest's failure, or a stop that is not one."""

    QEMU_CRASHED = "qemu_crashed"  # STOPPED/FAILED: QEMU died (kill -9, OOM)
    PANICKED = "panicked"  # CRASHED: the guest kernel panicked (pvpanic)
    WATCHDOG = "watchdog"  # the guest's watchdog fired
    HEARTBEAT_LOST = "heartbeat_lost"  # the guest agent stopped answering
    FOUND_CRASHED = "found_crashed"  # the scan: shut off (or kept) crashed while unwatched
    GUEST_SHUTDOWN = "guest_shutdown"  # STOPPED/SHUTDOWN: the guest powered itself off
    STOPPED_BY_API = "stopped_by_api"  # STOPPED/DESTROYED: Nova or a user stopped it
    MOVED = "moved"  # STOPPED/MIGRATED or SAVED: the guest went elsewhere on purpose


FAILURES = frozenset(
    {
        GuestEvent.QEMU_CRASHED,
        GuestEvent.PANICKED,
        GuestEvent.WATCHDOG,
        GuestEvent.HEARTBEAT_LOST,
        GuestEvent.FOUND_CRASHED,
    }
)

# Failures libvirt saw end the guest: Nova's own power-state sync may stop the server after
# them (nova-compute hears the same event: "Instance shutdown by itself. Calling the stop
# API"), which is no user's intent; the recovery waits for that stop, then starts it.
CRASHES = FAILURES - {GuestEvent.HEARTBEAT_LOST, GuestEvent.WATCHDOG}
NOVA_SYNC_STOP = "powering-off"

# libvirt's numbers (virDomainEventType and details, virDomainState and reasons): a stable
# ABI, named here so that libvirt is imported only where a connection is made.
_EVENT_STOPPED, _EVENT_CRASHED = 5, 8
_STOPPED_DETAIL = {
    0: GuestEvent.GUEST_SHUTDOWN,  # SHUTDOWN
    1: GuestEvent.STOPPED_BY_API,  # DESTROYED
    2: GuestEvent.PANICKED,  # CRASHED (on_crash=destroy after a panic)
    3: GuestEvent.MOVED,  # MIGRATED
    4: GuestEvent.MOVED,  # SAVED
    5: GuestEvent.QEMU_CRASHED,  # FAILED
    6: GuestEvent.STOPPED_BY_API,  # FROM_SNAPSHOT
}
_STATE_SHUTOFF, _STATE_CRASHED = 5, 6
_SHUTOFF_CRASHED = 3
# libvirtd killed it while reconnecting after its own restart (it could not take its QEMU
# back; seen once on the CI machine under load): no one asked for that stop either.
_SHUTOFF_DAEMON = 8
_WATCHDOG_NONE = 0
WATCH_STATES = {1: "running", 2: "blocked", 3: "paused", 4: "shutdown", 5: "shutoff"}
STATE_PAUSED = 3
PAUSED_MIGRATION, PAUSED_POSTCOPY = 2, 12


def from_lifecycle(event: int, detail: int) -> GuestEvent | None:
    """The GuestEvent of a lifecycle event, None for one that is none of our business."""
    if event == _EVENT_CRASHED:
        return GuestEvent.PANICKED
    if event == _EVENT_STOPPED:
        return _STOPPED_DETAIL.get(detail)
    return None


def from_watchdog(action: int) -> GuestEvent | None:
    """A watchdog that fired with an action; 'none' is the guest's own business."""
    return None if action == _WATCHDOG_NONE else GuestEvent.WATCHDOG


def from_state(state: int, reason: int) -> GuestEvent | None:
    """The scan's view of a domain (virDomain.state()): crashed while nobody watched."""
    if state == _STATE_CRASHED or (
        state == _STATE_SHUTOFF and reason in (_SHUTOFF_CRASHED, _SHUTOFF_DAEMON)
    ):
        return GuestEvent.FOUND_CRASHED
    return None


class InstanceAction(enum.StrEnum):
    RECOVER = "recover"  # stop (unless SHUTOFF) and start through Nova, follow to ACTIVE
    IGNORE = "ignore"  # not ours to act on
    GIVE_UP = "give_up"  # ours, but left alone: recorded, an event raised


# vm_states a failed guest is recovered from: active, or stopped when Nova's power-state
# sync noticed the crash first (a crash event says it was no user's stop).
RECOVERABLE_VM_STATES = frozenset({"active", "stopped"})
DELETED = frozenset({"deleted", "soft-delete", "soft_deleted"})


@dataclass(frozen=True)
class Facts:
    """What the monitor found out before deciding about one guest."""

    server: Server | None  # Nova's view; None when Nova has no server with this UUID
    host: str  # this compute host, as Nova names it
    chosen: bool  # evacuate=all, or tagged with evacuable_tag
    host_state: HostState = HostState.OK  # this host's record
    compute_up: bool = True  # nova-compute of this host, as Nova sees it
    recent_restarts: int = 0  # restarts by the monitor within restart_window
    max_restarts: int = 3
    recover_guest_shutdown: bool = False


def decide(event: GuestEvent, facts: Facts) -> Decision[InstanceAction]:
    """Recover, ignore or give up on `event`, given `facts`; the reason says why."""
    for check in (_libvirt_says, _nova_says, _host_says, _policy_says):
        decision = check(event, facts)
        if decision is not None:
            return decision
    return Decision(InstanceAction.RECOVER, f"{event} on {facts.host}: recovering through Nova")


def _ignore(reason: str) -> Decision[InstanceAction]:
    return Decision(InstanceAction.IGNORE, reason)


def prejudge(event: GuestEvent, recover_guest_shutdown: bool) -> Decision[InstanceAction] | None:
    """The decision libvirt's word alone makes (no need to ask Nova), or None."""
    if event == GuestEvent.STOPPED_BY_API:
        return _ignore("stopped through libvirt's API (Nova or a user): not a failure")
    if event == GuestEvent.MOVED:
        return _ignore("migrated or saved on purpose: not a failure")
    if event == GuestEvent.GUEST_SHUTDOWN and not recover_guest_shutdown:
        return _ignore("the guest shut itself down (recover_guest_shutdown=false)")
    return None


def _libvirt_says(event: GuestEvent, facts: Facts) -> Decision[InstanceAction] | None:
    return prejudge(event, facts.recover_guest_shutdown)


def _nova_says(event: GuestEvent, facts: Facts) -> Decision[InstanceAction] | None:
    server = facts.server
    if server is None:
        return _ignore("Nova has no server with this domain's UUID")
    if server.vm_state in DELETED or server.status in ("DELETED", "SOFT_DELETED"):
        return _ignore("the server is deleted")
    if server.host != facts.host:
        return _ignore(f"Nova places the server on {server.host}, not on {facts.host}")
    crash = event in CRASHES
    if server.task_state and not (crash and server.task_state == NOVA_SYNC_STOP):
        return _ignore(f"Nova's task {server.task_state} is under way: Nova or a user acts")
    if server.vm_state not in RECOVERABLE_VM_STATES:
        return _ignore(f"vm_state {server.vm_state}: not a running server to recover")
    if server.vm_state == "stopped" and not crash:
        return _ignore("Nova shows it stopped, and no crash says that was not intended")
    return None


def _host_says(event: GuestEvent, facts: Facts) -> Decision[InstanceAction] | None:
    if facts.host_state != HostState.OK:
        return _ignore(f"the host is {facts.host_state}: the host path owns its servers")
    if not facts.compute_up:
        return _ignore("nova-compute of this host is down: the host path owns its servers")
    return None


def _policy_says(event: GuestEvent, facts: Facts) -> Decision[InstanceAction] | None:
    if not facts.chosen:
        return _ignore("not chosen for recovery (evacuate=tagged, the tag is not set)")
    if facts.recent_restarts >= facts.max_restarts:
        return Decision(
            InstanceAction.GIVE_UP,
            f"crash loop: {facts.recent_restarts} restarts within restart_window "
            f"(max_restarts={facts.max_restarts}): left as it is",
        )
    return None
