"""Debian's libvirt binding (python3-libvirt 9.0.0) in a virtual environment.

Chosen over PyPI's libvirt-python: that one builds from source (libvirt-dev, pkg-config, a
compiler, a minute of the 2 cores), while Debian's is built for exactly the libvirt the bed
runs and for the machine's Python 3.11, the interpreter both venvs are made from. Only its
modules are linked into the venv's site-packages (symbolic links, so a Debian update is
picked up); a .pth over /usr/lib/python3/dist-packages would bring every other Debian Python
package along and shadow the venv's own. ``python -m testbed.libvirt_bed.binding VENV...``
(make libvirt-binding) does it; it is idempotent.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

DEBIAN_DIST = Path("/usr/lib/python3/dist-packages")
MODULES = (
    "libvirt.py",
    "libvirt_qemu.py",
    "libvirt_lxc.py",
    "libvirtaio.py",
    "libvirtmod.cpython-311-x86_64-linux-gnu.so",
    "libvirtmod_qemu.cpython-311-x86_64-linux-gnu.so",
    "libvirtmod_lxc.cpython-311-x86_64-linux-gnu.so",
)


def site_packages(venv: Path) -> Path:
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import sysconfig as s; print(s.get_path('purelib'))"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()
    return Path(out)


def link_binding(venv: Path) -> list[Path]:
    """Link the binding's modules into `venv`; returns the links made (none if all were)."""
    missing = [m for m in MODULES if not (DEBIAN_DIST / m).is_file()]
    if missing:
        raise RuntimeError(f"python3-libvirt is not installed ({DEBIAN_DIST}: no {missing})")
    target = site_packages(venv)
    made = []
    for module in MODULES:
        link = target / module
        if link.is_symlink() and link.resolve() == (DEBIAN_DIST / module).resolve():
            continue
        if link.exists() or link.is_symlink():
            raise RuntimeError(f"{link} exists and is not Debian's: not replacing it")
        link.symlink_to(DEBIAN_DIST / module)
        made.append(link)
    check = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import libvirt, libvirt_qemu"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check.returncode != 0:
        raise RuntimeError(f"import libvirt fails in {venv}: {check.stderr.strip()}")
    return made


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        links = link_binding(Path(arg))
        print(f"{arg}: libvirt binding " + ("linked" if links else "already there"))
