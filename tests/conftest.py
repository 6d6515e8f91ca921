"""Fixtures shared by the suite: an offline CIB, a simulated cloud and one BMC per host."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from testbed.cib import write_cib
from testbed.webhook import Webhook
from tests.helpers import EVACUATE_AGENT, run_fence, run_ocf, wait_until

# The real Nova 34 box (session-scoped `nova_box` fixture).
pytest_plugins = ["testbed.nova_box.fixtures"]

HOSTS = ["host1", "host2", "host3"]
CLOUD_SERVICE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "testbed", "cloud_service.py"
)


@pytest.fixture(scope="session", autouse=True)
def token_dir(tmp_path_factory) -> Iterator[str]:
    """The agents' Keystone token cache (os_token_cache) of this session: in a private
    directory of its own, not the machine's /run/nova-ha/tokens."""
    path = tmp_path_factory.mktemp("tokens")
    os.chmod(path, 0o700)
    saved = os.environ.get("NOVA_HA_TOKEN_DIR")
    os.environ["NOVA_HA_TOKEN_DIR"] = str(path)
    yield str(path)
    if saved is None:
        os.environ.pop("NOVA_HA_TOKEN_DIR", None)
    else:
        os.environ["NOVA_HA_TOKEN_DIR"] = saved


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    """An HTTP receiver on 127.0.0.1 recording every POST (notify_url)."""
    with Webhook() as hook:
        yield hook


@pytest.fixture
def cib_file(tmp_path) -> str:
    return write_cib(tmp_path / "cib.xml", HOSTS)


@dataclass
class Bed:
    """A cloud (simulated or real) with a BMC simulator per host, wired together: a BMC
    power-off crashes the host's compute in the cloud."""

    cloud: object
    bmcs: dict
    cib: str

    def fence_params(self, host: str = "host1", **extra) -> dict:
        bmc = self.bmcs[host]
        values = {
            "action": "off",
            "port": host,
            "os_auth_url": self.cloud.auth_url,
            "os_username": self.cloud.username,
            "os_password": self.cloud.password,
            "os_project_name": self.cloud.project_name,
            "os_interface": "public",
            "ip": "127.0.0.1",
            "ipport": bmc.port,
            "username": bmc.username,
            "password": bmc.password,
            "power_timeout": 10,
            "evacuate_timeout": 60,
        }
        values.update(extra)
        return {k: v for k, v in values.items() if v is not None}

    def os_params(self, **extra) -> dict:
        values = {
            "os_auth_url": self.cloud.auth_url,
            "os_username": self.cloud.username,
            "os_password": self.cloud.password,
            "os_project_name": self.cloud.project_name,
            "os_interface": "public",
        }
        values.update(extra)
        return {k: v for k, v in values.items() if v is not None}

    def compute_params(self, host: str, **extra) -> dict:
        """NovaCompute parameters whose commands drive `host`'s compute in the cloud."""
        base = self.cloud.auth_url.rsplit("/identity", 1)[0]
        command = f"{sys.executable} {CLOUD_SERVICE} {base} {host} {{}}"
        return self.os_params(
            start_command=command.format("start"),
            stop_command=command.format("stop"),
            status_command=command.format("status"),
            **extra,
        )

    def clouds_yaml(self, path, name: str) -> str:
        """A clouds.yaml naming this cloud `name` (for os_cloud); returns its path."""
        cloud = self.cloud
        with open(path, "w") as f:
            f.write(f"""clouds:
  {name}:
    auth:
      auth_url: {cloud.auth_url}
      username: {cloud.username}
      password: {cloud.password}
      project_name: {cloud.project_name}
      user_domain_name: Default
      project_domain_name: Default
    interface: public
""")
        return str(path)

    def env(self) -> dict:
        """The agents' environment: the bed's CIB file, and the evacuation service's socket
        and log in the bed's own folder."""
        base = os.path.dirname(self.cib)
        return dict(
            os.environ,
            CIB_file=self.cib,
            NOVA_HA_RUN_DIR=os.path.join(base, "run"),
            NOVA_HA_LOG_DIR=os.path.join(base, "log"),
            HA_RSCTMP=os.path.join(base, "rsctmp"),
        )

    @contextlib.contextmanager
    def evacuation_service(self, env: dict | None = None, **extra) -> Iterator[EvacService]:
        """NovaEvacuate started and stopped through its OCF agent, as Pacemaker does; its
        parameters are the bed's OpenStack settings plus those of `extra` it knows."""
        from nova_ha.lib import params as table

        env = env or self.env()
        given = {
            k: v
            for k, v in extra.items()
            if table.canonical_name(k, table.EVACUATE) and v is not None
        }
        if given.get("evacuate") not in ("all", "tagged"):
            given.pop("evacuate", None)  # the device's none/record: the service's own mode
        values = self.os_params(**{"evacuate": "all", **given})
        started = run_ocf(EVACUATE_AGENT, "start", values, env=env, timeout=60)
        assert started.returncode == 0, started.stderr
        service = EvacService(values, env)
        try:
            yield service
        finally:
            stopped = run_ocf(EVACUATE_AGENT, "stop", values, env=env, timeout=60)
            assert stopped.returncode == 0, stopped.stderr

    def fence(self, host: str = "host1", **extra) -> subprocess.CompletedProcess[str]:
        return self.fence_with(self.fence_params(host, **extra), **extra)

    def fence_with(
        self, values: dict, env: dict | None = None, timeout: float = 120, **extra
    ) -> subprocess.CompletedProcess[str]:
        """One fence action, as Pacemaker runs it, beside an evacuation service; returns
        once the service has recorded the outcome. stderr holds the fence agent's log, then
        the service's."""
        env = env or self.env()
        with self.evacuation_service(env=env, **extra) as service:
            done = run_fence(values, env=env, timeout=timeout)
            if done.returncode == 0 and values.get("action", "off") in ("off", "reboot"):
                service.wait_settled(values["port"], timeout)
            log = service.log()
        return subprocess.CompletedProcess(
            done.args, done.returncode, done.stdout, done.stderr + log
        )

    def off_time(self, host: str) -> float:
        offs = [t for t, what in self.bmcs[host].power_log if what == "off"]
        assert offs, f"the BMC of {host} never reported off"
        return offs[0]

    def requests(self, action: str | None = None, method: str | None = None) -> list[dict]:
        return [
            r
            for r in self.cloud.request_log()
            if (action is None or r.get("action") == action)
            and (method is None or r["method"] == method)
        ]


