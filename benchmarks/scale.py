"""Configuration that scales: the two fence-device layouts of nova-ha.pcs side by side, at
N compute nodes, on the live cluster bed and offline.

    python -m benchmarks.scale [--nodes 32,128] [--runs 3] [--idle 60] [--monitor-runs 5]
                               [--no-bed]

Layouts (both made by cluster/crm-config/nova-ha.pcs, NHA_FENCING=nova):

  per-node   one fence_nova_evacuate per node (pcmk_host_list=NODE, bmc_node, ip, ipport,
             username, password_script, power_timeout, os_cloud, host_map of ALL N nodes,
             evacuate, max_parallel, evacuate_timeout, max_fenced_hosts; monitor 60s): the
             default
  shared     one device for all N nodes (pcmk_host_list and bmc_map of all N nodes,
             username, password_script, power_timeout, config_file=/etc/nova-ha/nova-ha.conf
             holding the shared settings; monitor 60s): NHA_DEVICE_LAYOUT=shared +
             NHA_CONFIG_FILE

Both with what nova-ha puts beside them: the remote connections, NovaCompute cloned over
the compute nodes (monitor 10s) and NovaEvacuate on the controller, with their location
rules. The configuration is nova-ha.pcs's own: its `remotes` and `fencing` steps printed
with `-n` and turned into CIB XML here (checked against `pcs -f` at 3 nodes first, both
layouts), its `properties`, `compute` and `evacuate` steps run with `pcs -f` at full N. The
env file is nova-ha.env.example with N nodes, a BMC per node (10.20.x.y), host_map
`computeK:computeK.example.com`, os_cloud=overcloud, password_script
/etc/nova-ha/bmc-password and systemd_unit=nova-compute.

On the live bed (testbed/cluster.py: one corosync+pacemakerd controller, N
pacemaker-remoted nodes in network namespaces), built once per N, the same configuration
is applied with its agents swapped for cheap ones: the devices run the bed's fence agent
(fence_nha_testbed, answers at once; every nova-ha parameter stays on the devices, so the
CIB is as large as the real one), NovaCompute and NovaEvacuate are ocf:pacemaker:Dummy with
the same parameters and operations. The layouts are switched by replacing the CIB's
resources and constraints; the bed's own cluster properties stay (stonith-timeout 60s,
cluster-recheck-interval 5s: the same as nova-ha.env.example's). What is measured is
Pacemaker's cost, not the agents'; the agents' cost is figure 7.

Figures, per N and layout (the controller has 2 cores, shared with the N remoteds):

  1 kill -9 -> fence request   kill -9 of a node's pacemaker-remoted to the fencer's "wants
                               to fence" line in the controller's log (median of --runs;
                               a different node each run). Between runs the node is
                               powered off and on (bed.power_off + start_remote) and the
                               cluster waited for until idle (node online, NovaCompute
                               started there, controller S_IDLE)
  2 scheduler runs/incident    "Calculated transition" lines from the kill until the
                               cluster is idle again with the node back (includes the
                               5 s recheck timer's runs: see the idle rate, 5)
    schedulerd CPU/incident    pacemaker-schedulerd's CPU (utime+stime) over that window
  3 scheduler s/run, live CIB  `crm_simulate --profile` (CPU clock) of the live CIB saved
                               with `cibadmin --query` when idle, --runs repetitions
    scheduler s, incident      the same over the incident's own saved scheduler inputs
                               (pe-input files named by its transition lines), summed
  4 CIB bytes                  configuration as nova-ha.pcs makes it (real agents, no
                               status: an offline CIB file, `CIB_file=... cibadmin
                               --query | wc -c`), and the live CIB with status
  5 idle, per minute           scheduler runs, and CPU of the controller's Pacemaker
                               daemons and corosync (their children included: the bed's
                               device monitors), over --idle seconds
  6 device monitors/min        N (per-node) or 1 (shared)
  7 monitor CPU                user+sys of one real fence_nova_evacuate `monitor` run as
                               Pacemaker runs it (parameters on stdin, those of the
                               layout's device; config_file and password_script real),
                               against the project's Nova simulator and a BMC simulator
                               (testbed.nova_sim.NovaSim, testbed.bmc.BmcSim),
                               warm token cache, median of --monitor-runs; then CPU per
                               minute = monitors per minute x CPU per run, and cores
                               (CPU-seconds per minute / 60)

Reported, not asserted. The bed needs root and Debian's cluster packages (as
tests/test_e2e_cluster.py), and nova-ha's agents installed (`nova-ha install-agents
--python .venv/bin/python`, as `make test` does) for pcs to read their metadata. Only one
bed may run on a machine at a time. `--no-bed` measures the offline figures (4, 6, 7) only.
"""

from __future__ import annotations

