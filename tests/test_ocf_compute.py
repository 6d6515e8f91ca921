"""NovaCompute under resource-agents' ocf-tester and Pacemaker's crm_resource."""

import os
import subprocess
import sys

from tests.helpers import COMPUTE_AGENT, ROOT, need_binary, run_ocf

INSTALLED = "/usr/lib/ocf/resource.d/nova-ha/NovaCompute"
FAKE = os.path.join(ROOT, "tests", "testbed", "fake_service.py")


def _commands(pidfile) -> dict:
    base = f"{sys.executable} {FAKE} {{}} {pidfile}"
    return {"start_command": base.format("start"), "stop_command": base.format("stop"),
            "status_command": base.format("status")}


def test_ocf_tester_runs_clean(tmp_path):
    tester = need_binary("ocf-tester")
    need_binary(INSTALLED)
    pidfile = tmp_path / "nova-compute.pid"
    args = [tester, "-n", "nova-compute-test"]
    for key, value in _commands(pidfile).items():
        args += ["-o", f"{key}={value}"]
    done = subprocess.run(args + [INSTALLED], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "passed all tests" in done.stdout


def test_start_stop_monitor_drive_the_service(tmp_path):
    pidfile = tmp_path / "svc.pid"
    params = _commands(pidfile)
    assert run_ocf(COMPUTE_AGENT, "monitor", params, meta={"interval": 0}).returncode == 7
    assert run_ocf(COMPUTE_AGENT, "start", params).returncode == 0
    assert pidfile.exists()
    assert run_ocf(COMPUTE_AGENT, "start", params).returncode == 0  # idempotent
    assert run_ocf(COMPUTE_AGENT, "monitor", params, meta={"interval": 10000}).returncode == 0
    assert run_ocf(COMPUTE_AGENT, "stop", params).returncode == 0
    assert run_ocf(COMPUTE_AGENT, "monitor", params, meta={"interval": 10000}).returncode == 7
    assert run_ocf(COMPUTE_AGENT, "stop", params).returncode == 0  # idempotent


def test_crm_resource_force_actions(tmp_path):
    crm_resource = need_binary("crm_resource")
    need_binary(INSTALLED)
    pidfile = tmp_path / "svc.pid"
    base = [crm_resource, "--class", "ocf", "--provider", "nova-ha", "--agent", "NovaCompute"]
    for key, value in _commands(pidfile).items():
        base += ["--option", f"{key}={value}"]

    def run(op):
        return subprocess.run(base + [op], capture_output=True, text=True, timeout=120)

    assert run("--force-start").returncode == 0
    assert run("--force-check").returncode == 0
    assert run("--force-stop").returncode == 0
    assert run("--force-check").returncode == 7
