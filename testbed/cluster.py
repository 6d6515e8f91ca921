"""A real Pacemaker cluster for the end-to-end tests: controllers, remote compute nodes, logs.

``Cluster()`` starts Debian's corosync (knet) and pacemakerd without systemd and without
touching the machine's own cluster configuration; ``add_remote(name)`` starts Debian's
pacemaker-remoted in a network namespace of its own and adds it as an
``ocf:pacemaker:remote`` resource. Everything is stopped by PID and deleted by name when the
``with`` block ends, also when a test failed, and a crashed run's leftovers are removed
before the next start.

How each node is isolated (every daemon runs in a *private mount namespace*, so nothing on
the machine is overwritten and there is nothing to back up or restore):

* Controller, one-node variant (``Cluster()``): root network namespace, corosync on
  127.0.0.1. A holder process (``unshare -m -u --propagation private``, hostname ``c1``)
  bind-mounts the bed's own directories over /etc/corosync, /var/lib/corosync,
  /var/lib/pacemaker, /var/log/corosync and /var/log/pacemaker, and a tmpfs over /run;
  corosync and pacemakerd are started inside it with ``nsenter``. /dev/shm stays shared on
  purpose: Pacemaker's command-line tools talk to the daemons through libqb IPC (abstract
  sockets of the network namespace plus ring buffers in /dev/shm), so ``crm_mon`` or
  ``cibadmin`` run from the root namespace, by the tests or by the agents, just work.
* Controllers, two-node variant (``Cluster(controllers=2)``): each in network namespace
  ``nha-cN`` (address .1N) with the same holder, plus a private tmpfs on /dev/shm; knet runs
  over the bridge. Reach one with ``run(..., node="c2")`` (``nsenter -t HOLDER -n -m -u``).
* Remote (compute) nodes: network namespace ``nha-<name>`` (address .101, .102, ...), a
  holder with tmpfs on /run and /dev/shm and the node's own /var/log/pacemaker and
  /var/lib/pacemaker; ``pacemaker-remoted`` runs inside it. One namespace each: two remoteds
  in one network namespace collide on their abstract socket names. /etc/pacemaker/authkey
  is the machine's (made by the pacemaker package) and is shared by all nodes, read-only.

Processes are recorded (PID + kernel start time, so a recycled PID is never signalled) in
``<base>/state.json`` (default /tmp/nova-ha-testbed), with the owning test process and the
test fence agent installed in /usr/sbin. Every node's /run is a tmpfs named ``nha-run``:
that mount, visible in /proc/PID/mountinfo, identifies a crashed run's processes
(pacemakerd's children, agents) that were never recorded. Logs and each node's files stay
in ``<base>/run-*`` (the last three runs are kept).

Network: only loopback and the bed's private /24 on its own bridge (see ``netns``).

Timing (measured on 2 cores; see tests/test_cluster_bed.py): start ~5 s (dc-deadtime=2s is
in the first CIB: with the default 20 s election it is ~23 s); a remote node is Online ~1.5
to 2.5 s after add_remote; kill -9 of a remoted -> fence request ~0.05 s; a cut link ->
fence request between monitor timeout and interval + timeout (~12 s with 5s/10s); a powered
on remote is reconnected only after reconnect_interval *and* the next scheduler run (with
nothing else going on, the cluster-recheck-interval: hence 5s here; ~6.5 s to Online). A
failing fence device is retried about once a second, and Pacemaker gives up after
stonith-max-attempts (10) failures for a target.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from testbed import netns
from testbed.util import ROOT

CACHE = Path(os.environ.get("NOVA_HA_CACHE", ROOT / ".cache"))
REMOTED_DIR = CACHE / "pacemaker-remote"
REMOTED = REMOTED_DIR / "usr" / "sbin" / "pacemaker-remoted"
BASE = Path(os.environ.get("NOVA_HA_TESTBED_DIR", "/tmp/nova-ha-testbed"))
STATE = BASE / "state.json"
TEST_AGENT = Path("/usr/sbin/fence_nha_testbed")
_AGENT_MARKER = "# nova-ha test bed fence agent"
REQUIRED_BINARIES = (
    "corosync",
    "corosync-keygen",
    "corosync-quorumtool",
    "pacemakerd",
    "crm_mon",
    "cibadmin",
    "crm_attribute",
    "stonith_admin",
    "pcs",
    "ip",
    "nsenter",
    "unshare",
)
CONTROLLER_BASE = 10  # controller cN in a namespace has address .(10+N)
REMOTE_BASE = 100  # the k-th remote node (k from 1) has address .(100+k)
KEEP_RUNS = 2  # earlier runs' directories (logs) kept under BASE


class ClusterError(RuntimeError):
    pass


_ACTIVE: Cluster | None = None  # the started bed of this process


# -- processes ------------------------------------------------------------------------


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # comm may contain spaces and parentheses: split after the last ')'.
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return fields[19]


def _mnt_ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


RUN_TMPFS = f"{netns.PREFIX}run"  # the source name of every bed node's tmpfs on /run


def _bed_pids() -> list[int]:
    """Every process that runs in a mount namespace of the bed (any run of it): one with
    our tmpfs named `RUN_TMPFS` mounted on /run. A mount namespace's inode number may be
    reused once it is gone; this signature cannot be mistaken for anyone else's."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/mountinfo") as f:
                for line in f:
                    pre, _, post = line.partition(" - ")
                    fields = pre.split()
                    if (
                        len(fields) > 4
                        and fields[4] == "/run"
                        and post.split()[:2] == ["tmpfs", RUN_TMPFS]
                    ):
                        found.append(int(entry))
                        break
        except OSError:
            continue
    return found