import argparse
import bz2
import contextlib
import copy
import datetime
import math
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "cluster" / "crm-config"
PCS_SCRIPT = CONFIG_DIR / "nova-ha.pcs"
ENV_EXAMPLE = CONFIG_DIR / "nova-ha.env.example"
PASSWORD_SCRIPT = CONFIG_DIR / "bmc-password"
INSTALLED_AGENT = Path("/usr/sbin/fence_nova_evacuate")
SOURCE_AGENT = ROOT / "agents" / "fence" / "fence_nova_evacuate"
LAYOUTS = ("per-node", "shared")
CONFIG_FILE = "/etc/nova-ha/nova-ha.conf"
DOMAIN = "example.com"
CLOUD = "overcloud"
SUBNET = "192.168.124"  # the bed's (testbed.netns.SUBNET)
REMOTE_BASE = 100  # the k-th remote node of the bed has address .(100+k)
MAX_NODES = 150  # the bed's /24: remotes at .101 ...
DAEMONS = (
    "corosync",
    "pacemakerd",
    "pacemaker-based",
    "pacemaker-fenced",
    "pacemaker-execd",
    "pacemaker-attrd",
    "pacemaker-schedulerd",
    "pacemaker-controld",
)
FENCE_OK = re.compile(
    r"targeting \S+ (?:by \S+ )?(?:on behalf|for).*: OK|"
    r"targeting \S+ using \S+ returned 0"
)
TICK = os.sysconf("SC_CLK_TCK")


# -- the configuration, as nova-ha.pcs makes it --------------------------------------------


def node_names(n: int) -> list[str]:
    return [f"compute{k}" for k in range(1, n + 1)]


def overrides(n: int, layout: str) -> list[str]:
    """nova-ha.pcs variables (over nova-ha.env.example) for N nodes in `layout`."""
    names = node_names(n)
    return [
        "NHA_FENCING=nova",
        f"NHA_DEVICE_LAYOUT={layout}",
        f"NHA_CONFIG_FILE={CONFIG_FILE if layout == 'shared' else ''}",
        "NHA_COMPUTE_NODES="
        + " ".join(f"{name}:{SUBNET}.{REMOTE_BASE + k}" for k, name in enumerate(names, 1)),
        "NHA_BMCS="
        + " ".join(f"{name}:10.20.{k // 256}.{k % 256}" for k, name in enumerate(names, 1)),
        "NHA_HOST_MAP=" + " ".join(f"{name}:{name}.{DOMAIN}" for name in names),
        f"NHA_OS_CLOUD={CLOUD}",
        "NHA_BMC_PASSWORD_SCRIPT=/etc/nova-ha/bmc-password",
        "NHA_COMPUTE_SYSTEMD_UNIT=nova-compute",
    ]


