"""The tiny guest's boot files: Debian's kernel and an initramfs with a QEMU guest agent.

Nothing is installed on the machine: the kernel package (`linux-image-amd64`'s dependency)
is downloaded with ``apt-get download`` and unpacked with ``dpkg-deb -x`` into the cache;
the initramfs is written here (cpio "newc", gzip) from the machine's own busybox-static,
qemu-guest-agent and chrt binaries with their shared libraries (found with ldd), plus the
kernel modules the agent needs (virtio-pci, virtio console) and pvpanic. Both files are
cached under ``.cache/libvirt-bed/`` by a key over everything they are made of, so the
second call costs nothing. ``python -m testbed.libvirt_bed.image`` builds them (make
libvirt-guest).

The guest's /init mounts /proc, /sys and /dev, loads the modules, then runs qemu-ga on the
virtio-serial port named ``org.qemu.guest_agent.0`` (found in /sys: there is no udev) and
idles as PID 1. The kernel parameter ``nha.noagent`` makes it idle without an agent.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import os
import re
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from testbed.cluster import CACHE

IMAGE_CACHE = CACHE / "libvirt-bed"
AGENT_PORT = "org.qemu.guest_agent.0"
GUEST_BINARIES = ("/bin/busybox", "/usr/sbin/qemu-ga", "/usr/bin/chrt")
# Loaded in this order by /init; their dependencies are added before them.
GUEST_MODULES = ("virtio_pci", "virtio_console", "pvpanic-mmio")
NO_AGENT_FLAG = "nha.noagent"
BOOTED_MARK = "nha-guest: modules loaded"  # on the serial console once /init runs
IMAGE_FORMAT = 2  # bump when the archive's layout changes: a new cache key

INIT_SCRIPT = f"""#!/bin/sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /run /var/run /tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules.order); do insmod "/modules/$m.ko"; done
echo "{BOOTED_MARK}"
case " $(cat /proc/cmdline) " in
*" {NO_AGENT_FLAG} "*) echo "nha-guest: no agent (kernel parameter {NO_AGENT_FLAG})" ;;
*)
    port=
    while [ -z "$port" ]; do
        for p in /sys/class/virtio-ports/*; do
            [ "$(cat "$p/name" 2>/dev/null)" = "{AGENT_PORT}" ] && port=/dev/${{p##*/}}
        done
        [ -n "$port" ] || sleep 0.1
    done
    echo "nha-guest: qemu-ga on $port"
    qemu-ga --method=virtio-serial --path="$port" --pidfile=/run/qemu-ga.pid \\
        --statedir=/run &
    ;;
esac
# PID 1 must never exit (that would be a kernel panic, i.e. a false crash).
while :; do sleep 3600; done
"""


@dataclass(frozen=True)
class GuestImage:
    kernel: Path
    initrd: Path
    package: str  # the kernel's Debian package=version


def kernel_package() -> tuple[str, str]:
    """(name, version) of the kernel package `linux-image-amd64` depends on."""
    out = subprocess.run(
        ["apt-cache", "depends", "linux-image-amd64"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    found = re.search(r"Depends:\s+(linux-image-[0-9][^\s]*)", out)
    if not found:
        raise RuntimeError(f"no kernel package in `apt-cache depends linux-image-amd64`: {out}")
    name = found.group(1)
    policy = subprocess.run(
        ["apt-cache", "policy", name], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    version = re.search(r"Candidate:\s+(\S+)", policy)
    return name, version.group(1) if version else "unknown"


def _unpack_kernel(name: str, dest: Path) -> None:
    """Download the kernel package and unpack it into `dest` (boot/, lib/modules/)."""
    os.chmod(dest, 0o755)  # apt's _apt user downloads into it
    res = subprocess.run(
        ["apt-get", "download", name], cwd=dest, capture_output=True, text=True, timeout=600
    )
    debs = list(dest.glob(f"{name}_*.deb"))
    if res.returncode != 0 or not debs:
        raise RuntimeError(f"apt-get download {name} failed: {res.stderr.strip()}")
    subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(dest)], check=True, timeout=300)


def _module_index(modules_root: Path) -> dict[str, Path]:
    """Module name (as `depends=` spells it: '-' and '_' alike) -> its .ko file."""
    return {ko.name[:-3].replace("-", "_"): ko for ko in modules_root.rglob("*.ko")}


def _depends(ko: Path) -> list[str]:
    found = re.search(rb"(?:^|\0)depends=([^\0]*)\0", ko.read_bytes())
    return [d for d in found.group(1).decode().split(",") if d] if found else []


def module_load_order(modules_root: Path, wanted: tuple[str, ...]) -> list[Path]:
    """The .ko files of `wanted` and their dependencies, each after what it depends on."""
    index = _module_index(modules_root)
    order: list[Path] = []

    def add(name: str) -> None:
        ko = index.get(name.replace("-", "_"))
        if ko is None:
            raise RuntimeError(f"kernel module {name} not found under {modules_root}")
        if ko in order:
            return
        for dep in _depends(ko):
            add(dep)
        order.append(ko)

    for name in wanted:
        add(name)
    return order


def shared_libraries(binary: str) -> list[str]:
    """Absolute paths of the libraries `binary` loads (ldd), the loader included."""
    res = subprocess.run(["ldd", binary], capture_output=True, text=True, timeout=30)
    if "not a dynamic executable" in res.stdout + res.stderr:
        return []
    if res.returncode != 0:
        raise RuntimeError(f"ldd {binary} failed: {res.stderr.strip()}")
    return re.findall(r"(/\S+) \(0x", res.stdout)


class Cpio:
    """A cpio archive in the "newc" format, the one the kernel unpacks as initramfs."""

    def __init__(self) -> None:
        self.out = io.BytesIO()
        self.inode = 1
        self.dirs: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"") -> None:
        fields = (self.inode, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0)
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self.inode += 1
        self.out.write(header + name.encode() + b"\0")
        self.out.write(b"\0" * (-(110 + len(name) + 1) % 4))
        self.out.write(data + b"\0" * (-len(data) % 4))

    def directory(self, path: str) -> None:
        path = path.strip("/")
        if not path or path in self.dirs:
            return
        self.directory(os.path.dirname(path))
        self.dirs.add(path)
        self._entry(path, 0o040755)

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self.directory(os.path.dirname(path.strip("/")))
        self._entry(path.strip("/"), 0o100000 | mode, data)

    def symlink(self, path: str, target: str) -> None:
        self.directory(os.path.dirname(path.strip("/")))
        self._entry(path.strip("/"), 0o120777, target.encode())

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self.out.getvalue()


def build_initramfs(modules: list[Path]) -> bytes:
    """A gzip'ed initramfs: /init, the guest binaries and their libraries, the modules."""
    archive = Cpio()
    for d in ("proc", "sys", "dev", "run", "tmp", "bin", "sbin", "usr/bin", "usr/sbin"):
        archive.directory(d)
    archive.file("/init", INIT_SCRIPT.encode(), 0o755)
    archive.symlink("/bin/sh", "busybox")  # /init's interpreter, before it installs the rest
    files = set(GUEST_BINARIES)
    for binary in GUEST_BINARIES:
        files.update(shared_libraries(binary))
    for path in sorted(files):
        # Copy the file the path resolves to, under the path the binary asks for.
        archive.file(path, Path(path).read_bytes(), 0o755)
    for ko in modules:
        archive.file(f"/modules/{ko.name}", ko.read_bytes())
    archive.file("/modules.order", "\n".join(ko.name[:-3] for ko in modules).encode() + b"\n")
    return gzip.compress(archive.finish(), compresslevel=6, mtime=0)