def _pids_in_mnt_ns(ns: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid() and _mnt_ns(int(entry)) == ns:
            pids.append(int(entry))
    return pids


def _alive(pid: int, start: str | None) -> bool:
    now = _start_time(pid)
    return now is not None and (start is None or now == start)


def _signal(pid: int, start: str | None, sig: int) -> bool:
    if not _alive(pid, start):
        return False
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False


def _wait_gone(pids: Sequence[tuple[int, str | None]], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if not any(_alive(p, s) for p, s in pids):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


@dataclass
class Proc:
    """A process the bed started (a subprocess.Popen that we reap)."""

    what: str
    popen: subprocess.Popen
    start: str | None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def send(self, sig: int) -> bool:
        if self.popen.poll() is not None:
            return False
        return _signal(self.pid, self.start, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """`sig`, wait up to `timeout`, then SIGKILL."""
        if self.send(sig):
            try:
                self.popen.wait(timeout)
                return
            except subprocess.TimeoutExpired:
                pass
        if self.send(signal.SIGKILL):
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(10)


# -- the test fence agent ---------------------------------------------------------------

# Installed as /usr/sbin/fence_nha_testbed only while a bed that asked for it runs (Pacemaker
# finds stonith agents in /usr/sbin only). It records every request to `record_file` and
# succeeds; `fail_file` (if that file exists, the request fails) and `delay` are for tests
# of retries and timeouts. Pacemaker runs `metadata` as hacluster with no argv and the
# parameters on stdin, fence actions as root; it passes `port` (not `plug`) and `nodename`.
_AGENT_PARAMS = (  # name, getopt, content type, default, description
    ("action", "-o, --action=[action]", "string", "reboot", "Fencing action"),
    ("port", "-n, --plug=[id]", "string", None, "Node to fence"),
    ("plug", "-n, --plug=[id]", "string", None, "Node to fence"),
    ("record_file", "--record-file=[path]", "string", None, "Requests are appended here"),
    ("fail_file", "--fail-file=[path]", "string", None, "While it exists, fencing fails"),
    ("delay", "--delay=[seconds]", "second", "0", "Seconds to wait before acting"),
)
_AGENT_PARAMETERS = "\n".join(
    f'<parameter name="{name}" unique="0" required="0"><getopt mixed="{getopt}"/>'
    f'<content type="{kind}"' + (f' default="{default}"' if default else "") + "/>"
    f'<shortdesc lang="en">{desc}</shortdesc></parameter>'
    for name, getopt, kind, default, desc in _AGENT_PARAMS
)
TEST_AGENT_SCRIPT = f"""#!/bin/sh
{_AGENT_MARKER}: records each request and succeeds. Removed when the bed stops.
action=; port=; record=; fail=; delay=0
while [ $# -gt 0 ]; do
    case "$1" in
        -o) action=$2; shift ;; --action=*) action=${{1#*=}} ;;
        -n) port=$2; shift ;; --plug=*) port=${{1#*=}} ;;
    esac
    shift
done
if [ -z "$action" ] && [ ! -t 0 ]; then
    while IFS= read -r line; do
        case "$line" in
            action=*) action=${{line#action=}} ;;
            option=*) [ -n "$action" ] || action=${{line#option=}} ;;
            port=*|plug=*) port=${{line#*=}} ;;
            nodename=*) [ -n "$port" ] || port=${{line#nodename=}} ;;
            record_file=*) record=${{line#record_file=}} ;;
            fail_file=*) fail=${{line#fail_file=}} ;;
            delay=*) delay=${{line#delay=}} ;;
        esac
    done
fi
case "$action" in
    metadata)
        cat <<'XML'
<?xml version="1.0" ?>
<resource-agent name="fence_nha_testbed" shortdesc="nova-ha test bed: records fence requests">
<longdesc>Records every fence request in record_file and reports success. Test bed only.</longdesc>
<parameters>
{_AGENT_PARAMETERS}
</parameters>
<actions>
<action name="on" automatic="0"/>
<action name="off"/>
<action name="reboot"/>
<action name="status"/>
<action name="monitor"/>
<action name="list"/>
<action name="metadata"/>
<action name="validate-all"/>
</actions>
</resource-agent>
XML
        exit 0 ;;
    on|off|reboot)
        [ "$delay" = 0 ] || sleep "$delay"
        result=ok
        if [ -n "$fail" ] && [ -e "$fail" ]; then result=failed; fi
        if [ -n "$record" ]; then
            echo "$(date +%s.%N) $action $port $result" >> "$record"
        fi
        [ "$result" = ok ] && exit 0
        exit 1 ;;
    status|monitor|validate-all|list|list-status) exit 0 ;;
    *) echo "unsupported action: $action" >&2; exit 1 ;;
esac
"""


@dataclass
class FenceRecord:
    at: float  # time.time() when the agent ran
    action: str
    target: str
    result: str


def read_fence_records(path: Path | str) -> list[FenceRecord]:
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        parts = line.split()
        if len(parts) >= 4:
            out.append(FenceRecord(float(parts[0]), parts[1], parts[2], parts[3]))
    return out


# -- requirements ---------------------------------------------------------------------


def ensure_remoted() -> Path:
    """Debian's pacemaker-remoted, extracted from its package into the repository's cache.

    `pacemaker-remote` conflicts with `pacemaker`, so it is never installed: its package is
    downloaded (the version matching the installed pacemaker, whose libraries it runs on)
    and unpacked with dpkg-deb -x."""
    if REMOTED.is_file():
        return REMOTED
    version = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "pacemaker"], capture_output=True, text=True
    ).stdout.strip()
    spec = f"pacemaker-remote={version}" if version else "pacemaker-remote"
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)  # apt's _apt user downloads into it
        for attempt in (1, 2):
            res = subprocess.run(
                ["apt-get", "download", spec], cwd=tmp, capture_output=True, text=True, timeout=300
            )
            if res.returncode == 0 or attempt == 2:
                break
            # A fresh machine may have no package lists yet.
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=300)
        debs = list(Path(tmp).glob("pacemaker-remote_*.deb"))
        if res.returncode != 0 or not debs:
            raise RuntimeError(f"apt-get download {spec} failed: {res.stderr.strip()}")
        REMOTED_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(REMOTED_DIR)], check=True, timeout=120)
    if not REMOTED.is_file():
        raise RuntimeError(f"{REMOTED} missing after extracting the package")
    return REMOTED