def pcs_dry_run(n: int, layout: str, steps: list[str]) -> list[list[str]]:
    """The pcs commands nova-ha.pcs prints with -n, split into argv lists."""
    res = subprocess.run(
        ["bash", str(PCS_SCRIPT), "-e", str(ENV_EXAMPLE), "-n", *overrides(n, layout), *steps],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if res.returncode != 0:
        raise RuntimeError(f"nova-ha.pcs -n failed: {res.stderr.strip()}")
    return [shlex.split(line) for line in res.stdout.splitlines() if line.startswith("pcs ")]


def translate(commands: list[list[str]]) -> list:
    """`pcs resource create ... --no-default-ops` and `pcs stonith create` as pcs writes
    them into the CIB (ids, sorted instance attributes, operations); nothing else."""
    from lxml import etree

    out = []
    for argv in commands:
        what = argv[1:3]
        if what not in (["resource", "create"], ["stonith", "create"]):
            raise ValueError(f"cannot translate {shlex.join(argv)}")
        rid, agent, rest = argv[3], argv[4], argv[5:]
        if what[0] == "stonith":
            attrs = {"class": "stonith", "type": agent}
        else:
            if "--no-default-ops" not in rest:
                raise ValueError(f"pcs would add the agent's default operations: {rid}")
            cls, provider, kind = agent.split(":")
            attrs = {"class": cls, "provider": provider, "type": kind}
        params: dict[str, str] = {}
        ops: list[tuple[str, dict[str, str]]] = []
        target: dict[str, str] = params
        expect_op_name = False
        for word in rest:
            if word.startswith("--"):
                continue
            if word == "op":
                expect_op_name = True
                continue
            if word in ("meta", "clone"):
                raise ValueError(f"cannot translate {word} of {rid}")
            if expect_op_name:
                ops.append((word, {}))
                target = ops[-1][1]
                expect_op_name = False
                continue
            key, _, value = word.partition("=")
            target[key] = value
        prim = etree.Element("primitive", id=rid, **attrs)
        inst = etree.SubElement(prim, "instance_attributes", id=f"{rid}-instance_attributes")
        for key in sorted(params):
            etree.SubElement(
                inst, "nvpair", id=f"{rid}-instance_attributes-{key}", name=key, value=params[key]
            )
        operations = etree.SubElement(prim, "operations")
        for name, values in ops:
            values = {"interval": "0s", **values}
            etree.SubElement(
                operations,
                "op",
                id=f"{rid}-{name}-interval-{values['interval']}",
                name=name,
                **values,
            )
        out.append(prim)
    return out


def pcs_cib(n: int, layout: str, steps: list[str]) -> bytes:
    """What `nova-ha.pcs -f` makes of an empty CIB with these steps."""
    from testbed.e2e import pcs_configuration

    return pcs_configuration(overrides(n, layout), steps)


def check_translation(n: int = 3) -> list[str]:
    """Problems found comparing the translation of the remotes and fencing steps with what
    pcs -f makes of them (empty: identical), for both layouts."""
    from lxml import etree

    from testbed.e2e import canonical

    problems = []
    for layout in LAYOUTS:
        steps = ["remotes", "fencing"]
        made = etree.fromstring(pcs_cib(n, layout, steps)).find("configuration/resources")
        ours = etree.Element("resources")
        ours.extend(translate(pcs_dry_run(n, layout, steps)))
        if canonical(made) != canonical(ours):
            problems.append(
                f"{layout}: pcs -f makes\n{canonical(made)}\nwe make\n{canonical(ours)}"
            )
    return problems


def full_cib(n: int, layout: str) -> bytes:
    """The whole CIB nova-ha.pcs makes for N nodes (real agents, no status)."""
    from lxml import etree

    cib = etree.fromstring(pcs_cib(n, layout, ["properties", "compute", "evacuate"]))
    resources = cib.find("configuration/resources")
    for i, prim in enumerate(translate(pcs_dry_run(n, layout, ["remotes", "fencing"]))):
        resources.insert(i, prim)
    return etree.tostring(cib)


def cib_file_bytes(cib: bytes, scope: str | None = None) -> int:
    """Size of `cibadmin --query` (whole, or one scope) of this CIB as a file."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cib.xml"
        path.write_bytes(cib)
        env = dict(os.environ, CIB_file=str(path))
        args = ["cibadmin", "--query"] + (["--scope", scope] if scope else [])
        res = subprocess.run(args, capture_output=True, env=env, timeout=120, check=True)
        return len(res.stdout)


def for_bed(cib: bytes) -> tuple[bytes, bytes]:
    """The CIB's resources and constraints with the bed's cheap agents: fence_nha_testbed
    for the devices, ocf:pacemaker:Dummy for NovaCompute and NovaEvacuate (parameters and
    operations kept)."""
    from lxml import etree

    root = etree.fromstring(cib)
    resources = copy.deepcopy(root.find("configuration/resources"))
    constraints = copy.deepcopy(root.find("configuration/constraints"))
    for prim in resources.iter("primitive"):
        if prim.get("class") == "stonith":
            prim.set("type", "fence_nha_testbed")
        elif prim.get("provider") == "nova-ha":
            prim.set("provider", "pacemaker")
            prim.set("type", "Dummy")
    return etree.tostring(resources), etree.tostring(constraints)


def device_params(cib: bytes) -> list[dict[str, str]]:
    """Instance attributes of every stonith device of the CIB."""
    from lxml import etree

    root = etree.fromstring(cib)
    return [
        {nv.get("name"): nv.get("value") for nv in prim.iter("nvpair")}
        for prim in root.iter("primitive")
        if prim.get("class") == "stonith"
    ]


# -- 7: one device monitor's CPU -------------------------------------------------------------


def run_cpu(argv: list[str], stdin: str, env: dict[str, str]) -> tuple[float, float, int, str]:
    """(CPU seconds user+sys, wall seconds, exit code, stderr) of one child, via wait4."""
    with tempfile.TemporaryFile() as err:
        t0 = time.monotonic()
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd="/"
        )
        proc.stdin.write(stdin.encode())
        proc.stdin.close()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        text = err.read().decode(errors="replace")
    return usage.ru_utime + usage.ru_stime, wall, proc.returncode, text


@dataclass
class MonitorCost:
    cpu: float  # median CPU seconds of one run
    wall: float
    first_cpu: float  # the first run (no cached token)
    runs: list[float]


class MonitorBench:
    """NovaSim + one BmcSim, a clouds.yaml, a password script: what a device's monitor
    talks to. Each `measure` runs the device's parameters as Pacemaker passes them."""

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="nha-scale-"))
        self.cloud = None
        self.bmc = None

    def __enter__(self) -> MonitorBench:
        from testbed.bmc import BmcSim
        from testbed.nova_sim import NovaSim

        self.cloud = NovaSim(hosts=[f"compute{k}.{DOMAIN}" for k in (1, 2, 3)]).start()
        self.bmc = BmcSim("compute1")
        self.bmc.start()
        cloud = self.cloud
        (self.tmp / "clouds.yaml").write_text(
            f"clouds:\n  {CLOUD}:\n    auth:\n      auth_url: {cloud.auth_url}\n"
            f"      username: {cloud.username}\n      password: {cloud.password}\n"
            f"      project_name: {cloud.project_name}\n      user_domain_name: Default\n"
            "      project_domain_name: Default\n    interface: public\n"
        )
        shutil.copy(PASSWORD_SCRIPT, self.tmp / "bmc-password")
        os.chmod(self.tmp / "bmc-password", 0o755)
        passwords = self.tmp / "bmc-passwords"
        passwords.write_text(f"compute1 {self.bmc.password}\n")
        os.chmod(passwords, 0o600)
        (self.tmp / "tokens").mkdir(mode=0o700)
        return self

    def __exit__(self, *exc) -> None:
        if self.bmc:
            self.bmc.stop()
        if self.cloud:
            self.cloud.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def env(self) -> dict[str, str]:
        return dict(
            os.environ,
            OS_CLIENT_CONFIG_FILE=str(self.tmp / "clouds.yaml"),
            NOVA_HA_TOKEN_DIR=str(self.tmp / "tokens"),
        )

    def stdin_for(self, n: int, layout: str, params: dict[str, str]) -> str:
        """The device's parameters, pointed at the simulators, as the fencer passes them
        for a monitor (pcmk_* stripped)."""
        values = {k: v for k, v in params.items() if not k.startswith("pcmk_")}
        script = str(self.tmp / "bmc-password")
        if layout == "per-node":
            values.update(
                ip="127.0.0.1", ipport=str(self.bmc.port), password_script=f"{script} compute1"
            )
        else:
            entries = values["bmc_map"].split()
            entries[0] = f"compute1=127.0.0.1:{self.bmc.port}"
            values["bmc_map"] = " ".join(entries)
            values["password_script"] = script
            conf = self.tmp / f"nova-ha-{n}.conf"
            made = subprocess.run(
                ["bash", str(PCS_SCRIPT), "-e", str(ENV_EXAMPLE), *overrides(n, layout), "-c"],
                capture_output=True,
                text=True,
                check=True,
                timeout=60,
            ).stdout
            conf.write_text(made)
            os.chmod(conf, 0o600)
            values["config_file"] = str(conf)
        values["action"] = "monitor"
        return "".join(f"{k}={v}\n" for k, v in values.items())

    def measure(self, argv: list[str], stdins: dict[str, str], runs: int) -> dict[str, MonitorCost]:
        """Each layout's monitor: a first run with no cached token, then `runs` runs with
        the layouts taking turns (so that a change of the machine's load hits both)."""
        env = self.env()
        tokens = self.tmp / "tokens"

        def one(stdin: str) -> tuple[float, float]:
            cpu, wall, code, err = run_cpu(argv, stdin, env)
            if code != 0:
                raise RuntimeError(f"monitor failed ({code}): {err.strip()[-2000:]}")
            return cpu, wall

        first = {}
        for layout, stdin in stdins.items():
            for cached in tokens.iterdir():  # this run asks Keystone for a token
                cached.unlink()
            first[layout] = one(stdin)[0]
        done: dict[str, list[tuple[float, float]]] = {layout: [] for layout in stdins}
        for _ in range(runs):
            for layout, stdin in stdins.items():
                done[layout].append(one(stdin))
        return {
            layout: MonitorCost(
                statistics.median(c for c, _ in done[layout]),
                statistics.median(w for _, w in done[layout]),
                first[layout],
                [c for c, _ in done[layout]],
            )
            for layout in stdins
        }


