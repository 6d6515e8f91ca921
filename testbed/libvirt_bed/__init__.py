"""A real libvirt + QEMU test bed: Debian's libvirtd and virtlogd without systemd, in a
private mount namespace, with two kinds of guest and real failures on demand.

    from testbed.libvirt_bed import LibvirtBed, EventRecorder, GuestSpec, start_guest, faults

    with LibvirtBed() as bed, EventRecorder(bed.uri) as events:
        conn = bed.connect()                              # or libvirt.open(bed.uri)
        dom = start_guest(conn, GuestSpec("instance-1", kind="tiny"))
        faults.wait_agent(dom)                            # first guest-ping answer
        t = faults.kill_qemu(bed.qemu_pid("instance-1"))  # or faults.panic(dom), hang(dom)
        events.wait_for(dom.UUIDString(), "STOPPED/FAILED", after=t)

Modules: ``bed`` (the daemons: LibvirtBed, cleanup_leftovers, missing_requirements),
``guest`` (GuestSpec: bare or tiny, start_guest, agent_socket), ``image`` (the tiny guest's
kernel and initramfs, cached), ``events`` (EventRecorder, ensure_event_loop, event_name),
``faults`` (agent_command, agent_ping, wait_agent, guest_exec, kill_qemu, panic, hang),
``binding`` (Debian's python3-libvirt linked into a venv). README.md has the measured
figures and the exact events.
"""

from testbed.libvirt_bed import faults
from testbed.libvirt_bed.bed import LibvirtBed, LibvirtBedError, missing_requirements
from testbed.libvirt_bed.events import EventRecorder, LifecycleEvent
from testbed.libvirt_bed.guest import GuestSpec, agent_socket, start_guest

__all__ = [
    "EventRecorder",
    "GuestSpec",
    "LibvirtBed",
    "LibvirtBedError",
    "LifecycleEvent",
    "agent_socket",
    "faults",
    "missing_requirements",
    "start_guest",
]