@dataclass
class EvacService:
    """A running evacuation service of a bed."""

    params: dict
    env: dict

    def log(self) -> str:
        path = os.path.join(self.env["NOVA_HA_LOG_DIR"], "NovaEvacuate.log")
        try:
            with open(path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def wait_settled(self, node: str, timeout: float = 120) -> None:
        """Until the host's record no longer waits on the service: an outcome recorded, or
        the lease given back."""
        from nova_ha.lib import handover, state

        store = state.CibStateStore(self.env["CIB_file"])

        def settled() -> bool:
            record = store.get(node)
            return not (
                record.state in ("fenced", "evacuating")
                and record.lease_owner == handover.SERVICE_OWNER
            )

        wait_until(settled, timeout, interval=0.1)


def _bed(cloud, cib: str) -> Iterator[Bed]:
    from testbed.bmc import BmcSim

    bmcs = {}
    try:
        for host in HOSTS:
            # Power-off kills the host's nova-compute. Power-on boots the node but does not
            # start nova-compute: Pacemaker does that through NovaCompute once it is safe.
            bmc = BmcSim(host, on_power_off=lambda h=host: cloud.crash(h))
            bmc.start()
            bmcs[host] = bmc
        bed = Bed(cloud=cloud, bmcs=bmcs, cib=cib)
        yield bed
    finally:
        # A test that failed half-way leaves no evacuation service behind.
        run_ocf(EVACUATE_AGENT, "stop", {}, env=Bed(cloud, {}, cib).env(), timeout=60)
        for bmc in bmcs.values():
            bmc.stop()


@pytest.fixture
def box_bed(nova_box, cib_file) -> Iterator[Bed]:
    """The real Nova 34 box (shared by the session): every host is put back in service
    after the test (compute started, forced_down lifted, enabled)."""
    try:
        yield from _bed(nova_box, cib_file)
    finally:
        from testbed.observe import back_in_service

        for host in HOSTS:
            back_in_service(nova_box, host)


@pytest.fixture
def sim_bed(cib_file) -> Iterator[Bed]:
    from testbed.nova_sim import NovaSim

    with NovaSim(hosts=HOSTS) as cloud:
        yield from _bed(cloud, cib_file)
