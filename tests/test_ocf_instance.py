"""NovaInstanceHA as Pacemaker runs it: start, monitor and stop a real monitor process (its
libvirt a fake module through the monitor's test hook), metadata from the table."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AGENT = os.path.join(ROOT, "agents", "ocf", "NovaInstanceHA")


@pytest.fixture
def env(tmp_path):
    return {
        "PATH": os.environ["PATH"],
        "HA_RSCTMP": str(tmp_path / "rsctmp"),
        "NOVA_HA_LOG_DIR": str(tmp_path / "log"),
        "NOVA_HA_INSTANCE_LIBVIRT": "tests.fake_libvirt",
        "OCF_RESOURCE_INSTANCE": "nova-instance-ha:0",
        "OCF_RESKEY_CRM_meta_on_node": "compute1",
        "OCF_RESKEY_CRM_meta_timeout": "20000",
        "OCF_RESKEY_os_auth_url": "http://127.0.0.1:9/v3",
        "OCF_RESKEY_os_username": "admin",
        "OCF_RESKEY_os_password": "s3cret-pass",
        "OCF_RESKEY_os_project_name": "admin",
        "OCF_RESKEY_libvirt_uri": "test:///default",
        "OCF_RESKEY_state_dir": str(tmp_path / "state"),
    }


def agent(action: str, env: dict[str, str], **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, AGENT, action],
        env={**env, **extra},
        capture_output=True,
        text=True,
        timeout=30,
    )


def pid_of(env: dict[str, str]) -> int:
    path = os.path.join(env["HA_RSCTMP"], "nova-ha-nova-instance-ha:0.pid")
    with open(path) as pid_file:
        return int(pid_file.read().split()[0])


def test_start_monitor_stop_a_real_monitor(env):
    assert agent("monitor", env, OCF_RESKEY_CRM_meta_interval="0").returncode == 7  # probe
    began = time.monotonic()
    started = agent("start", env)
    assert started.returncode == 0, started.stderr
    assert time.monotonic() - began < 5.0  # Pacemaker's actions must be short
    pid = pid_of(env)
    os.kill(pid, 0)  # runs
    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
        assert b"s3cret" not in cmdline.read()  # parameters go on its stdin
    with open(f"/proc/{pid}/environ", "rb") as environ:
        assert b"s3cret" not in environ.read()
    assert agent("monitor", env, OCF_RESKEY_CRM_meta_interval="10000").returncode == 0
    assert agent("start", env).returncode == 0 and pid_of(env) == pid  # already running
    stopped = agent("stop", env)
    assert stopped.returncode == 0, stopped.stderr
    assert not os.path.exists(f"/proc/{pid}") or _zombie(pid)
    assert agent("monitor", env, OCF_RESKEY_CRM_meta_interval="10000").returncode == 7
    log = open(os.path.join(env["NOVA_HA_LOG_DIR"], "nova-instance-ha:0.log")).read()
    assert "instance monitor started" in log and "host compute1" in log
    assert "s3cret" not in log


def test_monitor_reports_a_killed_monitor(env):
    assert agent("start", env).returncode == 0
    pid = pid_of(env)
    os.kill(pid, signal.SIGKILL)
    _wait_gone(pid)
    result = agent("monitor", env, OCF_RESKEY_CRM_meta_interval="10000")
    assert result.returncode == 7
    assert "instance monitor is not running" in result.stderr
    assert agent("stop", env).returncode == 0


def test_start_refuses_bad_parameters(env):
    result = agent("start", env, OCF_RESKEY_evacuate="record")
    assert result.returncode == 6
    assert "parameter 'evacuate'" in result.stderr
    result = agent("start", env, OCF_RESKEY_heartbeat_threshold="0")
    assert result.returncode == 6 and "heartbeat_threshold" in result.stderr


def test_metadata_declares_the_tables_parameters(env):
    result = agent("meta-data", {"PATH": os.environ["PATH"]})
    assert result.returncode == 0
    root = ElementTree.fromstring(result.stdout)
    names = {p.get("name") for p in root.iter("parameter")}
    assert {"libvirt_uri", "heartbeat_interval", "max_restarts", "evacuate", "os_cloud"} <= names
    assert "max_parallel" not in names and "ip" not in names
    interval = next(p for p in root.iter("parameter") if p.get("name") == "heartbeat_interval")
    assert interval.find("content").get("default") == "10"


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _wait_gone(pid: int) -> None:
    end = time.monotonic() + 5
    while time.monotonic() < end and not _zombie(pid):
        time.sleep(0.05)
