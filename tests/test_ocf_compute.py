"""The OCF agents under resource-agents' ocf-tester and Pacemaker's crm_resource, driving a
simulated cloud (so start's safety checks really ask Nova)."""

import os
import subprocess
import sys

import pytest

from testbed import util
from testbed.cib import write_cib
from tests.conftest import CLOUD_SERVICE
from tests.helpers import COMPUTE_AGENT, need_binary, run_ocf

OCF_DIR = "/usr/lib/ocf/resource.d/nova-ha"
NODE = os.uname().nodename  # ocf-tester runs the agent as on this node


@pytest.fixture
def cloud(tmp_path, monkeypatch):
    from testbed.nova_sim import NovaSim

    monkeypatch.setenv("CIB_file", write_cib(tmp_path / "cib.xml", [NODE, "host2"]))
    monkeypatch.setenv("HA_RSCTMP", str(tmp_path))
    with NovaSim(hosts=[NODE, "host2"]) as sim:
        sim.crash(NODE)  # nova-compute of this node is not running yet
        yield sim


def _params(cloud) -> dict:
    base = cloud.auth_url.rsplit("/identity", 1)[0]
    command = f"{sys.executable} {CLOUD_SERVICE} {base} {NODE} {{}}"
    return {
        **util.cloud_params(cloud),
        "start_command": command.format("start"),
        "stop_command": command.format("stop"),
        "status_command": command.format("status"),
    }


def _ocf_tester(agent: str, params: dict) -> subprocess.CompletedProcess:
    tester = need_binary("ocf-tester")
    need_binary(os.path.join(OCF_DIR, agent))
    args = [tester, "-n", f"test-{agent}"]
    for key, value in params.items():
        args += ["-o", f"{key}={value}"]
    return subprocess.run(
        args + [os.path.join(OCF_DIR, agent)], capture_output=True, text=True, timeout=600
    )


def test_ocf_tester_novacompute(cloud):
    done = _ocf_tester("NovaCompute", _params(cloud))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "passed all tests" in done.stdout


def test_ocf_tester_novaevacuate(cloud):
    params = {k: v for k, v in _params(cloud).items() if k.startswith("os_")}
    done = _ocf_tester("NovaEvacuate", params)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "passed all tests" in done.stdout


def test_start_stop_monitor_drive_the_service(cloud):
    params = _params(cloud)
    meta = {"on_node": NODE, "timeout": 60000}
    assert run_ocf(COMPUTE_AGENT, "monitor", params, meta={"interval": 0}).returncode == 7
    assert run_ocf(COMPUTE_AGENT, "start", params, meta).returncode == 0
    assert cloud.hosts()[NODE]["running"]
    assert run_ocf(COMPUTE_AGENT, "start", params, meta).returncode == 0  # idempotent
    checked = dict(params, check_nova_service="true")
    assert run_ocf(COMPUTE_AGENT, "monitor", checked, {"interval": 10000}).returncode == 0
    assert run_ocf(COMPUTE_AGENT, "stop", params, meta).returncode == 0
    assert run_ocf(COMPUTE_AGENT, "monitor", params, {"interval": 10000}).returncode == 7
    assert run_ocf(COMPUTE_AGENT, "stop", params, meta).returncode == 0  # idempotent


def test_monitor_with_nova_check_reports_a_down_service(cloud):
    params = dict(_params(cloud), check_nova_service="true")
    meta = {"on_node": NODE, "timeout": 60000}
    assert run_ocf(COMPUTE_AGENT, "start", params, meta).returncode == 0
    cloud.force_down(NODE, True)
    done = run_ocf(COMPUTE_AGENT, "monitor", params, {"interval": 10000, "on_node": NODE})
    assert done.returncode == 1 and "ocf-exit-reason:Nova reports" in done.stderr
    # a probe never acts on Nova's view: the process runs
    assert run_ocf(COMPUTE_AGENT, "monitor", params, {"interval": 0}).returncode == 0


def test_crm_resource_force_actions(cloud):
    crm_resource = need_binary("crm_resource")
    need_binary(os.path.join(OCF_DIR, "NovaCompute"))
    base = [crm_resource, "--class", "ocf", "--provider", "nova-ha", "--agent", "NovaCompute"]
    for key, value in _params(cloud).items():
        base += ["--option", f"{key}={value}"]

    def run(op):
        return subprocess.run(base + [op], capture_output=True, text=True, timeout=300)

    started = run("--force-start")
    assert started.returncode == 0, started.stdout + started.stderr
    assert run("--force-check").returncode == 0
    assert run("--force-stop").returncode == 0
    assert run("--force-check").returncode == 7
