"""Domain definitions of the bed's two guests.

* ``bare``: 32 MiB, no disk, no network card, no agent: SeaBIOS finds nothing to boot and
  idles. For QEMU crash and lifecycle tests.
* ``tiny``: 96 MiB (Debian's 6.1 kernel with this initramfs does not boot in 64 or 72 MiB:
  it stops before its first console line). Debian's kernel booted directly with the bed's
  initramfs (image.py); a QEMU guest agent on the virtio-serial channel
  ``org.qemu.guest_agent.0``, whose host side is a unix socket named as Nova's libvirt
  driver names it; a pvpanic device (``<panic model='isa'/>``); the serial console in a
  file. ``agent=False`` boots it with the kernel parameter that skips the agent (the
  channel stays: a guest that never runs its agent).

``type='kvm'`` when /dev/kvm is usable, else ``type='qemu'`` (TCG); for the tiny guest also
only when KVM boots its kernel (``image.kvm_boots_guest``: nested KVM may not).
"""

from __future__ import annotations

import uuid as uuidlib
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from testbed.libvirt_bed.bed import has_kvm
from testbed.libvirt_bed.image import (
    AGENT_PORT,
    NO_AGENT_FLAG,
    ensure_guest_image,
    kvm_boots_guest,
)

ON_CRASH = ("destroy", "preserve", "restart", "coredump-destroy", "coredump-restart")


def agent_socket(name: str) -> str:
    """The host side of a domain's agent channel, inside the bed (Nova's naming)."""
    return f"/var/lib/libvirt/qemu/{AGENT_PORT}.{name}.sock"


def serial_log(name: str) -> str:
    return f"/var/log/libvirt/qemu/{name}.serial.log"


@dataclass
class GuestSpec:
    """What a domain is made of; ``xml()`` renders it."""

    name: str
    kind: str = "bare"  # "bare" or "tiny"
    uuid: str = field(default_factory=lambda: str(uuidlib.uuid4()))
    memory_mib: int | None = None  # default: 32 (bare), 96 (tiny)
    agent: bool = True  # tiny only: run qemu-ga in the guest
    on_crash: str = "destroy"

    def __post_init__(self) -> None:
        if self.kind not in ("bare", "tiny"):
            raise ValueError(f"guest kind must be 'bare' or 'tiny', not {self.kind!r}")
        if self.on_crash not in ON_CRASH:
            raise ValueError(f"on_crash must be one of {ON_CRASH}, not {self.on_crash!r}")
        if self.memory_mib is None:
            self.memory_mib = 32 if self.kind == "bare" else 96

    def _os(self) -> str:
        if self.kind == "bare":
            return "<os><type arch='x86_64' machine='pc'>hvm</type><boot dev='network'/></os>"
        image = ensure_guest_image()
        cmdline = "console=ttyS0 panic=0" + ("" if self.agent else f" {NO_AGENT_FLAG}")
        return (
            "<os><type arch='x86_64' machine='pc'>hvm</type>"
            f"<kernel>{escape(str(image.kernel))}</kernel>"
            f"<initrd>{escape(str(image.initrd))}</initrd>"
            f"<cmdline>{escape(cmdline)}</cmdline></os>"
        )

    def _devices(self) -> str:
        devices = [
            "<emulator>/usr/bin/qemu-system-x86_64</emulator>",
            "<controller type='usb' model='none'/>",
            "<memballoon model='none'/>",
            f"<serial type='file'><source path={quoteattr(serial_log(self.name))}/></serial>",
        ]
        if self.kind == "tiny":
            devices += [
                f"<channel type='unix'><source mode='bind' path="
                f"{quoteattr(agent_socket(self.name))}/>"
                f"<target type='virtio' name='{AGENT_PORT}'/></channel>",
                "<panic model='isa'/>",
            ]
        return "".join(devices)

    def virt_type(self) -> str:
        if self.kind == "tiny":
            return "kvm" if kvm_boots_guest(ensure_guest_image()) else "qemu"
        return "kvm" if has_kvm() else "qemu"

    def xml(self) -> str:
        virt = self.virt_type()
        # TCG's translation cache defaults to 1 GiB of (lazily touched) memory: 32 MiB is
        # plenty for this guest and keeps QEMU's RSS near the guest's size.
        tcg = "<tcg><tb-cache unit='MiB'>32</tb-cache></tcg>" if virt == "qemu" else ""
        return (
            f"<domain type='{virt}'><name>{escape(self.name)}</name><uuid>{self.uuid}</uuid>"
            f"<memory unit='MiB'>{self.memory_mib}</memory><vcpu>1</vcpu>{self._os()}"
            f"<features><acpi/>{tcg}</features><clock offset='utc'/>"
            "<on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot>"
            f"<on_crash>{self.on_crash}</on_crash><devices>{self._devices()}</devices></domain>"
        )


def start_guest(conn: Any, spec: GuestSpec) -> Any:
    """Define `spec` (a persistent domain, as Nova's libvirt driver makes them) and start
    it; the virDomain."""
    dom = conn.defineXML(spec.xml())
    dom.create()
    return dom
