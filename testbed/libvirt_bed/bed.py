"""Debian's libvirtd and virtlogd, without systemd, in a private mount namespace.

A holder process (``unshare -m --propagation private``) mounts, in its own namespace only:

* a tmpfs (source name ``nhalv-run``, the signature of the bed's processes) on /run, with the
  bed's ``run/`` directory bound on /run/libvirt: the daemons' sockets, QEMU pid files;
* the bed's ``etc/`` on /etc/libvirt (libvirtd.conf, virtlogd.conf, qemu.conf: QEMU runs as
  root, no cgroups, no namespaces, no security driver) and copies of /etc/passwd and
  /etc/group that add the user ``libvirt-qemu`` and the group ``kvm``: libvirt 9.0's QEMU
  driver resolves both at start, before it reads qemu.conf, so no qemu.conf setting avoids
  them; the machine's own user database is not touched;
* overlays over /var/lib, /var/log and /var/cache (upper layers in the bed directory) only
  to have the mount points /var/lib/libvirt, /var/log/libvirt and /var/cache/libvirt, with
  the bed's ``lib/``, ``log/`` and ``cache/`` bound on them.

virtlogd and libvirtd are started in it with nsenter, QEMU is libvirtd's child there. The
machine's own libvirt configuration and state are never read or written. Clients outside
connect with ``bed.uri`` (``qemu:///system?socket=<bed>/run/libvirt-sock``); a path inside
the namespace is ``bed.host_path(path)`` outside.

Everything is stopped by PID (recorded with its start time) when the ``with`` block ends,
and a crashed run's processes are found by their /run tmpfs and killed before the next start.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from testbed.cluster import (
    Managed,
    Proc,
    _mnt_ns,
    _pids_in_mnt_ns,
    _signal,
    _start_time,
    _wait_gone,
)

BASE = Path(os.environ.get("NOVA_HA_LIBVIRT_DIR", "/tmp/nha-libvirt"))  # short: socket paths
STATE = BASE / "state.json"
RUN_TMPFS = "nhalv-run"
KEEP_RUNS = 2  # earlier runs' directories (logs, consoles) kept under BASE
BINARIES = ("libvirtd", "virtlogd", "virsh", "qemu-system-x86_64", "nsenter", "unshare")
NS_DIRS = {  # mount point inside -> the bed's directory
    "/run/libvirt": "run",
    "/etc/libvirt": "etc",
    "/var/lib/libvirt": "lib",
    "/var/log/libvirt": "log",
    "/var/cache/libvirt": "cache",
}

QEMU_CONF = """\
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
"""
LIBVIRTD_CONF = """\
auth_unix_rw = "none"
auth_unix_ro = "none"
unix_sock_rw_perms = "0700"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
"""
VIRTLOGD_CONF = 'log_outputs = "3:file:/var/log/libvirt/virtlogd.log"\n'


class LibvirtBedError(RuntimeError):
    pass


def missing_requirements() -> list[str]:
    """What this machine lacks to run the bed (empty when it can)."""
    missing = [] if os.geteuid() == 0 else ["root"]
    missing += [b for b in BINARIES if shutil.which(b) is None]
    try:
        import libvirt  # noqa: F401
    except ImportError:
        missing.append("the libvirt binding (python3-libvirt, make libvirt-binding)")
    return missing


def quiet_libvirt() -> None:
    """No libvirt error printed to stderr: the bed and the tests report errors themselves
    (libvirt's default handler prints every one, even those that are expected)."""
    import libvirt

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def has_kvm() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def _tmpfs_pids() -> list[int]:
    """Processes of any run of the bed: their /run is our tmpfs."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{entry}/mountinfo").read_text().splitlines():
                pre, _, post = line.partition(" - ")
                if pre.split()[4:5] == ["/run"] and post.split()[:2] == ["tmpfs", RUN_TMPFS]:
                    found.append(int(entry))
                    break
    return found


def cleanup_leftovers() -> list[int]:
    """Kill what a crashed earlier run left (unless its owner still runs). Returns PIDs."""
    with contextlib.suppress(OSError, ValueError):
        owner = json.loads(STATE.read_text())["owner"]
        if owner["pid"] != os.getpid() and _start_time(owner["pid"]) == owner["start"]:
            raise LibvirtBedError(f"another libvirt bed runs (pid {owner['pid']}, {STATE})")
    victims = [(pid, _start_time(pid)) for pid in _tmpfs_pids()]
    killed = [pid for pid, start in victims if _signal(pid, start, signal.SIGKILL)]
    _wait_gone(victims, 10)
    with contextlib.suppress(FileNotFoundError):
        STATE.unlink()
    return killed


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class LibvirtBed(Managed):
    """libvirtd + virtlogd in a private mount namespace. ``with LibvirtBed() as bed:``"""

    def __init__(self, base: Path = BASE) -> None:
        self.base = base
        self.dir = base / f"run-{os.getpid()}"
        self.holder: Proc | None = None
        self.procs: dict[str, Proc] = {}
        self.mnt_ns: str | None = None
        self.timings: dict[str, float] = {}
        self._started = False

    # -- addresses --------------------------------------------------------------------
    @property
    def socket(self) -> Path:
        return self.dir / "run" / "libvirt-sock"

    @property
    def uri(self) -> str:
        return f"qemu:///system?socket={self.socket}"

    @property
    def uri_ro(self) -> str:
        return f"qemu:///system?socket={self.socket}-ro"

    def host_path(self, inside: str | Path) -> Path:
        """Where a path of the bed's namespace (under NS_DIRS) is seen from outside."""
        inside = Path(inside)
        for mount, sub in NS_DIRS.items():
            if inside.is_relative_to(mount):
                return self.dir / sub / inside.relative_to(mount)
        return inside  # not private: the machine's own path

    def connect(self, read_only: bool = False) -> Any:
        import libvirt

        quiet_libvirt()
        return (libvirt.openReadOnly if read_only else libvirt.open)(
            self.uri_ro if read_only else self.uri
        )

    # -- start ------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> None:
        missing = missing_requirements()
        if missing:
            raise LibvirtBedError(f"cannot run the libvirt bed, missing: {missing}")
        t0 = time.monotonic()
        cleanup_leftovers()
        self._prune_runs()
        self._make_dirs()
        self._started = True
        self._start_holder()
        self._save_state()
        self.start_daemon("virtlogd")
        self.start_libvirtd(timeout)
        self.timings["start"] = time.monotonic() - t0

    def _prune_runs(self) -> None:
        """This run's directory afresh; of the earlier ones, the newest KEEP_RUNS stay."""
        shutil.rmtree(self.dir, ignore_errors=True)
        runs = sorted(self.base.glob("run-*"), key=lambda d: d.stat().st_mtime)
        for old in runs[:-KEEP_RUNS] if KEEP_RUNS else runs:
            shutil.rmtree(old, ignore_errors=True)

    def _make_dirs(self) -> None:
        for sub in (*NS_DIRS.values(), "log/qemu", "lib/qemu", "overlay"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        etc = self.dir / "etc"
        (etc / "qemu.conf").write_text(QEMU_CONF)
        (etc / "libvirtd.conf").write_text(LIBVIRTD_CONF)
        (etc / "virtlogd.conf").write_text(VIRTLOGD_CONF)
        passwd = Path("/etc/passwd").read_text()
        group = Path("/etc/group").read_text()
        if not any(line.startswith("libvirt-qemu:") for line in passwd.splitlines()):
            passwd += "libvirt-qemu:x:64055:64055:nova-ha libvirt bed:/var/lib/libvirt:/bin/false\n"
        for name, gid in (("kvm", 64056), ("libvirt-qemu", 64055)):
            if not any(line.startswith(f"{name}:") for line in group.splitlines()):
                group += f"{name}:x:{gid}:\n"
        (self.dir / "passwd").write_text(passwd)
        (self.dir / "group").write_text(group)

    def _mount_script(self) -> str:
        q = shlex.quote
        lines = ["set -e", f"mount -t tmpfs -o mode=0755 {RUN_TMPFS} /run"]
        for var in ("lib", "log", "cache"):
            upper, work = self.dir / "overlay" / var, self.dir / "overlay" / f"{var}.work"
            upper.mkdir(exist_ok=True)
            work.mkdir(exist_ok=True)
            opts = f"lowerdir=/var/{var},upperdir={upper},workdir={work}"
            lines.append(f"mount -t overlay nhalv-{var} -o {q(opts)} /var/{var}")
        for mount, sub in NS_DIRS.items():
            lines.append(f"mkdir -p {mount} && mount --bind {q(str(self.dir / sub))} {mount}")
        for name in ("passwd", "group"):
            lines.append(f"mount --bind {q(str(self.dir / name))} /etc/{name}")
        lines += ["echo ready", "exec sleep infinity </dev/null >/dev/null 2>&1"]
        return "\n".join(lines)

    def _start_holder(self) -> None:
        popen = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", self._mount_script()],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.holder = Proc("libvirt bed holder", popen, _start_time(popen.pid))
        assert popen.stdout is not None and popen.stderr is not None
        if popen.stdout.readline().strip() != "ready":
            popen.wait(10)
            raise LibvirtBedError(f"namespace setup failed: {popen.stderr.read()}")
        popen.stdout.close()
        popen.stderr.close()
        # nsenter finds the namespace through the holder's pid: it has exec'd its sleep.
        self.mnt_ns = _mnt_ns(popen.pid)

    def enter(self) -> list[str]:
        """argv prefix that runs a command in the bed's mount namespace."""
        if self.holder is None or not self.holder.alive():
            raise LibvirtBedError("the libvirt bed is not running")
        return ["nsenter", "-t", str(self.holder.pid), "-m", "--"]

    def start_daemon(self, name: str) -> Proc:
        out = open(self.dir / f"{name}.out", "ab")  # noqa: SIM115
        try:
            popen = subprocess.Popen(
                [*self.enter(), name],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a ^C to pytest must not reach the daemons first
            )
        finally:
            out.close()
        self.procs[name] = Proc(name, popen, _start_time(popen.pid))
        self._save_state()
        return self.procs[name]

    def start_libvirtd(self, timeout: float = 30.0) -> float:
        """Start libvirtd (again, after stop_libvirtd); returns seconds until it answers."""
        import libvirt

        t0 = time.monotonic()
        proc = self.start_daemon("libvirtd")
        while True:
            try:
                self.connect().close()
                return time.monotonic() - t0
            except libvirt.libvirtError as exc:
                if not proc.alive() or time.monotonic() - t0 > timeout:
                    raise LibvirtBedError(
                        f"libvirtd does not answer ({exc}): {self.log_tail('libvirtd.log')}"
                    ) from None
            time.sleep(0.05)

    def stop_libvirtd(self, sig: int = signal.SIGTERM) -> None:
        """Stop libvirtd only (its guests keep running), as a restart or a crash of it."""
        proc = self.procs.pop("libvirtd", None)
        if proc:
            proc.stop(sig)

    def _save_state(self) -> None:
        procs = [self.holder, *self.procs.values()] if self.holder else []
        state = {
            "owner": {"pid": os.getpid(), "start": _start_time(os.getpid())},
            "dir": str(self.dir),
            "processes": [{"what": p.what, "pid": p.pid, "start": p.start} for p in procs],
        }
        self.base.mkdir(parents=True, exist_ok=True)
        tmp = STATE.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        tmp.rename(STATE)

    # -- stop -------------------------------------------------------------------------
    def stop(self) -> None:
        """libvirtd and virtlogd (SIGTERM), then every process left in the namespace
        (guests' QEMUs), then the holder: all by PID."""
        if not self._started:
            return
        for name in ("libvirtd", "virtlogd"):
            if name in self.procs:
                self.procs.pop(name).stop(signal.SIGTERM, timeout=10)
        if self.mnt_ns:
            victims = [(p, _start_time(p)) for p in _pids_in_mnt_ns(self.mnt_ns)]
            for pid, start in victims:
                _signal(pid, start, signal.SIGKILL)
            _wait_gone(victims, 10)
        if self.holder:
            self.holder.stop(signal.SIGKILL)
        with contextlib.suppress(FileNotFoundError):
            STATE.unlink()
        self._started = False

    # -- looking at it ----------------------------------------------------------------
    def qemu_pid(self, name: str) -> int:
        """The PID of domain `name`'s QEMU (libvirt's pid file)."""
        return int(self.host_path(f"/run/libvirt/qemu/{name}.pid").read_text().strip())

    def rss_kb(self) -> dict[str, int]:
        """Resident memory of each daemon, in kB."""
        return {name: _rss_kb(p.pid) for name, p in self.procs.items() if p.alive()}

    def log_tail(self, name: str, lines: int = 20) -> str:
        """The end of a log file of /var/log/libvirt (e.g. 'libvirtd.log', 'qemu/x.log')."""
        try:
            text = (self.dir / "log" / name).read_text(errors="replace")
        except OSError:
            return f"({name}: no log)"
        return "\n".join(text.splitlines()[-lines:])