def missing_requirements() -> list[str]:
    """What this machine lacks to run the bed (empty when it can)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root")
    missing += [b for b in REQUIRED_BINARIES if shutil.which(b) is None]
    if not Path("/etc/pacemaker/authkey").is_file():
        missing.append("/etc/pacemaker/authkey")
    try:
        pwd.getpwnam("hacluster")
        grp.getgrnam("haclient")
    except KeyError:
        missing.append("user hacluster / group haclient")
    if not missing:
        try:
            ensure_remoted()
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            missing.append(f"pacemaker-remoted ({exc})")
    return missing


# -- state of the bed, for crash recovery ---------------------------------------------------


def _load_state() -> dict:
    try:
        return json.loads(STATE.read_text())
    except (OSError, ValueError):
        return {}


def cleanup_leftovers(prefix: str = netns.PREFIX) -> list[str]:
    """Remove what a crashed earlier run of the bed left: its recorded processes (and every
    process in its recorded mount namespaces), its namespaces and links, its fence agent."""
    removed = []
    state = _load_state()
    owner = state.get("owner")
    if owner and owner["pid"] != os.getpid() and _alive(owner["pid"], owner["start"]):
        raise ClusterError(f"another test bed runs (pid {owner['pid']}, {STATE})")
    victims = {p: _start_time(p) for p in _bed_pids()}
    for p in state.get("processes", []):
        victims.setdefault(p["pid"], p["start"])
    victims = list(victims.items())
    for pid, start in victims:
        if _signal(pid, start, signal.SIGKILL):
            removed.append(f"pid {pid}")
    _wait_gone(victims, 10)
    removed += netns.cleanup_leftovers(prefix)
    for agent in state.get("agents", []):
        path = Path(agent)
        with contextlib.suppress(OSError):
            if _AGENT_MARKER in path.read_text():
                path.unlink()
                removed.append(str(path))
    with contextlib.suppress(FileNotFoundError):
        STATE.unlink()
    return removed


def _foreign_cluster_daemons() -> list[str]:
    """corosync/pacemaker daemons running in the root network namespace, not ours."""
    own_net = os.readlink("/proc/self/ns/net")
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            comm = Path(f"/proc/{entry}/comm").read_text().strip()
            if (
                comm in ("corosync", "pacemakerd")
                and os.readlink(f"/proc/{entry}/ns/net") == own_net
            ):
                found.append(f"{comm} (pid {entry})")
        except OSError:
            continue
    return found


# -- nodes ------------------------------------------------------------------------------


def _chown(path: Path, user: str = "hacluster", group: str = "haclient") -> None:
    os.chown(path, pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid)


@dataclass
class _Host:
    """A node: a holder process owning its private mount (and UTS) namespace, maybe in a
    network namespace of its own; its daemons are started into it with nsenter."""

    name: str
    dir: Path  # the node's directory under the run directory (its private /etc, /var, logs)
    address: str
    netns: str | None  # None: the root network namespace
    binds: dict[str, Path]  # mount point -> host directory
    private_shm: bool
    holder: Proc | None = None
    mnt_ns: str | None = None
    procs: dict[str, Proc] = field(default_factory=dict)

    def enter(self) -> list[str]:
        """argv prefix that runs a command in this node (network, mounts, hostname)."""
        if self.holder is None or not self.holder.alive():
            raise ClusterError(f"{self.name} is not running (powered off?)")
        return (
            ["nsenter", "-t", str(self.holder.pid), "-m", "-u"]
            + (["-n"] if self.netns else [])
            + ["--"]
        )

    def mount_script(self) -> str:
        lines = ["set -e"]
        # Mounts under /run first: bind sources below must not be hidden by the tmpfs.
        lines.append(f"mount -t tmpfs -o mode=0755 {RUN_TMPFS} /run")
        lines.append("mkdir -p /run/lock /run/fence-agents /run/resource-agents /run/crm")
        lines.append("chmod 1777 /run/lock")
        if self.private_shm:
            lines.append(f"mount -t tmpfs -o mode=1777 {netns.PREFIX}shm /dev/shm")
        for target, source in self.binds.items():
            lines.append(f"mount --bind {shlex.quote(str(source))} {shlex.quote(target)}")
        lines.append(f"echo {shlex.quote(self.name)} > /proc/sys/kernel/hostname")
        lines.append("echo ready")
        lines.append("exec sleep infinity </dev/null >/dev/null 2>&1")
        return "\n".join(lines)


def _make_dirs(node_dir: Path, controller: bool) -> dict[str, Path]:
    """The node's private directories, as mount point -> host directory."""
    binds: dict[str, Path] = {}
    lib_pcmk = node_dir / "var-lib-pacemaker"
    for sub in ("cib", "pengine", "blackbox", "cores", "bundles"):
        (lib_pcmk / sub).mkdir(parents=True, exist_ok=True)
        _chown(lib_pcmk / sub)
        os.chmod(lib_pcmk / sub, 0o750)
    binds["/var/lib/pacemaker"] = lib_pcmk
    log_pcmk = node_dir / "log" / "pacemaker"
    log_pcmk.mkdir(parents=True, exist_ok=True)
    _chown(log_pcmk)
    os.chmod(log_pcmk, 0o770)
    binds["/var/log/pacemaker"] = log_pcmk
    if controller:
        for mount, sub in (
            ("/etc/corosync", "etc-corosync"),
            ("/var/lib/corosync", "var-lib-corosync"),
            ("/var/log/corosync", "log/corosync"),
        ):
            (node_dir / sub).mkdir(parents=True, exist_ok=True)
            if Path(mount).is_dir():  # a bind needs an existing mount point
                binds[mount] = node_dir / sub
    return binds


@dataclass
class RemoteNode:
    name: str
    address: str
    netns: str
    host: _Host
    monitor_interval: str
    monitor_timeout: str
    reconnect_interval: str

    @property
    def remoted(self) -> Proc | None:
        return self.host.procs.get("pacemaker-remoted")

    @property
    def pid(self) -> int | None:
        proc = self.remoted
        return proc.pid if proc and proc.alive() else None