def fence_agent_argv() -> list[str]:
    """What Pacemaker runs: the installed agent, else the checkout's with this Python."""
    if INSTALLED_AGENT.is_file():
        return [str(INSTALLED_AGENT)]
    return [sys.executable, str(SOURCE_AGENT)]


def test_agent_cpu(runs: int) -> float:
    """Median CPU of the bed's fence_nha_testbed `monitor` (what the live devices cost)."""
    from testbed.cluster import TEST_AGENT_SCRIPT

    with tempfile.TemporaryDirectory() as tmp:
        agent = Path(tmp) / "fence_nha_testbed"
        agent.write_text(TEST_AGENT_SCRIPT)
        os.chmod(agent, 0o755)
        cpus = [run_cpu([str(agent)], "action=monitor\n", dict(os.environ))[0] for _ in range(runs)]
    return statistics.median(cpus)


# -- the live bed --------------------------------------------------------------------------


def log_stamp(line: str) -> float | None:
    """time.time() of a Pacemaker log line ("Dec 01 17:39:23.406 c1 ...")."""
    parts = line.split(None, 3)
    if len(parts) < 3:
        return None
    try:
        return datetime.datetime.strptime(
            f"{time.localtime().tm_year} {parts[0]} {parts[1]} {parts[2]}", "%Y %b %d %H:%M:%S.%f"
        ).timestamp()
    except ValueError:
        return None


class LogTail:
    """New lines of a growing log file, read from where the last read stopped (the
    controller's log grows by megabytes at 128 nodes: never re-read it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pos = 0
        self.rest = b""
        self.lines: list[tuple[float, str]] = []

    def skip(self) -> None:
        """Forget everything written so far (a line being written is dropped)."""
        with contextlib.suppress(FileNotFoundError):
            self.pos = self.path.stat().st_size
        self.rest = b""
        self.lines = []

    def poll(self) -> list[tuple[float, str]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                data = f.read()
        except FileNotFoundError:
            return []
        self.pos += len(data)
        *complete, self.rest = (self.rest + data).split(b"\n")
        new = []
        for raw in complete:
            line = raw.decode(errors="replace")
            stamp = log_stamp(line)
            if stamp is not None:
                new.append((stamp, line))
        self.lines += new
        return new

    def wait(self, match, timeout: float, what: str) -> float:
        """The stamp of the first line since the last skip() for which match(line) holds,
        waiting for it if need be."""
        deadline = time.monotonic() + timeout
        i = 0
        while True:
            self.poll()
            while i < len(self.lines):
                stamp, line = self.lines[i]
                i += 1
                if match(line):
                    return stamp
            if time.monotonic() > deadline:
                raise TimeoutError(f"no log line for {what} within {timeout:.0f} s")
            time.sleep(0.05)


def daemon_cpu(bed) -> dict[str, float]:
    """CPU seconds (user+sys, reaped children included) of the controller's daemons."""
    out = {}
    for pid, argv in bed.processes("c1", ""):
        name = os.path.basename(argv[0]) if argv else ""
        if name not in DAEMONS:
            continue
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[name] = out.get(name, 0.0) + sum(int(x) for x in fields[11:15]) / TICK
    return out


