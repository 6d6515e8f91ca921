"""The end-to-end bed: a live Pacemaker cluster running nova-ha against a real Nova 34.

``E2EBed()`` wires the pieces of the test bed together the way a cloud is wired:

* the cluster (``cluster.Cluster``: one controller on loopback, or two in namespaces), its
  compute nodes compute1..3 (pacemaker-remoted, each in its own network namespace at the
  addresses of ``NHA_COMPUTE_NODES``);
* a real Nova 34 (``nova_box.NovaBox``) with one fake compute per node, same names, listening
  on the bridge's host address only (``BOX_ADDRESS:BOX_PORT``): the agents in the nodes'
  namespaces reach it there, and so does the root namespace;
* one BMC simulator per node at ``NHA_BMCS`` (and one "level 2" power device per node at
  ``NHA_LEVEL2``, for the fencing-topology variant); a power-off kills everything running in
  the node (``cluster.power_off``) and crashes its compute in the box; a power-on boots the
  node (``cluster.start_remote``): pacemaker-remoted comes back, Pacemaker reconnects it and
  starts NovaCompute there, which starts the node's compute in the box once that is safe;
* the product's configuration, ``cluster/crm-config``: the pcs script run with the example
  env file (``apply="pcs"``: ``pcs cluster cib`` + ``nova-ha.pcs -f`` + ``pcs cluster
  cib-push --config``) or the equivalent CIB XML (``apply="xml"``: ``cibadmin --modify``).

Credentials: the env file names a cloud (``NHA_OS_CLOUD``) and no password. The bed writes
that cloud into ``E2E_DIR/clouds.yaml`` and puts ``OS_CLIENT_CONFIG_FILE`` in the environment
of the cluster daemons it starts: Pacemaker's fencer and executors (pacemaker-remoted
included) pass their own environment on to the agents they run (checked: the variable is in
every daemon's /proc/PID/environ, and the agents find the cloud), exactly as a production
node whose /etc/default/pacemaker sets it. A production cluster needs neither: the agents
look in /etc/openstack/clouds.yaml by default. The bed never writes to /etc.

BMC passwords: ``NHA_BMC_PASSWORD_SCRIPT`` is ``cluster/crm-config/bmc-password`` copied to
``E2E_DIR``; it reads ``E2E_DIR/bmc-passwords`` (mode 0600), one distinct password per BMC.

Everything the bed starts is stopped at the end (also when a test fails): the box and the
BMC threads by this process, the cluster by PID (see ``cluster``); ``E2E_DIR`` is deleted.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from testbed import cluster as bedlib
from testbed.cluster import Cluster, ClusterError

ROOT = bedlib.ROOT
CONFIG_DIR = ROOT / "cluster" / "crm-config"
ENV_EXAMPLE = CONFIG_DIR / "nova-ha.env.example"
PCS_SCRIPT = CONFIG_DIR / "nova-ha.pcs"
CIB_XML = CONFIG_DIR / "nova-ha.cib.xml"
TOPOLOGY_XML = CONFIG_DIR / "nova-ha-topology.cib.xml"
PASSWORD_SCRIPT = CONFIG_DIR / "bmc-password"
CLOUD_SERVICE = ROOT / "testbed" / "cloud_service.py"

E2E_DIR = bedlib.BASE / "e2e"  # the example env file's paths point here
BOX_ADDRESS = "192.168.124.1"  # the bridge's host side (netns.SUBNET + ".1")
BOX_PORT = 18774
AGENTS = (
    Path("/usr/sbin/fence_nova_evacuate"),
    Path("/usr/lib/ocf/resource.d/nova-ha/NovaCompute"),
    Path("/usr/lib/ocf/resource.d/nova-ha/NovaEvacuate"),
)


# -- the env file -----------------------------------------------------------------------


def read_env(path: Path | str = ENV_EXAMPLE, overrides: Iterable[str] = ()) -> dict[str, str]:
    """The NHA_* variables of an env file, as nova-ha.pcs sees them (sourced by bash)."""
    script = (
        '. "$1"; shift; for a in "$@"; do printf -v "${a%%=*}" %s "${a#*=}"; done; '
        'for v in ${!NHA_@}; do printf "%s=%s\\0" "$v" "${!v}"; done'
    )
    out = subprocess.run(
        ["bash", "-c", script, "read_env", str(path), *overrides],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return dict(item.split("=", 1) for item in out.split("\0") if item)


def entries(value: str) -> dict[str, str]:
    """'a:b:c d:e' -> {'a': 'b:c', 'd': 'e'} (NHA_COMPUTE_NODES, NHA_BMCS, NHA_LEVEL2)."""
    out = {}
    for item in value.split():
        key, _, rest = item.partition(":")
        out[key] = rest
    return out


def address_port(value: str, default: int = 623) -> tuple[str, int]:
    address, _, port = value.partition(":")
    return address, int(port) if port else default


# -- configuration as XML ------------------------------------------------------------------


def canonical(element) -> str:
    """An lxml element as text with attributes sorted, children sorted by (tag, id, ...),
    comments and whitespace dropped: two configurations are equivalent when equal."""
    from lxml import etree

    def walk(el) -> tuple:
        attrs = tuple(sorted(el.attrib.items()))
        kids = sorted(walk(c) for c in el if isinstance(c.tag, str))
        return (el.tag, attrs, tuple(kids))

    def render(node, depth=0) -> str:
        tag, attrs, kids = node
        head = "  " * depth + f"<{tag}" + "".join(f' {k}="{v}"' for k, v in attrs) + ">"
        return "\n".join([head] + [render(k, depth + 1) for k in kids])

    if isinstance(element, (str, bytes)):
        element = etree.fromstring(element.encode() if isinstance(element, str) else element)
    return render(walk(element))


def configuration_part(cib_xml: str | bytes, *, stonith_only: bool = False):
    """The <configuration> of a CIB without <nodes> (and, with `stonith_only`, only the
    stonith primitives and the fencing topology)."""
    from lxml import etree

    root = etree.fromstring(cib_xml.encode() if isinstance(cib_xml, str) else cib_xml)
    conf = root if root.tag == "configuration" else root.find("configuration")
    conf = etree.fromstring(etree.tostring(conf))
    for el in list(conf):
        if (
            not isinstance(el.tag, str)
            or el.tag == "nodes"
            or (stonith_only and el.tag not in ("resources", "fencing-topology"))
            or (len(el) == 0 and not el.attrib)
        ):
            conf.remove(el)
    if stonith_only:
        resources = conf.find("resources")
        for rsc in list(resources if resources is not None else []):
            if rsc.get("class") != "stonith":
                resources.remove(rsc)
    return conf


def pcs_configuration(
    overrides: Sequence[str] = (),
    steps: Sequence[str] = (),
    env_file: Path = ENV_EXAMPLE,
    workdir: Path | None = None,
) -> bytes:
    """What nova-ha.pcs makes of an empty CIB (pcs -f): the whole CIB as XML."""
    import tempfile

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        cib = Path(tmp) / "cib.xml"
        cib.write_text(
            subprocess.run(
                ["cibadmin", "--empty"], capture_output=True, text=True, check=True, timeout=30
            ).stdout
        )
        res = subprocess.run(
            ["bash", str(PCS_SCRIPT), "-e", str(env_file), "-f", str(cib), *overrides, *steps],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if res.returncode != 0:
            raise RuntimeError(
                f"nova-ha.pcs failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
            )
        return cib.read_bytes()


# -- records (CIB node attributes), read the way every controller can ------------------------

SERVICE_LOG_DIR = "/var/log/pacemaker/nova-ha"


def records(cluster: Cluster) -> dict:
    """Every node's nova-ha record (state.HostRecord), from one cibadmin query on a live
    controller (works for the two-controller bed too, whose CIB is not reachable from the
    root namespace)."""
    from lxml import etree

    from nova_ha.lib import state

    out = cluster.cibadmin("--query", "--scope", "nodes").stdout
    root = etree.fromstring(out.encode())
    return {
        n.get("uname"): state._decode(n.get("uname"), state._node_attrs(n))
        for n in root.iter("node")
    }


def started_on(mon, rsc_id: str) -> set[str]:
    """Nodes where every instance of `rsc_id` (a primitive, maybe cloned) is Started."""
    found = set()
    for r in mon.iter("resource"):
        if r.get("id") == rsc_id and r.get("role") == "Started" and r.get("failed") == "false":
            found.update(n.get("name") for n in r.iter("node"))
    return found


# -- the bed ------------------------------------------------------------------------------


@dataclass
class PowerEvent:
    at: float
    device: str  # "bmc" or "level2"
    node: str
    what: str  # "off" / "on"


class E2EBed(bedlib.Managed):
    """Cluster + Nova box + BMCs + the crm-config configuration; a context manager."""

    def __init__(
        self,
        controllers: int = 1,
        *,
        env_file: Path = ENV_EXAMPLE,
        apply: str = "pcs",
        service_down_time: int = 5,
    ) -> None:
        if apply not in ("pcs", "xml"):
            raise ValueError("apply is 'pcs' or 'xml'")
        self.controllers = controllers
        self.env_file = Path(env_file)
        self.apply = apply
        self.service_down_time = service_down_time
        self.env = read_env(self.env_file)
        self.nodes = list(entries(self.env["NHA_COMPUTE_NODES"]))
        self.cluster: Cluster | None = None
        self.box = None
        self.bmcs: dict[str, object] = {}
        self.level2: dict[str, object] = {}
        self.power_events: list[PowerEvent] = []
        self.callback_errors: list[str] = []
        self.timings: dict[str, float] = {}
        self._lock = threading.Lock()

    # -- lifecycle ------------------------------------------------------------------------
    @staticmethod
    def missing() -> list[str]:
        """What this machine lacks to run the bed (empty when it can)."""
        from testbed import nova_box

        missing = bedlib.missing_requirements()
        if not nova_box.available():
            missing.append(f"Nova box venv ({nova_box.VENV_DIR})")
        for agent in AGENTS:
            if not agent.is_file():
                missing.append(f"{agent} (nova-ha install-agents)")
        for tool in ("fence_ipmilan", "ipmitool", "crm_verify"):
            if shutil.which(tool) is None:
                missing.append(tool)
        return missing

    def start(self) -> None:
        from testbed.nova_box import NovaBox

        t0 = time.monotonic()
        self._write_files()
        # In the environment of corosync, pacemakerd and every pacemaker-remoted the bed
        # starts: the agents they run inherit it.
        self.cluster = Cluster(
            controllers=self.controllers,
            env={
                "OS_CLIENT_CONFIG_FILE": str(E2E_DIR / "clouds.yaml"),
                # The evacuation service's log: in each controller's
                # own (bind-mounted) log folder.
                "NOVA_HA_LOG_DIR": SERVICE_LOG_DIR,
            },
        )
        self.cluster.start()
        self.timings["cluster start"] = time.monotonic() - t0
        if self.cluster.host_address != BOX_ADDRESS:
            raise ClusterError(
                f"the bridge's address is {self.cluster.host_address}, the "
                f"env file expects {BOX_ADDRESS}"
            )
        t1 = time.monotonic()
        self.box = NovaBox(
            hosts=self.nodes,
            binds=(BOX_ADDRESS,),
            port=BOX_PORT,
            state_dir=self.cluster.run_dir / "nova-box",
            service_down_time=self.service_down_time,
        )
        self.box.boot()
        self.timings["box boot"] = time.monotonic() - t1
        self._start_bmcs()
        if self.controllers > 1:
            # The controllers need fencing too; their "BMC" is the bed's kill_controller.
            self.cluster.add_test_stonith("st-controllers", hosts=self.cluster.controller_names)
        remote = entries(self.env["NHA_COMPUTE_NODES"])
        for name in self.nodes:
            self._add_node(name, remote[name])
        t2 = time.monotonic()
        self.apply_configuration()
        self.wait_ready(timeout=120)
        self.timings["configuration applied -> ready"] = time.monotonic() - t2
        self.timings["bed start"] = time.monotonic() - t0

    def stop(self) -> None:
        errors = []
        if self.cluster is not None:
            try:
                self.cluster.stop()
            except Exception as exc:  # noqa: BLE001
                errors.append(f"cluster: {exc}")
        for sim in list(self.bmcs.values()) + list(self.level2.values()):
            with contextlib.suppress(Exception):
                sim.stop()
        if self.box is not None:
            try:
                self.box.stop()
            except Exception as exc:  # noqa: BLE001
                errors.append(f"nova box: {exc}")
        shutil.rmtree(E2E_DIR, ignore_errors=True)
        if errors:
            raise ClusterError("; ".join(errors))

    # -- files the env file points at -----------------------------------------------------
    def _write_files(self) -> None:
        if E2E_DIR.exists():
            shutil.rmtree(E2E_DIR)
        E2E_DIR.mkdir(parents=True)
        os.chmod(E2E_DIR, 0o700)
        env = self.env
        clouds = textwrap.dedent(f"""\
            # nova-ha e2e test bed: the cloud of NHA_OS_CLOUD (the Nova box)
            clouds:
              {env["NHA_OS_CLOUD"]}:
                auth:
                  auth_url: http://{BOX_ADDRESS}:{BOX_PORT}/identity/v3
                  username: admin
                  password: secret
                  project_name: admin
                  user_domain_name: Default
                  project_domain_name: Default
                region_name: RegionOne
                interface: internal
            """)
        path = E2E_DIR / "clouds.yaml"
        path.write_text(clouds)
        os.chmod(path, 0o600)
        script = Path(env["NHA_BMC_PASSWORD_SCRIPT"])
        if script.parent != E2E_DIR:
            raise ClusterError(f"NHA_BMC_PASSWORD_SCRIPT must be in {E2E_DIR} on the bed")
        shutil.copy(PASSWORD_SCRIPT, script)
        os.chmod(script, 0o755)
        lines = [f"{n} {self.bmc_password(n)}" for n in self.nodes]
        prefix = env.get("NHA_LEVEL2_KEY_PREFIX", "")
        lines += [f"{prefix}{n} {self.bmc_password(prefix + n)}" for n in self.nodes]
        passwords = E2E_DIR / "bmc-passwords"
        passwords.write_text("# nova-ha e2e test bed BMC passwords\n" + "\n".join(lines) + "\n")
        os.chmod(passwords, 0o600)
        # NovaCompute's start/stop/status commands: this node's compute in the box (the
        # node's hostname is its name). start and stop are logged with the time.
        service = E2E_DIR / "compute-service"
        service.write_text(
            textwrap.dedent(f"""\
            #!/bin/sh
            # nova-ha e2e test bed: nova-compute of this node, in the Nova box
            case "$1" in start|stop)
                echo "$(date +%s.%N) $(hostname) $1" >> {E2E_DIR}/compute-service.log ;;
            esac
            exec {sys.executable} {CLOUD_SERVICE} http://{BOX_ADDRESS}:{BOX_PORT} \\
                "$(hostname)" "$1"
            """)
        )
        os.chmod(service, 0o755)
        for key in (
            "NHA_COMPUTE_START_COMMAND",
            "NHA_COMPUTE_STOP_COMMAND",
            "NHA_COMPUTE_STATUS_COMMAND",
        ):
            if not env.get(key, "").startswith(str(service)):
                raise ClusterError(f"{key} must run {service} on the bed")

    @staticmethod
    def bmc_password(key: str) -> str:
        """A distinct password per BMC (IPMI allows at most 20 bytes)."""
        import hashlib

        return "pw" + hashlib.sha256(f"{key}:{os.getpid()}".encode()).hexdigest()[:14]

    # -- power ---------------------------------------------------------------------------
    def _start_bmcs(self) -> None:
        from testbed.bmc import BmcSim

        env = self.env
        prefix = env.get("NHA_LEVEL2_KEY_PREFIX", "")
        for kind, table, store, key in (
            ("bmc", entries(env["NHA_BMCS"]), self.bmcs, ""),
            ("level2", entries(env.get("NHA_LEVEL2", "")), self.level2, prefix),
        ):
            for node in self.nodes:
                if node not in table:
                    continue
                address, port = address_port(table[node])
                sim = BmcSim(
                    f"{kind}-{node}",
                    address=address,
                    port=port,
                    username=env["NHA_BMC_USERNAME"],
                    password=self.bmc_password(key + node),
                    on_power_off=lambda n=node, k=kind: self._power_off(n, k),
                    on_power_on=lambda n=node, k=kind: self._power_on(n, k),
                )
                sim.start()
                store[node] = sim

    def _power_off(self, node: str, device: str) -> None:
        try:
            self.cluster.power_off(node)
            self.box.crash(node)
        except Exception as exc:
            self.callback_errors.append(f"{device} {node} off: {exc!r}")
            raise
        finally:
            self.power_events.append(PowerEvent(time.time(), device, node, "off"))

    def _power_on(self, node: str, device: str) -> None:
        try:
            self.cluster.start_remote(node)
        except Exception as exc:
            self.callback_errors.append(f"{device} {node} on: {exc!r}")
            raise
        finally:
            self.power_events.append(PowerEvent(time.time(), device, node, "on"))

    def off_times(self, node: str, after: float = 0.0) -> list[float]:
        """When a power device of `node` reported it off (its state flipped), since `after`."""
        times = []
        for sims in (self.bmcs, self.level2):
            sim = sims.get(node)
            if sim is not None:
                times += [t for t, what in sim.power_log if what == "off" and t >= after]
        return sorted(times)

    # -- nodes -----------------------------------------------------------------------------
    def _add_node(self, name: str, address: str) -> None:
        """The node's namespace and pacemaker-remoted; the configuration under test creates
        its connection resource."""
        env = self.env
        node = self.cluster.add_remote(
            name,
            monitor_interval=env["NHA_REMOTE_MONITOR_INTERVAL"],
            monitor_timeout=env["NHA_REMOTE_MONITOR_TIMEOUT"],
            reconnect_interval=env["NHA_REMOTE_RECONNECT_INTERVAL"],
            wait=False,
            via="none",
        )
        if node.address != address:
            raise ClusterError(f"{name} got address {node.address}; the env file says {address}")

    # -- configuration ---------------------------------------------------------------------
    def apply_configuration(self) -> None:
        c = self.cluster
        if self.apply == "pcs":
            cib = E2E_DIR / "cib.xml"
            c.pcs("cluster", "cib", str(cib))
            c.run(["bash", str(PCS_SCRIPT), "-e", str(self.env_file), "-f", str(cib)], timeout=300)
            c.pcs("cluster", "cib-push", str(cib), "--config")
        else:
            c.cibadmin("--modify", "--allow-create", "--xml-file", str(CIB_XML))

    def verify(self) -> str:
        """crm_verify -L: '' when clean, else its complaints."""
        res = self.cluster.run(["crm_verify", "-L", "-V"], check=False)
        if res.returncode == 0 and not res.stderr.strip():
            return ""
        detail = self.cluster.run(["crm_verify", "-L", "-VVVV"], check=False)
        lines = [
            line
            for line in (detail.stdout + detail.stderr).splitlines()
            if "warning" in line or "error" in line
        ]
        return f"exit {res.returncode}: {res.stdout}{res.stderr}" + "\n".join(lines)

    def stonith_ids(self, path: Path) -> list[str]:
        conf = configuration_part(path.read_bytes(), stonith_only=True)
        return [rsc.get("id") for rsc in conf.find("resources")]

    def wait_started(self, ids: Iterable[str], timeout: float = 60) -> float:
        ids = list(ids)

        def started() -> bool:
            mon = self.cluster.crm_mon()
            return all(started_on(mon, rsc) for rsc in ids)

        return self.wait_for(started, timeout, f"{', '.join(ids)} to be started")

    def use_topology(self) -> None:
        """Switch the compute nodes' fencing to the topology variant: the per-node
        fence_nova_evacuate devices go, nova-ha-topology.cib.xml comes (cibadmin)."""
        c = self.cluster
        for node in self.nodes:
            c.cibadmin("--delete", "--xml-text", f'<primitive id="fence-{node}"/>')
        c.cibadmin("--modify", "--allow-create", "--xml-file", str(TOPOLOGY_XML))
        self.wait_started(self.stonith_ids(TOPOLOGY_XML))
        # The deleted devices are orphans until Pacemaker has stopped them.
        self.wait_for(lambda: "orphan" not in self.verify(), 60, "the old devices to stop")

    def use_fence_devices(self) -> None:
        """Back from the topology to the per-node devices of nova-ha.cib.xml."""
        from lxml import etree

        c = self.cluster
        c.cibadmin("--delete", "--xml-text", "<fencing-topology/>", check=False)
        topo = configuration_part(TOPOLOGY_XML.read_bytes(), stonith_only=True)
        for rsc in topo.find("resources"):
            c.cibadmin("--delete", "--xml-text", f'<primitive id="{rsc.get("id")}"/>')
        conf = configuration_part(CIB_XML.read_bytes(), stonith_only=True)
        for rsc in conf.find("resources"):
            c.cib_create("resources", etree.tostring(rsc).decode())
        self.wait_started(self.stonith_ids(CIB_XML))

    def set_device_params(self, device: str, **params: object) -> None:
        for name, value in params.items():
            self.cluster.crm_resource(
                "--resource", device, "--set-parameter", name, "--parameter-value", str(value)
            )

    def reset_device_params(self, device: str, *names: str) -> None:
        """Back to the values of the configuration (nova-ha.cib.xml)."""
        conf = configuration_part(CIB_XML.read_bytes())
        for name in names:
            nv = conf.find(f".//primitive[@id='{device}']//nvpair[@name='{name}']")
            if nv is None:
                self.cluster.crm_resource("--resource", device, "--delete-parameter", name)
            else:
                self.set_device_params(device, **{name: nv.get("value")})

    # -- waiting -----------------------------------------------------------------------------
    def ready(self, nodes: Iterable[str] | None = None) -> bool:
        """`nodes` (default: all compute nodes) online with NovaCompute started, and
        NovaEvacuate started."""
        nodes = list(self.nodes if nodes is None else nodes)
        c = self.cluster
        try:
            mon = c.crm_mon()
        except (ClusterError, subprocess.TimeoutExpired, ValueError):
            return False
        states = c.nodes(mon=mon)
        for name in nodes:
            state = states.get(name, {})
            if state.get("online") != "true" or state.get("unclean") == "true":
                return False
        if not set(nodes) <= started_on(mon, "nova-compute"):
            return False
        return bool(started_on(mon, "nova-evacuate"))

    def wait_ready(self, timeout: float = 120, nodes: Iterable[str] | None = None) -> float:
        """Every compute node (or `nodes`) online with NovaCompute started, NovaEvacuate
        started."""
        return self.cluster.wait_for(
            lambda: self.ready(nodes),
            timeout,
            "the compute nodes and nova-ha resources to be started",
            interval=0.5,
        )

    def wait_for(self, what, timeout: float, desc: str, interval: float = 0.2) -> float:
        return self.cluster.wait_for(what, timeout, desc, interval=interval)

    def restore(self, timeout: float = 120) -> None:
        """Back to a healthy cloud after a scenario, whatever it left: every node powered
        and linked, BMCs answering, Nova's API up, every compute up and enabled, no server,
        no nova-ha record, no failed action, an empty request log."""
        c = self.cluster
        self.box.reset_faults()
        for sims in (self.bmcs, self.level2):
            for sim in sims.values():
                sim.unreachable = False
                sim.refuse = False
        for name in self.nodes:
            with contextlib.suppress(Exception):
                c.restore_link(name)
            if not c.remotes[name].pid:
                with contextlib.suppress(ClusterError):
                    c.start_remote(name)
                self.bmcs[name].power_state = "on"
        self.wait_ready(timeout)
        observer = self.observer()
        nova = observer.nova
        for server in nova.servers.list(search_opts={"all_tenants": 1}):
            nova.servers.delete(server.id)
        self.wait_for(
            lambda: not nova.servers.list(search_opts={"all_tenants": 1}),
            timeout,
            "the servers to be deleted",
            interval=0.5,
        )
        for name in self.nodes:

            def healthy(name: str = name) -> bool:
                if not self.box.hosts()[name]["running"]:
                    self.box.start(name)
                svc = observer.service(name)
                with contextlib.suppress(Exception):
                    if svc.forced_down:
                        nova.services.force_down(svc.id, False)
                    if svc.status == "disabled":
                        nova.services.enable(svc.id)
                svc = observer.service(name)
                return svc.state == "up" and not svc.forced_down and svc.status == "enabled"

            self.wait_for(healthy, timeout, f"{name} back in service", interval=1)
        c.cibadmin(
            "--delete-all",
            "--force",
            "--xpath",
            "/cib/configuration/nodes/node/"
            "instance_attributes/nvpair[starts-with(@name,'nova-ha-')]",
            check=False,
        )
        c.crm_resource("--cleanup", check=False)
        c.stonith_admin("--history", "*", "--cleanup", check=False)
        self.box.clear_request_log()
        self.callback_errors.clear()

    # -- observing -----------------------------------------------------------------------------
    def observer(self):
        from testbed.observe import Observer

        return Observer(self.box)

    def rejoined(self, node: str) -> bool:
        """Is the node back: record 'ok', its nova-compute up, enabled, not forced down?"""
        svc = self.observer().service(node)
        record = records(self.cluster).get(node)
        return (
            svc.state == "up"
            and not svc.forced_down
            and svc.status == "enabled"
            and record is not None
            and record.state == "ok"
        )

    def requests(self, after: float = 0.0) -> list[dict]:
        return [r for r in self.box.request_log() if r["t"] >= after]

    def accepted_evacuations(self, after: float = 0.0) -> collections.Counter:
        return collections.Counter(
            r["path"].split("/")[-2]
            for r in self.requests(after)
            if r.get("action") == "evacuate" and r["status"] and 200 <= r["status"] < 300
        )

    def compute_starts(self, node: str, after: float = 0.0) -> list[float]:
        """When NovaCompute ran the start command on `node` (compute-service.log)."""
        try:
            lines = (E2E_DIR / "compute-service.log").read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            at, host, action = line.split()
            if host == node and action == "start" and float(at) >= after:
                out.append(float(at))
        return out

    def fence_agent_pids(self) -> list[tuple[int, str]]:
        """(pid, controller) of every fence_nova_evacuate the bed's controllers run."""
        return [
            (pid, name)
            for name in self.cluster.controllers
            for pid, _ in self.cluster.processes(name, "fence_nova_evacuate")
        ]

    def fence_requests(self, node: str, after: float = 0.0) -> list[float]:
        """When the fencer of any controller was asked to fence `node` (its log line
        "... wants to fence (reboot) NODE"), as time.time() values since `after`."""
        found = []
        for name in self.cluster.controllers:
            found += [
                t
                for t, line in bedlib.log_lines(self.pacemaker_log(name), "wants to fence", after)
                if f") {node} " in line + " "
            ]
        return sorted(found)

    def fence_done(self, node: str, after: float = 0.0) -> list[float]:
        """When a fence action against `node` ended successfully (the fencer's result line
        on any controller), as time.time() values since `after`."""
        found = []
        for name in self.cluster.controllers:
            found += [
                t
                for t, line in bedlib.log_lines(self.pacemaker_log(name), "Operation", after)
                if f"targeting {node} " in line + " "
                and re.search(
                    r"targeting \S+ (?:by \S+ )?(?:on behalf|for).*: OK|"
                    r"targeting \S+ using \S+ returned 0",
                    line,
                )
            ]
        return sorted(found)

    def pacemaker_log(self, node: str) -> Path:
        return self.cluster.run_dir / node / "log" / "pacemaker" / "pacemaker.log"

    def agent_pids(self, node: str, agent: str, action: str) -> list[int]:
        """PIDs of `agent` (e.g. NovaCompute) running `action` on remote node `node`."""
        return [pid for pid, argv in self.cluster.processes(node, agent) if action in argv]

    def set_role(self, resource: str, role: str) -> None:
        """target-role of a resource: Stopped / Started."""
        self.cluster.crm_resource(
            "--resource",
            resource,
            "--meta",
            "--set-parameter",
            "target-role",
            "--parameter-value",
            role,
        )

    def service_log(self, node: str) -> str:
        """The evacuation service's log on controller `node` ('' if it never ran there)."""
        path = self.cluster.run_dir / node / "log" / "pacemaker" / "nova-ha" / "nova-evacuate.log"
        try:
            return path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def service_workers(self) -> list[tuple[int, str, str]]:
        """(pid, controller, node) of every evacuation worker busy with a node, from the
        services' logs ("NODE: ...; evacuating (worker PID)"), still running."""
        found = []
        for name in self.cluster.controllers:
            running = {
                pid
                for pid, argv in self.cluster.processes(name, "")
                if "nova_ha.lib.evacuation_service" in argv and "worker" in argv
            }
            for node, pid in re.findall(
                r"INFO: (\S+): [^\n]*; evacuating \(worker (\d+)\)", self.service_log(name)
            ):
                if int(pid) in running:
                    found.append((int(pid), name, node))
        return found

    def kill_fence_agent(self) -> list[int]:
        """SIGKILL every running fence_nova_evacuate of the bed (as the stonith timeout
        does); returns the PIDs."""
        killed = []
        for pid, _ in self.fence_agent_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        return killed

    def log_tail(self, lines: int = 40) -> str:
        parts = [self.cluster.log_tail(lines)] if self.cluster else []
        if self.box is not None:
            parts.append(
                f"==== nova box ({self.box.log_path}) ====\n"
                + bedlib.Cluster._tail(Path(self.box.log_path), lines)
            )
        if self.callback_errors:
            parts.append("==== BMC callback errors ====\n" + "\n".join(self.callback_errors))
        return "\n".join(parts)