def _cache_key(kernel: str, version: str) -> str:
    digest = hashlib.sha256(
        f"{IMAGE_FORMAT} {kernel}={version}\n{INIT_SCRIPT}{GUEST_MODULES}".encode()
    )
    for binary in GUEST_BINARIES:
        st = Path(binary).stat()
        digest.update(f"{binary} {st.st_size} {st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


@functools.cache
def ensure_guest_image() -> GuestImage:
    """The kernel and initramfs of the tiny guest, built once into the cache (the unpacked
    package, ~400 MB, is deleted once both are there)."""
    missing = [b for b in GUEST_BINARIES if not Path(b).is_file()]
    if missing:
        raise RuntimeError(f"guest binaries missing: {missing} (busybox-static, qemu-guest-agent)")
    name, version = kernel_package()
    kernel = IMAGE_CACHE / f"vmlinuz_{name}_{version}"
    initrd = IMAGE_CACHE / f"initrd-{_cache_key(name, version)}.img"
    if not (kernel.is_file() and initrd.is_file()):
        IMAGE_CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=IMAGE_CACHE) as tmp:
            _unpack_kernel(name, Path(tmp))
            vmlinuz = next((Path(tmp) / "boot").glob("vmlinuz-*"))
            modules_root = Path(tmp) / "lib" / "modules" / vmlinuz.name.removeprefix("vmlinuz-")
            modules = module_load_order(modules_root, GUEST_MODULES)
            (Path(tmp) / "initrd").write_bytes(build_initramfs(modules))
            shutil.copyfile(vmlinuz, Path(tmp) / "kernel")
            (Path(tmp) / "initrd").rename(initrd)
            (Path(tmp) / "kernel").rename(kernel)
    return GuestImage(kernel=kernel, initrd=initrd, package=f"{name}={version}")


def _console_shows(argv: list[str], mark: bytes, timeout: float) -> bool:
    """Run a QEMU whose serial console is its stdout until `mark` shows (True) or
    `timeout` passes (False); it is killed either way."""
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert proc.stdout is not None
    seen = b""
    deadline = time.monotonic() + timeout
    try:
        while mark not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 0.2)
            chunk = os.read(proc.stdout.fileno(), 65536) if ready else b""
            if ready and not chunk:
                break  # QEMU exited
            seen = seen[-4096:] + chunk
    finally:
        proc.kill()
        proc.wait(10)
        proc.stdout.close()
    return mark in seen


def kvm_boots_guest(image: GuestImage, timeout: float = 20.0) -> bool:
    """Whether this machine's KVM boots the tiny guest's kernel (probed once, cached).

    Nested KVM may run firmware yet not Linux: on the machine this bed was built on
    (a KVM guest itself), SeaBIOS runs under KVM but the kernel stops in its decompressor
    ("Invalid physical address chosen!") with any CPU model, while TCG boots it."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    probe = IMAGE_CACHE / f"kvm-probe-{image.initrd.stem}-{os.uname().release}"
    if probe.is_file():
        return probe.read_text().strip() == "yes"
    argv = ["qemu-system-x86_64", "-accel", "kvm", "-m", "96", "-nographic", "-no-reboot"]
    argv += ["-kernel", str(image.kernel), "-initrd", str(image.initrd)]
    argv += ["-append", f"console=ttyS0 panic=-1 {NO_AGENT_FLAG}"]
    argv += ["-nodefaults", "-serial", "stdio"]
    booted = _console_shows(argv, BOOTED_MARK.encode(), timeout)
    probe.write_text("yes\n" if booted else "no\n")
    return booted


if __name__ == "__main__":
    image = ensure_guest_image()
    print(f"kernel {image.kernel}\ninitrd {image.initrd} ({image.initrd.stat().st_size} bytes)")
    print(f"KVM boots it: {kvm_boots_guest(image)}")