def cpu_delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0.0) for k in after}


def idle_state(bed) -> bool:
    try:
        res = bed.run(["crmadmin", "--status=c1"], check=False, timeout=60)
    except subprocess.TimeoutExpired:
        return False
    return "S_IDLE" in res.stdout


def settled(bed, names: list[str], devices: list[str]) -> bool:
    """Every node online with NovaCompute started on it, NovaEvacuate and the devices
    started, nothing failed, the controller idle."""
    from testbed.e2e import started_on

    try:
        mon = bed.crm_mon()
    except Exception:  # noqa: BLE001 - the CIB may be busy while it grows
        return False
    nodes = bed.nodes(mon=mon)
    if any(nodes.get(n, {}).get("online") != "true" for n in names):
        return False
    if any(r.get("failed") == "true" for r in mon.iter("resource")):
        return False
    if started_on(mon, "nova-compute") != set(names) or not started_on(mon, "nova-evacuate"):
        return False
    if any(not started_on(mon, d) for d in devices + names):
        return False
    return idle_state(bed)


def wait_settled(bed, names: list[str], devices: list[str], timeout: float) -> float:
    t0 = time.monotonic()
    while True:
        t_check = time.monotonic()
        if settled(bed, names, devices):
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"the cluster did not settle within {timeout:.0f} s")
        # crm_mon costs the controller's cores too (~0.3 s at 128 nodes): poll gently.
        time.sleep(max(1.0, 3 * (time.monotonic() - t_check)))


def apply_layout(bed, resources: bytes, constraints: bytes) -> None:
    """Replace the live CIB's resources and constraints (one update: the bed's properties
    and nodes stay; unchanged resources, the remote connections, are left running)."""
    from lxml import etree

    conf = etree.fromstring(bed.cibadmin("--query", "--scope", "configuration").stdout.encode())
    for tag, xml in (("resources", resources), ("constraints", constraints)):
        old = conf.find(tag)
        new = etree.fromstring(xml)
        if old is None:
            conf.append(new)
        else:
            conf.replace(old, new)
    bed.run(
        ["cibadmin", "--replace", "--scope", "configuration", "--xml-pipe"],
        input=etree.tostring(conf).decode(),
        timeout=300,
    )


def profile(files: list[Path], repeat: int) -> list[float]:
    """CPU seconds of one scheduler run on each CIB file (crm_simulate --profile)."""
    with tempfile.TemporaryDirectory() as tmp:
        names = []
        for i, src in enumerate(files):
            dst = Path(tmp) / f"{i:04d}.xml"
            data = src.read_bytes()
            dst.write_bytes(bz2.decompress(data) if src.suffix == ".bz2" else data)
            names.append(dst.name)
        res = subprocess.run(
            ["crm_simulate", "--profile", tmp, "--repeat", str(repeat)],
            capture_output=True,
            text=True,
            timeout=3600,
        )
        times = dict(re.findall(r"Testing \S*?(\d+\.xml) \.\.\. ([\d.]+) secs", res.stdout))
    return [float(times[name]) / repeat for name in names if name in times]


@dataclass
class Incident:
    node: str
    request: float  # seconds after the kill
    fenced: float
    back: float
    transitions: int
    schedulerd_cpu: float
    daemons_cpu: float
    inputs: list[Path]
    profiled: list[float] = field(default_factory=list)


def incident(
    bed, tail: LogTail, node: str, names: list[str], devices: list[str], timeout: float
) -> Incident:
    tail.skip()
    before = daemon_cpu(bed)
    t0 = bed.kill_remote(node, signal.SIGKILL)
    request = tail.wait(
        lambda line: "wants to fence" in line and f") {node} " in line + " ",
        120,
        f"the fence request for {node}",
    )
    fenced = tail.wait(
        lambda line: f"targeting {node} " in line and FENCE_OK.search(line), 120, f"{node} fenced"
    )
    bed.power_off(node)  # what a reboot does to whatever ran there
    bed.start_remote(node)
    wait_settled(bed, names, devices, timeout)
    back = time.time()
    used = cpu_delta(daemon_cpu(bed), before)
    tail.poll()
    window = [line for stamp, line in tail.lines if t0 <= stamp <= back]
    transitions = [line for line in window if "Calculated transition" in line]
    pengine = bed.run_dir / "c1" / "var-lib-pacemaker" / "pengine"
    inputs = [
        pengine / Path(m.group(1)).name
        for line in transitions
        if (m := re.search(r"saving inputs in (\S+)", line))
    ]
    return Incident(
        node,
        request - t0,
        fenced - t0,
        back - t0,
        len(transitions),
        used.get("pacemaker-schedulerd", 0.0),
        sum(used.values()),
        [p for p in inputs if p.exists()],
    )