class Managed:
    """A context manager over start() and stop(): stopped also when start() fails."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def log_lines(path: Path, contains: str, after: float = 0.0) -> list[tuple[float, str]]:
    """(time.time(), line) of the lines of a Pacemaker log file that contain `contains`,
    stamped at or after `after` ("Nov 22 17:01:02.123 node daemon ..." lines)."""
    import datetime

    year = time.localtime().tm_year
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        if contains not in line:
            continue
        month, day, clock = line.split(None, 3)[:3]
        try:
            stamp = datetime.datetime.strptime(
                f"{year} {month} {day} {clock}", "%Y %b %d %H:%M:%S.%f"
            ).timestamp()
        except ValueError:
            continue
        if stamp >= after:
            found.append((stamp, line))
    return found


class Cluster(Managed):
    """A live Pacemaker cluster: `controllers` full nodes (1: on loopback; 2: in network
    namespaces), plus pacemaker-remote nodes added with `add_remote`.

    Use as a context manager; `timings` collects what the bed measured (seconds)."""

    def __init__(
        self,
        controllers: int = 1,
        *,
        prefix: str = netns.PREFIX,
        subnet: str = netns.SUBNET,
        token_ms: int = 1000,
        properties: dict[str, str] | None = None,
        cluster_name: str = "nha",
        env: dict[str, str] | None = None,
    ) -> None:
        if controllers not in (1, 2):
            raise ValueError("controllers must be 1 or 2")
        self.n_controllers = controllers
        self.prefix = prefix
        self.token_ms = token_ms
        self.cluster_name = cluster_name
        self.properties = {
            "dc-deadtime": "2s",  # the default 20 s DC election makes every start take 23 s
            "stonith-enabled": "true",
            # One node always has quorum by itself; two use corosync's two_node mode.
            "no-quorum-policy": "ignore" if controllers == 1 else "stop",
            # A remote node that comes back is reconnected (after reconnect_interval) only
            # when the scheduler next runs: with nothing else happening, that is the recheck
            # timer. 5 s keeps power-on -> Online short.
            "cluster-recheck-interval": "5s",
            "stonith-timeout": "60s",
        }
        self.properties.update(properties or {})
        # Extra environment of every daemon (Pacemaker passes it on to the agents it runs,
        # as /etc/default/pacemaker does on a production node).
        self.env = dict(env or {})
        self.network = netns.Network(prefix=prefix, subnet=subnet)
        self.controller_names = [f"c{i}" for i in range(1, controllers + 1)]
        self.controllers: dict[str, _Host] = {}
        self.remotes: dict[str, RemoteNode] = {}
        self.run_dir: Path | None = None
        self.timings: dict[str, float] = {}
        self.fence_record: Path | None = None
        self._agent_installed = False
        self._started = False
        # A BMC simulator calls kill_namespace_processes/start_remote from its own thread.
        self._lock = threading.RLock()

    # -- properties -----------------------------------------------------------------
    @property
    def host_address(self) -> str:
        """The root namespace's address on the bed's bridge: a server in the root namespace
        (Nova box, BMC simulator) must also listen here to be reachable from remote nodes
        (their own 127.0.0.1 is their namespace's loopback)."""
        return self.network.host_address

    @property
    def remote_names(self) -> list[str]:
        return list(self.remotes)

    # -- state file -----------------------------------------------------------------
    def _save_state(self) -> None:
        procs = []
        hosts = list(self.controllers.values()) + [r.host for r in self.remotes.values()]
        for host in hosts:
            for proc in ([host.holder] if host.holder else []) + list(host.procs.values()):
                procs.append({"pid": proc.pid, "start": proc.start, "what": proc.what})
        state = {
            "owner": {"pid": os.getpid(), "start": _start_time(os.getpid())},
            "run_dir": str(self.run_dir),
            "prefix": self.prefix,
            "processes": procs,
            "agents": [str(TEST_AGENT)] if self._agent_installed else [],
        }
        with self._lock:
            tmp = STATE.with_suffix(".tmp")
            tmp.write_text(json.dumps(state, indent=1))
            tmp.replace(STATE)

    # -- start / stop ---------------------------------------------------------------
    def start(self, timeout: float = 90.0) -> None:
        global _ACTIVE
        t0 = time.monotonic()
        missing = missing_requirements()
        if missing:
            raise ClusterError("cannot run the cluster test bed: missing " + ", ".join(missing))
        if _ACTIVE is not None and _ACTIVE is not self and _ACTIVE._started:
            # One bed per machine: they share the prefix, the subnet and the state file.
            raise ClusterError("another Cluster of this process is running: stop it first")
        BASE.mkdir(parents=True, exist_ok=True)
        cleanup_leftovers(self.prefix)
        foreign = _foreign_cluster_daemons()
        if foreign and self.n_controllers == 1:
            raise ClusterError("a cluster already runs on this machine: " + ", ".join(foreign))
        self._prune_runs()
        self.run_dir = Path(tempfile.mkdtemp(prefix=time.strftime("run-%Y%m%d-%H%M%S-"), dir=BASE))
        os.chmod(self.run_dir, 0o755)
        fence_dir = self.run_dir / "fence"
        fence_dir.mkdir()
        os.chmod(fence_dir, 0o777)
        self.fence_record = fence_dir / "requests.log"
        self._started = True
        _ACTIVE = self
        self._save_state()
        self.network.up()

        for i, name in enumerate(self.controller_names, start=1):
            self.controllers[name] = self._make_controller(name, i)
        for host in self.controllers.values():
            self._start_holder(host)
        for host in self.controllers.values():
            self._start_corosync(host)
        self._wait_membership(timeout)
        for host in self.controllers.values():
            self._start_pacemaker(host)
        self.wait_online(timeout - (time.monotonic() - t0))
        self.timings["cluster_start"] = time.monotonic() - t0

    def _prune_runs(self) -> None:
        runs = sorted(p for p in BASE.glob("run-*") if p.is_dir())
        for old in runs[:-KEEP_RUNS] if KEEP_RUNS else runs:
            shutil.rmtree(old, ignore_errors=True)

    def _make_controller(self, name: str, index: int) -> _Host:
        node_dir = self.run_dir / name
        if self.n_controllers == 1:
            address, ns = "127.0.0.1", None
        else:
            address = f"{self.network.subnet}.{CONTROLLER_BASE + index}"
            ns = self.network.add_node(name, CONTROLLER_BASE + index).netns
        binds = _make_dirs(node_dir, controller=True)
        host = _Host(
            name=name,
            dir=node_dir,
            address=address,
            netns=ns,
            binds=binds,
            private_shm=ns is not None,
        )
        self._write_corosync_conf(host)
        self._write_cib(host)
        return host

    def _write_corosync_conf(self, host: _Host) -> None:
        etc = host.dir / "etc-corosync"
        nodes = []
        for i, name in enumerate(self.controller_names, start=1):
            addr = (
                "127.0.0.1"
                if self.n_controllers == 1
                else f"{self.network.subnet}.{CONTROLLER_BASE + i}"
            )
            # corosync.conf: one setting per line; `node { name: c1` is a syntax error.
            nodes.append(
                textwrap.dedent(f"""\
                node {{
                    ring0_addr: {addr}
                    name: {name}
                    nodeid: {i}
                }}""")
            )
        two_node = "    two_node: 1\n" if self.n_controllers == 2 else ""
        # /var/log/corosync (made by the corosync package) is bind-mounted to the node's own
        # directory; without it, corosync logs next to pacemaker.
        logfile = (
            "/var/log/corosync/corosync.log"
            if "/var/log/corosync" in host.binds
            else "/var/log/pacemaker/corosync.log"
        )
        conf = (
            "totem {\n"
            "    version: 2\n"
            f"    cluster_name: {self.cluster_name}\n"
            "    transport: knet\n"
            f"    token: {self.token_ms}\n"
            "    crypto_cipher: aes256\n"
            "    crypto_hash: sha256\n"
            "}\n"
            "nodelist {\n" + textwrap.indent("\n".join(nodes), "    ") + "\n"
            "}\n"
            "quorum {\n"
            "    provider: corosync_votequorum\n"
            f"{two_node}"
            "}\n"
            "logging {\n"
            "    to_logfile: yes\n"
            f"    logfile: {logfile}\n"
            "    to_stderr: no\n"
            "    to_syslog: no\n"
            "    timestamp: on\n"
            "}\n"
        )
        (etc / "corosync.conf").write_text(conf)
        key = etc / "authkey"
        if not key.exists():
            shared = self.run_dir / "corosync-authkey"  # every controller needs the same key
            if not shared.exists():
                subprocess.run(
                    ["corosync-keygen", "-l", "-k", str(shared)],
                    check=True,
                    capture_output=True,
                    timeout=60,
                )
            shutil.copy2(shared, key)
            os.chmod(key, 0o400)

    def _write_cib(self, host: _Host) -> None:
        """A first CIB with the cluster properties already set: with dc-deadtime in the CIB
        from the start, the first DC election takes ~2 s instead of the default 20 s.
        (Without cib.xml.sig, pacemaker-based only warns that no digest is present.)"""
        empty = subprocess.run(
            ["cibadmin", "--empty"], capture_output=True, text=True, check=True, timeout=30
        ).stdout
        nvpairs = "".join(
            f'<nvpair id="cib-bootstrap-options-{k}" name="{k}" value="{v}"/>'
            for k, v in self.properties.items()
        )
        crm_config = (
            '<crm_config><cluster_property_set id="cib-bootstrap-options">'
            f"{nvpairs}</cluster_property_set></crm_config>"
        )
        text = empty.replace("<crm_config/>", crm_config)
        cib = host.dir / "var-lib-pacemaker" / "cib" / "cib.xml"
        cib.write_text(text)
        _chown(cib)
        os.chmod(cib, 0o600)

    def _popen(
        self,
        host: _Host,
        what: str,
        argv: Sequence[str],
        env: dict | None = None,
        log_name: str | None = None,
    ) -> Proc:
        out = open(host.dir / f"{log_name or what}.out", "ab")  # noqa: SIM115
        try:
            popen = subprocess.Popen(
                [*host.enter(), *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(os.environ, **(env or {})),
                start_new_session=True,
            )  # a ^C to pytest must not kill the daemons first
        finally:
            out.close()
        proc = Proc(what, popen, _start_time(popen.pid))
        host.procs[what] = proc
        self._save_state()
        return proc

    def _start_holder(self, host: _Host) -> None:
        argv = ["unshare", "-m", "-u", "--propagation", "private", "sh", "-c", host.mount_script()]
        if host.netns:
            argv = netns.exec_argv(host.netns, argv)
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        host.holder = Proc(f"{host.name} holder", popen, _start_time(popen.pid))
        self._save_state()
        line = popen.stdout.readline().strip()
        if line != "ready":
            popen.wait(10)
            raise ClusterError(f"{host.name}: namespace setup failed: {popen.stderr.read()}")
        popen.stdout.close()
        popen.stderr.close()
        # nsenter resolves the namespace of the holder's pid, so the holder must have exec'd
        # its `sleep` (same pid) after the mounts: it has, once "ready" was printed.
        host.mnt_ns = _mnt_ns(popen.pid)
        self._save_state()

    def _pcmk_env(self) -> dict[str, str]:
        return {
            "PCMK_logfile": "/var/log/pacemaker/pacemaker.log",
            "PCMK_logfacility": "none",  # no syslog: every line goes to the bed's file
            "PCMK_debug": "no",
            "PCMK_blackbox": "no",
            **self.env,
        }

    def _start_corosync(self, host: _Host) -> None:
        self._popen(host, "corosync", ["corosync", "-f"], env=self.env)

    def _wait_membership(self, timeout: float) -> None:
        """Every controller's corosync answers and sees all controllers (quorate)."""
        deadline = time.monotonic() + timeout
        pending = set(self.controllers)
        while pending:
            for name in sorted(pending):
                host = self.controllers[name]
                proc = host.procs["corosync"]
                if not proc.alive():
                    raise ClusterError(
                        f"corosync on {name} exited: " + self._tail(host.dir / "corosync.out", 20)
                    )
                res = subprocess.run(
                    [*host.enter(), "corosync-quorumtool", "-s"],
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
                if re.search(r"^Quorate:\s+Yes", res.stdout, re.M):
                    pending.discard(name)
            if pending:
                if time.monotonic() > deadline:
                    raise ClusterError(f"corosync membership incomplete on {sorted(pending)}")
                time.sleep(0.1)

    def _start_pacemaker(self, host: _Host) -> None:
        self._popen(host, "pacemakerd", ["pacemakerd"], env=self._pcmk_env())

    def stop(self) -> None:
        """Stop everything the bed started, by PID; delete its namespaces and links."""
        if not self._started:
            return
        t0 = time.monotonic()
        errors = []
        # Reconnect cut links first: a connection resource that cannot reach its node would
        # make pacemakerd's shutdown wait for the stop operation's timeout.
        for name in self.remotes:
            with contextlib.suppress(Exception):
                self.network.restore_link(name)
        # 1. Controllers one after the other, the DC last: pacemakerd (SIGTERM stops its
        # resources and children, then itself), then that node's corosync. (Stopping all
        # pacemakerds at once left the DC waiting 60 s for actions it had sent to a node
        # that was shutting down but still in the corosync membership.)
        for host in self._stop_order():
            pcmkd = host.procs.get("pacemakerd")
            if pcmkd and pcmkd.send(signal.SIGTERM):
                try:
                    pcmkd.popen.wait(60)
                except subprocess.TimeoutExpired:
                    errors.append(f"pacemakerd on {host.name} ignored SIGTERM for 60 s")
                    pcmkd.stop(signal.SIGKILL)
            if "corosync" in host.procs:
                host.procs["corosync"].stop(signal.SIGTERM, timeout=15)
        # 2. remote nodes: the remoted, then whatever else runs in the node.
        for remote in self.remotes.values():
            if remote.remoted:
                remote.remoted.stop(signal.SIGTERM, timeout=10)
        # 3. anything left in any node's mount namespace (pacemakerd's children after a
        # SIGKILL, agents' processes), then the holders.
        for host in list(self.controllers.values()) + [r.host for r in self.remotes.values()]:
            self._kill_host(host)
        # ... and any process of ours that moved into a further mount namespace of its own
        # (it still has the bed's /run): no node of the bed is left now.
        stray = [(p, _start_time(p)) for p in _bed_pids()]
        for pid, start in stray:
            _signal(pid, start, signal.SIGKILL)
        _wait_gone(stray, 10)
        # 4. network.
        try:
            self.network.down()
        except Exception as exc:  # noqa: BLE001
            errors.append(f"network: {exc}")
        netns.cleanup_leftovers(self.prefix)
        # 5. the test fence agent.
        self.uninstall_test_agent()
        with contextlib.suppress(FileNotFoundError):
            STATE.unlink()
        self._started = False
        self.timings["cluster_stop"] = time.monotonic() - t0
        if errors:
            raise ClusterError("; ".join(errors))

    def _stop_order(self) -> list[_Host]:
        hosts = list(self.controllers.values())
        if len(hosts) > 1:
            with contextlib.suppress(ClusterError):
                dc = self.nodes().get("_dc", {}).get("name")
                hosts.sort(key=lambda h: h.name == dc)
        return hosts

    def _kill_host(self, host: _Host) -> list[int]:
        """SIGKILL every process of the node (its mount namespace, and its network
        namespace if it has one), including the holder. Returns the PIDs killed."""
        killed = []
        for _ in range(50):
            victims = []
            if host.mnt_ns:
                victims += _pids_in_mnt_ns(host.mnt_ns)
            if host.netns and host.netns in netns.list_namespaces(self.prefix):
                victims += netns.namespace_pids(host.netns)
            victims = [p for p in set(victims) if p != os.getpid()]
            if not victims:
                break
            for pid in victims:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.05)
        for proc in ([host.holder] if host.holder else []) + list(host.procs.values()):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(5)  # reap our children
        host.mnt_ns = None
        return killed

    def processes(self, name: str, program: str) -> list[tuple[int, list[str]]]:
        """(pid, argv) of every process of node `name` (controller or remote) whose program
        (argv[0], or the script an interpreter runs) ends with `program`."""
        host = self.controllers[name] if name in self.controllers else self.remotes[name].host
        if not host.mnt_ns:
            return []
        found = []
        for pid in _pids_in_mnt_ns(host.mnt_ns):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            args = argv.split("\0")
            if any(a.endswith(program) for a in args[:2]):
                found.append((pid, args))
        return found

    # -- running tools ----------------------------------------------------------------
    def controller(self, node: str | None = None) -> _Host:
        """The named controller, or the first one whose daemons run."""
        if node is not None:
            return self.controllers[node]
        for host in self.controllers.values():
            if (
                host.holder
                and host.holder.alive()
                and "pacemakerd" in host.procs
                and host.procs["pacemakerd"].alive()
            ):
                return host
        raise ClusterError("no controller is running")

    def run(
        self,
        cmd: str | Sequence[str],
        *,
        node: str | None = None,
        check: bool = True,
        input: str | None = None,
        timeout: float = 60,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess:
        """Run a command on a controller (its namespaces: the bed's /etc/corosync, etc.)."""
        argv = shlex.split(cmd) if isinstance(cmd, str) else list(cmd)
        host = self.controller(node)
        base = {k: v for k, v in os.environ.items() if k != "CIB_file"}  # the live CIB
        res = subprocess.run(
            [*host.enter(), *argv],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=dict(base, **(env or {})),
        )
        if check and res.returncode != 0:
            raise ClusterError(
                f"{' '.join(argv)} on {host.name} exited {res.returncode}: "
                f"{res.stderr.strip() or res.stdout.strip()}"
            )
        return res

    def crm_mon(self, node: str | None = None):
        """`crm_mon -1 --output-as=xml`, parsed (lxml)."""
        from lxml import etree

        res = self.run(["crm_mon", "-1", "--output-as=xml", "--include=all"], node=node)
        return etree.fromstring(res.stdout.encode())

    def cibadmin(
        self, *args: str, input: str | None = None, node: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess:
        return self.run(["cibadmin", *args], input=input, node=node, check=check)

    def pcs(
        self,
        *args: str,
        cib_file: str | Path | None = None,
        node: str | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess:
        """Live pcs (no pcsd needed for resource/stonith/property commands), or `pcs -f`."""
        pre = ["-f", str(cib_file)] if cib_file else []
        return self.run(["pcs", *pre, *args], node=node, check=check, timeout=120)

    def stonith_admin(
        self, *args: str, node: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess:
        return self.run(["stonith_admin", *args], node=node, check=check)

    def crm_attribute(
        self, *args: str, node: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess:
        return self.run(["crm_attribute", *args], node=node, check=check)

    def crm_resource(
        self, *args: str, node: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess:
        return self.run(["crm_resource", *args], node=node, check=check)

    def set_property(self, name: str, value: str) -> None:
        self.crm_attribute("--type", "crm_config", "--name", name, "--update", value)

    def cib_create(self, section: str, xml: str, node: str | None = None) -> None:
        self.cibadmin("--create", "-o", section, "--xml-pipe", input=xml, node=node)

    # -- state ------------------------------------------------------------------------
    def nodes(self, node: str | None = None, mon=None) -> dict[str, dict[str, str]]:
        """crm_mon's view of every node: name -> attributes (online, type, unclean, ...);
        key "_dc" holds the current_dc element's attributes. {} if crm_mon fails."""
        if mon is None:
            try:
                mon = self.crm_mon(node)
            except (ClusterError, subprocess.TimeoutExpired, ValueError):
                return {}
        out = {}
        for n in mon.iterfind("nodes/node"):
            out[n.get("name")] = dict(n.attrib)
        dc = mon.find("summary/current_dc")
        if dc is not None:
            out["_dc"] = dict(dc.attrib)
        return out

    def resources(self, node: str | None = None, mon=None) -> dict[str, dict]:
        """crm_mon's primitives: id -> attributes (role, active, failed, pending...) plus
        "nodes": the names of the nodes it runs on. {} if crm_mon fails."""
        if mon is None:
            try:
                mon = self.crm_mon(node)
            except (ClusterError, subprocess.TimeoutExpired, ValueError):
                return {}
        out = {}
        for r in mon.iter("resource"):
            out[r.get("id")] = dict(r.attrib, nodes=[n.get("name") for n in r.iter("node")])
        return out

    def is_online(self, name: str, node: str | None = None) -> bool:
        """Online and clean; for a remote node also its connection resource Started (not
        Starting, not failed) on an online controller. (A remote node whose connection is
        still starting shows as "UNCLEAN (online)" for a moment, and after its controller
        died it shows online, from the stale status, until the survivor reconnects.)"""
        try:
            mon = self.crm_mon(node)
        except (ClusterError, subprocess.TimeoutExpired, ValueError):
            return False
        nodes = self.nodes(mon=mon)
        state = nodes.get(name, {})
        if (
            state.get("online") != "true"
            or state.get("unclean") == "true"
            or state.get("pending") == "true"
        ):
            return False
        if state.get("type") != "remote":
            return True
        rsc = self.resources(mon=mon).get(name, {})
        return (
            rsc.get("role") == "Started"
            and rsc.get("failed") == "false"
            and bool(rsc["nodes"])
            and all(nodes.get(n, {}).get("online") == "true" for n in rsc["nodes"])
        )

    def wait_for(
        self, what: Callable[[], object], timeout: float, desc: str, interval: float = 0.1
    ) -> float:
        """Poll `what` until truthy; the seconds it took. ClusterError (with the log tails)
        on timeout."""
        t0 = time.monotonic()
        while True:
            if what():
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise ClusterError(
                    f"timed out after {timeout:.0f} s waiting for {desc}\n" + self.log_tail(30)
                )
            time.sleep(interval)

    def wait_online(self, timeout: float = 60) -> float:
        """Every running controller online and a DC elected."""

        def ready() -> bool:
            for name, host in self.controllers.items():
                if host.procs.get("pacemakerd") and not host.procs["pacemakerd"].alive():
                    raise ClusterError(f"pacemakerd on {name} exited\n" + self.log_tail(30))
            nodes = self.nodes()
            if nodes.get("_dc", {}).get("present") != "true":
                return False
            alive = [
                n
                for n, h in self.controllers.items()
                if "pacemakerd" in h.procs and h.procs["pacemakerd"].alive()
            ]
            return all(nodes.get(n, {}).get("online") == "true" for n in alive)

        return self.wait_for(ready, timeout, "the controllers to be online")

    def wait_node(
        self, name: str, online: bool = True, timeout: float = 60, node: str | None = None
    ) -> float:
        """Wait until `name` is online (and clean), or known to be offline."""
        if online:
            return self.wait_for(
                lambda: self.is_online(name, node), timeout, f"{name} to be online"
            )
        return self.wait_for(
            lambda: self.nodes(node).get(name, {}).get("online") == "false",
            timeout,
            f"{name} to be offline",
        )

    # -- remote nodes -------------------------------------------------------------------
    def add_remote(
        self,
        name: str,
        *,
        monitor_interval: str = "5s",
        monitor_timeout: str = "10s",
        reconnect_interval: str = "5s",
        wait: bool = True,
        timeout: float = 60,
        via: str = "cibadmin",
    ) -> RemoteNode:
        """A compute node: namespace `nha-<name>`, pacemaker-remoted in it, and an
        ocf:pacemaker:remote resource for it (`via`: cibadmin or pcs; "none" when the
        configuration under test creates it). A cut link is detected after about
        monitor_interval + monitor_timeout. Note: with stonith-enabled=true Pacemaker starts
        no resource (remote connections included) until a stonith device exists."""
        if name in self.remotes:
            raise ValueError(f"{name} exists")
        t0 = time.monotonic()
        number = REMOTE_BASE + len(self.remotes) + 1
        node = self.network.add_node(name, number)
        host = _Host(
            name=name,
            dir=self.run_dir / name,
            address=node.address,
            netns=node.netns,
            binds=_make_dirs(self.run_dir / name, controller=False),
            private_shm=True,
        )
        remote = RemoteNode(
            name=name,
            address=node.address,
            netns=node.netns,
            host=host,
            monitor_interval=monitor_interval,
            monitor_timeout=monitor_timeout,
            reconnect_interval=reconnect_interval,
        )
        self.remotes[name] = remote
        self.start_remote(name, wait=False)
        if via == "pcs":
            # Without pcsd, `pcs cluster node add-remote` cannot work; `--force` lets pcs
            # create the connection resource directly.
            self.pcs(
                "resource",
                "create",
                name,
                "ocf:pacemaker:remote",
                f"server={node.address}",
                f"reconnect_interval={reconnect_interval}",
                "op",
                "monitor",
                f"interval={monitor_interval}",
                f"timeout={monitor_timeout}",
                "--force",
            )
        elif via == "cibadmin":
            self.cib_create("resources", self.remote_resource_xml(remote))
        if wait:
            self.wait_remote_online(name, timeout)
            self.timings[f"remote_online:{name}"] = time.monotonic() - t0
        return remote

    @staticmethod
    def remote_resource_xml(remote: RemoteNode) -> str:
        n = remote.name
        return (
            f'<primitive id="{n}" class="ocf" provider="pacemaker" type="remote">'
            f'<instance_attributes id="{n}-instance_attributes">'
            f'<nvpair id="{n}-instance_attributes-server" name="server"'
            f' value="{remote.address}"/>'
            f'<nvpair id="{n}-instance_attributes-reconnect_interval"'
            f' name="reconnect_interval" value="{remote.reconnect_interval}"/>'
            f"</instance_attributes><operations>"
            f'<op id="{n}-monitor-interval-{remote.monitor_interval}" name="monitor"'
            f' interval="{remote.monitor_interval}" timeout="{remote.monitor_timeout}"/>'
            f"</operations></primitive>"
        )

    def start_remote(self, name: str, wait: bool = False, timeout: float = 60) -> float | None:
        """(Re)start the node's pacemaker-remoted, as after a power-on: a fresh holder
        (empty /run and /dev/shm) if the node's processes were killed. With `wait`, returns
        the seconds until the node was Online."""
        remote = self.remotes[name]
        host = remote.host
        t0 = time.monotonic()
        with self._lock:
            if remote.remoted and remote.remoted.alive():
                raise ClusterError(f"pacemaker-remoted already runs on {name}")
            if not (host.holder and host.holder.alive()):
                self._kill_host(host)  # whatever survived a partial kill
                self._start_holder(host)
            env = dict(self._pcmk_env(), PCMK_remote_address=remote.address)
            self._popen(host, "pacemaker-remoted", [str(ensure_remoted())], env=env)
        if wait:
            self.wait_remote_online(name, timeout)
            return time.monotonic() - t0
        return None

    def wait_remote_online(self, name: str, timeout: float = 60) -> float:
        return self.wait_node(name, True, timeout)

    def kill_remote(self, name: str, sig: int = signal.SIGKILL) -> float:
        """Signal the node's pacemaker-remoted; returns time.time() of the kill."""
        proc = self.remotes[name].remoted
        if not proc or not proc.send(sig):
            raise ClusterError(f"pacemaker-remoted of {name} is not running")
        at = time.time()
        if sig in (signal.SIGKILL, signal.SIGTERM):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(10)
        return at

    def cut_link(self, name: str) -> float:
        """Pull the node's network cable; returns time.time()."""
        self.network.cut_link(name)
        return time.time()

    def restore_link(self, name: str) -> None:
        self.network.restore_link(name)

    def kill_namespace_processes(self, name: str) -> list[int]:
        """What a BMC power-off does: kill everything that runs in that node (its network
        namespace and mount namespace), remoted and holder included. `start_remote` powers
        it on again."""
        with self._lock:
            if name in self.remotes:
                return self._kill_host(self.remotes[name].host)
            return self._kill_host(self.controllers[name])

    power_off = kill_namespace_processes

    def run_on_remote(
        self,
        name: str,
        cmd: str | Sequence[str],
        *,
        check: bool = True,
        input: str | None = None,
        timeout: float = 60,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess:
        """Run a command inside a remote node (its network, mounts and hostname)."""
        argv = shlex.split(cmd) if isinstance(cmd, str) else list(cmd)
        host = self.remotes[name].host
        res = subprocess.run(
            [*host.enter(), *argv],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=dict(os.environ, **(env or {})),
        )
        if check and res.returncode != 0:
            raise ClusterError(
                f"{' '.join(argv)} on {name} exited {res.returncode}: "
                f"{res.stderr.strip() or res.stdout.strip()}"
            )
        return res

    # -- controllers (two-node variant) ---------------------------------------------
    def kill_controller(self, n: int | str) -> float:
        """Power off controller n (1-based) or by name: SIGKILL everything in it. The
        survivor fences it. Returns time.time() of the kill."""
        name = n if isinstance(n, str) else f"c{n}"
        at = time.time()
        self._kill_host(self.controllers[name])
        return at

    def start_controller(self, n: int | str, timeout: float = 60) -> float:
        """Power a killed controller on again and wait until it is online."""
        name = n if isinstance(n, str) else f"c{n}"
        host = self.controllers[name]
        t0 = time.monotonic()
        self._kill_host(host)
        host.procs.clear()
        self._start_holder(host)
        self._start_corosync(host)
        self._start_pacemaker(host)
        self.wait_for(lambda: self.is_online(name, node=name), timeout, f"{name} online")
        return time.monotonic() - t0

    # -- stonith ----------------------------------------------------------------------
    def install_test_agent(self) -> Path:
        """Install /usr/sbin/fence_nha_testbed (removed again by `stop`)."""
        if TEST_AGENT.exists() and _AGENT_MARKER not in TEST_AGENT.read_text():
            raise ClusterError(f"{TEST_AGENT} exists and is not the bed's")
        self._agent_installed = True
        self._save_state()
        tmp = TEST_AGENT.with_name(TEST_AGENT.name + ".nha-tmp")
        tmp.write_text(TEST_AGENT_SCRIPT)
        os.chmod(tmp, 0o755)
        tmp.replace(TEST_AGENT)
        return TEST_AGENT

    def uninstall_test_agent(self) -> None:
        if not self._agent_installed:
            return
        with contextlib.suppress(OSError):
            if _AGENT_MARKER in TEST_AGENT.read_text():
                TEST_AGENT.unlink()
        self._agent_installed = False

    def add_test_stonith(
        self,
        device: str = "st-testbed",
        hosts: Sequence[str] = (),
        *,
        fail_file: str | Path | None = None,
        delay: float = 0,
        extra: dict[str, str] | None = None,
    ) -> Path:
        """A stonith device (fence_nha_testbed) for `hosts` (all remote and controller
        nodes when empty) that records each request in `self.fence_record` and succeeds.
        Returns the record file."""
        self.install_test_agent()
        targets = " ".join(hosts) if hosts else "*"
        params = {"record_file": str(self.fence_record), "delay": str(delay)}
        if hosts:
            params["pcmk_host_list"] = targets
        else:
            params["pcmk_host_check"] = "none"  # can fence any node
        if fail_file:
            params["fail_file"] = str(fail_file)
        params.update(extra or {})
        nvpairs = "".join(
            f'<nvpair id="{device}-instance_attributes-{k}" name="{k}" value="{v}"/>'
            for k, v in params.items()
        )
        xml = (
            f'<primitive id="{device}" class="stonith" type="{TEST_AGENT.name}">'
            f'<instance_attributes id="{device}-instance_attributes">{nvpairs}'
            f'</instance_attributes><operations><op id="{device}-monitor-interval-60s"'
            f' name="monitor" interval="60s"/></operations></primitive>'
        )
        self.cib_create("resources", xml)
        return self.fence_record

    def fence_records(self, target: str | None = None) -> list[FenceRecord]:
        recs = read_fence_records(self.fence_record) if self.fence_record else []
        return [r for r in recs if target is None or r.target == target]

    def wait_fence_request(
        self, target: str, *, after: float = 0.0, timeout: float = 60
    ) -> FenceRecord:
        """The first request for `target` recorded by the test device at or after `after`
        (a time.time())."""
        found: list[FenceRecord] = []

        def check() -> bool:
            found[:] = [r for r in self.fence_records(target) if r.at >= after]
            return bool(found)

        self.wait_for(check, timeout, f"a fence request for {target}", interval=0.02)
        return found[0]

    def fence_history(self, target: str = "*") -> str:
        return self.stonith_admin("--history", target, "--verbose", check=False).stdout

    # -- logs ---------------------------------------------------------------------------
    def logs(self) -> dict[str, Path]:
        """Every daemon's log file on the host: '<node>/<what>' -> path."""
        out: dict[str, Path] = {}
        if not self.run_dir:
            return out
        for node_dir in sorted(p for p in self.run_dir.iterdir() if p.is_dir()):
            for path in sorted(node_dir.rglob("*")):
                if path.is_file() and (path.suffix in (".log", ".out")):
                    out[f"{node_dir.name}/{path.relative_to(node_dir)}"] = path
        return out

    @staticmethod
    def _tail(path: Path, lines: int) -> str:
        try:
            with open(path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 200 * lines))
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of every log, for a failure report."""
        parts = []
        for key, path in self.logs().items():
            tail = self._tail(path, lines)
            if tail.strip():
                parts.append(f"==== {key} ({path}) ====\n{tail}")
        return "\n".join(parts)


# -- pytest -------------------------------------------------------------------------------


def cluster_fixture(scope: str = "module", **kwargs):
    """A pytest fixture giving a started `Cluster(**kwargs)`, stopped at the end of `scope`.

    In a test module: ``cluster = cluster_fixture()`` (an assignment, so ruff sees no
    redefinition). Skips when root or a package is missing; under CI=true it fails instead.
    When a test using it failed, the logs' tails are printed and the run directory kept."""
    import pytest

    @pytest.fixture(scope=scope)
    def _cluster(request) -> Iterator[Cluster]:
        from testbed.util import need

        missing = missing_requirements()
        need(not missing, "cluster test bed: " + ", ".join(missing))
        failed_before = request.session.testsfailed
        with Cluster(**kwargs) as bed:
            try:
                yield bed
            finally:
                if request.session.testsfailed > failed_before:
                    to_terminal(
                        request.config,
                        f"\ncluster test bed logs ({bed.run_dir}, kept):\n" + bed.log_tail(40),
                    )

    return _cluster


def to_terminal(config, text: str) -> None:
    """Write to pytest's terminal even from a fixture's teardown (output capture is fd-level,
    so the terminal reporter's writes would otherwise end up in a captured section)."""
    capman = config.pluginmanager.get_plugin("capturemanager")
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    ctx = capman.global_and_fixture_disabled() if capman else contextlib.nullcontext()
    with ctx:
        for line in text.splitlines():
            reporter.write_line(line) if reporter else print(line)