@dataclass
class LayoutResult:
    layout: str
    settle: float = math.nan
    incidents: list[Incident] = field(default_factory=list)
    live_profile: float = math.nan
    live_cib: int = 0
    live_conf: int = 0
    idle_transitions: float = math.nan  # per minute
    idle_cpu: dict[str, float] = field(default_factory=dict)  # per minute
    conf_cib: int = 0  # offline, real agents
    monitor: MonitorCost | None = None
    monitors_per_min: int = 0


def bed_layout(
    bed, tail: LogTail, n: int, layout: str, cib: bytes, result: LayoutResult, args, first: bool
) -> None:
    names = node_names(n)
    devices = [f"fence-{name}" for name in names] if layout == "per-node" else ["fence-nova"]
    resources, constraints = for_bed(cib)
    t0 = time.monotonic()
    apply_layout(bed, resources, constraints)
    wait_settled(bed, names, devices, 60 + 8 * n)
    result.settle = time.monotonic() - t0
    print(
        f"  {layout}: applied and settled in {result.settle:.1f} s"
        + (" (the remote connections' start included)" if first else ""),
        flush=True,
    )
    time.sleep(5)  # let the last monitors of the switch finish
    wait_settled(bed, names, devices, 60 + 4 * n)
    # 3 and 4: the live CIB, idle
    live = bed.cibadmin("--query").stdout.encode()
    result.live_cib = len(live)
    result.live_conf = len(bed.cibadmin("--query", "--scope", "configuration").stdout.encode())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "live.xml"
        path.write_bytes(live)
        result.live_profile = (profile([path], args.runs) or [math.nan])[0]
    # 5: idle
    if args.idle > 0:
        wait_settled(bed, names, devices, 60 + 4 * n)
        tail.skip()
        before = daemon_cpu(bed)
        t_start = time.time()
        time.sleep(args.idle)
        used = cpu_delta(daemon_cpu(bed), before)
        t_end = time.time()
        tail.poll()
        runs = sum(
            1
            for stamp, line in tail.lines
            if t_start <= stamp <= t_end and "Calculated transition" in line
        )
        per_min = 60.0 / (t_end - t_start)
        result.idle_transitions = runs * per_min
        result.idle_cpu = {k: v * per_min for k, v in used.items()}
    # 1 and 2: incidents
    for i in range(args.runs):
        node = names[-1 - i % n]
        inc = incident(bed, tail, node, names, devices, 120 + 4 * n)
        inc.profiled = profile(inc.inputs, 1)
        result.incidents.append(inc)
        # The next incident starts clean: no failure of this connection, no fence history.
        bed.crm_resource("--cleanup", "--resource", node, check=False)
        bed.stonith_admin("--cleanup", "--history", node, check=False)
        wait_settled(bed, names, devices, 120 + 4 * n)
        print(
            f"    run {i + 1} ({node}): fence request {inc.request:.3f} s, fenced "
            f"{inc.fenced:.3f} s, back {inc.back:.1f} s, {inc.transitions} scheduler runs, "
            f"schedulerd CPU {inc.schedulerd_cpu:.2f} s",
            flush=True,
        )


def run_bed(n: int, cibs: dict[str, bytes], results: dict[str, LayoutResult], args) -> float:
    """Build the bed once for N nodes and measure every layout on it; the bed's start."""
    from testbed.cluster import Cluster

    names = node_names(n)
    with Cluster() as bed:
        t0 = time.monotonic()
        bed.install_test_agent()
        for k, name in enumerate(names, 1):
            remote = bed.add_remote(name, via="none", wait=False)
            if remote.address != f"{SUBNET}.{REMOTE_BASE + k}":
                raise RuntimeError(f"{name} is at {remote.address}, not where nova-ha.pcs was told")
        started = time.monotonic() - t0
        print(
            f"N={n}: controller up in {bed.timings['cluster_start']:.1f} s, {n} remoteds "
            f"started in {started:.1f} s",
            flush=True,
        )
        tail = LogTail(bed.run_dir / "c1" / "log" / "pacemaker" / "pacemaker.log")
        # Shared first: the layout applied second finds the first one's devices as orphans
        # in the status section; one orphan (fence-nova) weighs nothing, 128 would.
        for i, layout in enumerate(("shared", "per-node")):
            bed_layout(bed, tail, n, layout, cibs[layout], results[layout], args, i == 0)
        t_stop = time.monotonic()
    print(f"N={n}: bed stopped in {time.monotonic() - t_stop:.1f} s", flush=True)
    return started


# -- report ----------------------------------------------------------------------------------


def _med(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else math.nan


def _fmt(value: float, kind: str) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "-"
    if kind == "count":
        return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"
    if kind == "bytes":
        return f"{value:,.0f}"
    if kind == "cores":
        return f"{value:.3f}"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"


def table(n: int, results: dict[str, LayoutResult], bed: bool) -> list[str]:
    per, sha = results["per-node"], results["shared"]
    rows: list[tuple[str, float, float, str]] = []  # label, per-node, shared, kind
    if bed:

        def inc(attr: str, r: LayoutResult) -> float:
            return _med([getattr(i, attr) for i in r.incidents])

        def prof(r: LayoutResult) -> float:
            return _med([sum(i.profiled) for i in r.incidents])

        per_incident = (
            ("1 kill -9 -> fence request, median (s)", "request", "s"),
            ("  kill -9 -> fenced (agent returned), median (s)", "fenced", "s"),
            ("  kill -9 -> back, idle again, median (s)", "back", "s"),
            ("2 scheduler runs per incident, median", "transitions", "count"),
            ("  schedulerd CPU per incident, median (s)", "schedulerd_cpu", "s"),
            ("  controller daemons' CPU per incident (s)", "daemons_cpu", "s"),
        )
        rows += [
            (label, inc(attr, per), inc(attr, sha), kind) for label, attr, kind in per_incident
        ]
        rows += [
            ("3 scheduler run, live CIB, profiled (s)", per.live_profile, sha.live_profile, "s"),
            ("  incident's scheduler inputs, profiled, sum (s)", prof(per), prof(sha), "s"),
        ]
    rows.append(
        ("4 CIB configuration as nova-ha.pcs makes it (B)", per.conf_cib, sha.conf_cib, "bytes")
    )
    if bed:

        def idle(r: LayoutResult, daemon: str | None = None) -> float:
            if not r.idle_cpu:
                return math.nan
            return r.idle_cpu.get(daemon, 0.0) if daemon else sum(r.idle_cpu.values())

        rows += [
            ("  live CIB, bed agents, with status (B)", per.live_cib, sha.live_cib, "bytes"),
            (
                "5 idle: scheduler runs per minute",
                per.idle_transitions,
                sha.idle_transitions,
                "count",
            ),
            (
                "  idle: schedulerd CPU per minute (s)",
                idle(per, "pacemaker-schedulerd"),
                idle(sha, "pacemaker-schedulerd"),
                "s",
            ),
            (
                "  idle: fenced CPU per minute, bed agent (s)",
                idle(per, "pacemaker-fenced"),
                idle(sha, "pacemaker-fenced"),
                "s",
            ),
            ("  idle: controller daemons' CPU per minute (s)", idle(per), idle(sha), "s"),
        ]
    pm, sm = per.monitor, sha.monitor
    rows += [
        ("6 device monitors per minute", per.monitors_per_min, sha.monitors_per_min, "count"),
        ("7 fence_nova_evacuate monitor, CPU per run (s)", pm.cpu, sm.cpu, "s"),
        ("  same, first run (no cached token) (s)", pm.first_cpu, sm.first_cpu, "s"),
        (
            "  device monitors' CPU per minute (s)",
            per.monitors_per_min * pm.cpu,
            sha.monitors_per_min * sm.cpu,
            "s",
        ),
        (
            "  = cores busy with device monitors",
            per.monitors_per_min * pm.cpu / 60,
            sha.monitors_per_min * sm.cpu / 60,
            "cores",
        ),
    ]
    width = max(len(r[0]) for r in rows) + 2
    head = f"{f'N = {n} compute nodes':<{width}}{'per-node':>12}{'shared':>12}{'ratio':>9}"
    lines = [head, "-" * len(head)]
    for label, a, b, kind in rows:
        ratio = "-"
        if not (math.isnan(a) or math.isnan(b)) and b:
            ratio = f"{a / b:.1f}x"
        lines.append(f"{label:<{width}}{_fmt(a, kind):>12}{_fmt(b, kind):>12}{ratio:>9}")
    return lines


def recommendation(all_results: dict[int, dict[str, LayoutResult]], bed: bool) -> str:
    """One line, from the figures: from which N the per-node layout's device monitors alone
    pass a tenth of a core, and how the layouts compare at the largest N measured."""
    biggest = max(all_results)
    per, sha = all_results[biggest]["per-node"], all_results[biggest]["shared"]
    cpu = _med([all_results[n]["per-node"].monitor.cpu for n in all_results])
    threshold = math.ceil(0.1 * 60 / cpu) if cpu > 0 else 0
    per_cores = biggest * per.monitor.cpu / 60
    shared_cores = sha.monitor.cpu / 60
    facts = [
        f"per-node device monitors alone pass 0.1 core from N = {threshold} "
        f"({cpu:.2f} s CPU each, one per node per minute)",
        f"at N = {biggest} per-node costs {per_cores:.2f} cores of monitors against "
        f"{shared_cores:.3f} and a {per.conf_cib / sha.conf_cib:.1f}x larger CIB",
    ]
    shared_wins = per.conf_cib > sha.conf_cib and per_cores > shared_cores
    if bed and per.incidents and sha.incidents:
        a = _med([i.request for i in per.incidents])
        b = _med([i.request for i in sha.incidents])
        facts.append(f"kill -9 -> fence request {a:.2f} s against {b:.2f} s")
        shared_wins = shared_wins and b <= a * 1.1 + 0.05
    if shared_wins:
        choice = (
            f"the shared layout (NHA_DEVICE_LAYOUT=shared, NHA_CONFIG_FILE) from "
            f"N = {threshold} compute nodes"
        )
    else:
        choice = "no layout is better on every figure: read the table"
    return f"Recommendation: {choice}. " + "; ".join(facts) + "."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--nodes", default="32,128", help="comma-separated compute node counts (default 32,128)"
    )
    parser.add_argument(
        "--runs", type=int, default=3, help="incidents per layout and N; crm_simulate repetitions"
    )
    parser.add_argument(
        "--idle",
        type=float,
        default=60.0,
        help="seconds of the idle window (default 60; 0 skips it)",
    )
    parser.add_argument(
        "--monitor-runs",
        type=int,
        default=5,
        help="fence_nova_evacuate monitor runs timed (median)",
    )
    parser.add_argument(
        "--no-bed", action="store_true", help="offline figures only: CIB size, monitors, their CPU"
    )
    args = parser.parse_args(argv)
    counts = [int(x) for x in args.nodes.split(",") if x.strip()]
    if not counts or min(counts) < 1 or max(counts) > MAX_NODES:
        parser.error(f"--nodes: 1..{MAX_NODES} each")

    if not args.no_bed:
        from testbed.cluster import missing_requirements

        missing = missing_requirements()
        if missing:
            print("cannot run the cluster bed: missing " + ", ".join(missing), file=sys.stderr)
            return 2
    if (
        not Path("/usr/lib/ocf/resource.d/nova-ha/NovaCompute").is_file()
        or not INSTALLED_AGENT.is_file()
    ):
        print(
            "nova-ha's agents are not installed (pcs reads their metadata): run "
            ".venv/bin/nova-ha install-agents --python .venv/bin/python",
            file=sys.stderr,
        )
        return 2

    t_all = time.monotonic()
    problems = check_translation()
    if problems:
        print(
            "translation of nova-ha.pcs -n differs from pcs -f:\n" + "\n".join(problems),
            file=sys.stderr,
        )
        return 1
    print(
        "nova-ha.pcs -n translated to CIB XML: identical to pcs -f (3 nodes, both layouts)",
        flush=True,
    )

    all_results: dict[int, dict[str, LayoutResult]] = {}
    cibs: dict[int, dict[str, bytes]] = {}
    with MonitorBench() as monitors:
        agent = fence_agent_argv()
        for n in counts:
            all_results[n] = {}
            cibs[n] = {}
            stdins = {}
            for layout in LAYOUTS:
                cib = full_cib(n, layout)
                cibs[n][layout] = cib
                result = LayoutResult(layout)
                result.conf_cib = cib_file_bytes(cib)
                devices = device_params(cib)
                result.monitors_per_min = len(devices)  # one monitor a minute each
                stdins[layout] = monitors.stdin_for(n, layout, devices[0])
                all_results[n][layout] = result
            costs = monitors.measure(agent, stdins, args.monitor_runs)
            for layout in LAYOUTS:
                result = all_results[n][layout]
                result.monitor = costs[layout]
                print(
                    f"N={n} {layout}: CIB {result.conf_cib:,} B, "
                    f"{result.monitors_per_min} device(s), monitor CPU "
                    f"{result.monitor.cpu:.3f} s (first {result.monitor.first_cpu:.3f}, "
                    f"then {', '.join(f'{c:.3f}' for c in result.monitor.runs)})",
                    flush=True,
                )
    floor = test_agent_cpu(args.monitor_runs)

    bed_times, failures = {}, {}
    if not args.no_bed:
        for n in counts:
            t0 = time.monotonic()
            try:
                run_bed(n, cibs[n], all_results[n], args)
            except Exception as exc:  # noqa: BLE001 - report what was measured
                failures[n] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
                print(f"N={n}: the bed failed: {failures[n]}", flush=True)
            bed_times[n] = time.monotonic() - t0

    print()
    print(
        f"Configuration that scales: {len(counts)} size(s), {args.runs} incident(s) per "
        f"layout, idle window {args.idle:.0f} s; monitor CPU: median of "
        f"{args.monitor_runs} ({' '.join(agent)}); the bed's fence_nha_testbed monitor: "
        f"{floor:.4f} s CPU"
    )
    for n in counts:
        print()
        print("\n".join(table(n, all_results[n], not args.no_bed)))
        if n in bed_times:
            print(
                f"(bed for N={n}: {bed_times[n]:.0f} s, start to stop"
                + (f"; FAILED: {failures[n]})" if n in failures else ")")
            )
    print()
    print(recommendation(all_results, not args.no_bed))
    print(f"\nwhole run: {time.monotonic() - t_all:.0f} s")
    return 0


if __name__ == "__main__":
    # `timeout` sends SIGTERM: exit through the bed's context manager, which stops it.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    sys.exit(main())
