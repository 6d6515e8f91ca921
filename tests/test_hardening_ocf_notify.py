"""Issue 11, classes 1, 5, 7 (notify), 10 (service children) and 12.

1. NovaCompute's stop and probes tell the truth whatever else is wrong in the configuration.
5. A notify_url's user:password@ is HTTP Basic auth, never a host lookup, never logged; a URL
   without a port does not kill the notifier; one failing channel does not stop the others.
7. notify_command's output is read within a bound, its timeout still enforced.
10. start/stop/status commands get no secret in their environment.
12. A webhook redirect is a failure naming the (redacted) Location, not a body-less GET.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from nova_ha.lib import log, notify, ocf_proto, params, service
from tests.helpers import COMPUTE_AGENT, need_binary, run_ocf

OCF_DIR = "/usr/lib/ocf/resource.d/nova-ha"
SECRET = "os-pw-Zq81"  # the OpenStack password handed to the agent
URL_SECRET = "hook-pw-7Yx"  # a password inside notify_url

# A nova-compute stand-in: 'running' while its state file exists; every call records its
# environment (env-ACTION) and itself (calls).
STAND_IN = """#!/bin/sh
dir=$(dirname "$0")
env > "$dir/env-$1"
echo "$1" >> "$dir/calls"
case "$1" in
  start) : > "$dir/running" ;;
  stop) [ -e "$dir/stubborn" ] || rm -f "$dir/running" ;;
  status) test -e "$dir/running" ;;
  *) exit 2 ;;
esac
"""


class StandIn:
    def __init__(self, directory) -> None:
        self.dir = directory
        self.script = directory / "nova-compute-ctl"
        self.script.write_text(STAND_IN)
        self.script.chmod(0o755)

    def command(self, action: str) -> str:
        return f"{self.script} {action}"

    def params(self, **extra) -> dict:
        values = {
            "start_command": self.command("start"),
            "stop_command": self.command("stop"),
            "status_command": self.command("status"),
        }
        values.update(extra)
        return {k: v for k, v in values.items() if v is not None}

    def start(self) -> None:
        (self.dir / "running").write_text("")

    @property
    def running(self) -> bool:
        return (self.dir / "running").exists()

    def calls(self) -> list[str]:
        path = self.dir / "calls"
        return path.read_text().split() if path.exists() else []

    def env(self, action: str) -> dict[str, str]:
        lines = (self.dir / f"env-{action}").read_text().splitlines()
        return dict(line.split("=", 1) for line in lines if "=" in line)


@pytest.fixture
def stand_in(tmp_path) -> StandIn:
    return StandIn(tmp_path)


OPENSTACK = {
    "os_auth_url": "http://127.0.0.1:9/identity/v3",
    "os_username": "nova-ha",
    "os_password": SECRET,
    "os_project_name": "admin",
}

# Every kind of problem that has nothing to do with running, stopping or checking the service.
BAD = {
    "os_cacert rotated away": dict(OPENSTACK, os_cacert="/nonexistent/rotated-ca.pem"),
    "unusable notify_url": dict(OPENSTACK, notify_url=f"ftp://nova:{URL_SECRET}@hooks.example/x"),
    "no OpenStack auth": {"os_password": SECRET},
    "unparsable start_wait": dict(OPENSTACK, start_wait="soon"),
    "start_command not installed": dict(OPENSTACK, start_command="/nonexistent/start-it"),
}


def _ocf(action: str, values: dict, interval_ms: int | None = None, timeout_ms: int = 20000):
    meta = {"timeout": timeout_ms}
    if interval_ms is not None:
        meta["interval"] = interval_ms
    return run_ocf(COMPUTE_AGENT, action, values, meta=meta, timeout=60)


def _crm_resource(values: dict, op: str) -> subprocess.CompletedProcess[str]:
    """crm_resource --force-check / --force-stop: Pacemaker's executor runs the agent."""
    crm_resource = need_binary("crm_resource")
    need_binary(os.path.join(OCF_DIR, "NovaCompute"))
    args = [crm_resource, "--class", "ocf", "--provider", "nova-ha", "--agent", "NovaCompute"]
    for key, value in values.items():
        args += ["--option", f"{key}={value}"]
    return subprocess.run(args + [op], capture_output=True, text=True, timeout=120)


# ---- class 1: stop and probes do not lie ------------------------------------------------------


@pytest.mark.parametrize("kind", list(BAD))
def test_validation_still_refuses_start(stand_in, kind):
    """The problem is real: validate-all and start name it (only stop/monitor go on)."""
    values = stand_in.params(**BAD[kind])
    done = _ocf("validate-all", values)
    assert done.returncode in (ocf_proto.OCF_ERR_CONFIGURED, ocf_proto.OCF_ERR_INSTALLED)
    assert "ocf-exit-reason:parameter '" in done.stderr
    assert _ocf("start", values).returncode == done.returncode
    assert not stand_in.running and "start" not in stand_in.calls()


@pytest.mark.parametrize("kind", list(BAD))
def test_crm_resource_check_and_stop_tell_the_truth(stand_in, kind):
    values = stand_in.params(**BAD[kind])
    stand_in.start()
    checked = _crm_resource(values, "--force-check")  # a probe: monitor, interval 0
    assert checked.returncode == ocf_proto.OCF_SUCCESS, checked.stdout + checked.stderr
    stopped = _crm_resource(values, "--force-stop")
    assert stopped.returncode == ocf_proto.OCF_SUCCESS, stopped.stdout + stopped.stderr
    assert "stop" in stand_in.calls() and not stand_in.running  # really stopped
    assert _crm_resource(values, "--force-check").returncode == ocf_proto.OCF_NOT_RUNNING
    for done in (checked, stopped):
        out = done.stdout + done.stderr
        assert SECRET not in out and URL_SECRET not in out and "Traceback" not in out
        assert "crm_feature_set" not in out  # the executor's, not an unknown parameter


@pytest.mark.parametrize("kind", list(BAD))
def test_probe_monitor_and_stop_as_the_executor_runs_them(stand_in, kind):
    values = stand_in.params(**BAD[kind])
    stand_in.start()
    probe = _ocf("monitor", values, interval_ms=0)
    assert probe.returncode == ocf_proto.OCF_SUCCESS, probe.stderr
    assert "WARNING: parameter '" in probe.stderr  # the problem is still reported
    recurring = _ocf("monitor", values, interval_ms=10000)
    assert recurring.returncode == ocf_proto.OCF_SUCCESS, recurring.stderr
    stopped = _ocf("stop", values)
    assert stopped.returncode == ocf_proto.OCF_SUCCESS, stopped.stderr
    assert stand_in.calls().count("stop") == 1 and not stand_in.running
    assert _ocf("monitor", values, interval_ms=0).returncode == ocf_proto.OCF_NOT_RUNNING
    assert _ocf("stop", values).returncode == ocf_proto.OCF_SUCCESS  # idempotent
    assert stand_in.calls().count("stop") == 1  # not running: nothing to stop
    for done in (probe, recurring, stopped):
        assert SECRET not in done.stderr and URL_SECRET not in done.stderr
        assert "Traceback" not in done.stderr


def test_stop_that_does_not_stop_fails_whatever_else_is_wrong(stand_in):
    values = stand_in.params(**BAD["os_cacert rotated away"])
    stand_in.start()
    (stand_in.dir / "stubborn").write_text("")
    stopped = _ocf("stop", values, timeout_ms=3000)
    assert stopped.returncode == ocf_proto.OCF_ERR_GENERIC, stopped.stderr
    assert "ocf-exit-reason:nova-compute did not stop" in stopped.stderr
    assert stand_in.running


def test_disable_on_stop_without_usable_openstack_still_stops(stand_in):
    values = stand_in.params(**BAD["no OpenStack auth"], disable_on_stop="true")
    stand_in.start()
    stopped = _ocf("stop", values)
    assert stopped.returncode == ocf_proto.OCF_SUCCESS, stopped.stderr
    assert not stand_in.running and "not disabling" in stopped.stderr


@pytest.mark.parametrize("missing", ["/nonexistent/stop-it", ""])
def test_unusable_stop_command_answers_stopped_only_when_nothing_runs(stand_in, missing):
    values = stand_in.params(**OPENSTACK, stop_command=missing or None)
    stopped = _ocf("stop", values)  # not running: the truth, stop_command not needed
    assert stopped.returncode == ocf_proto.OCF_SUCCESS, stopped.stderr
    stand_in.start()
    stopped = _ocf("stop", values)
    assert stopped.returncode in (ocf_proto.OCF_ERR_INSTALLED, ocf_proto.OCF_ERR_CONFIGURED)
    assert (
        "ocf-exit-reason:nova-compute runs and cannot be stopped: parameter "
        "'stop_command'" in stopped.stderr
    )
    assert stand_in.running
    assert _ocf("monitor", values, interval_ms=0).returncode == ocf_proto.OCF_SUCCESS


def test_unusable_status_command_never_claims_not_running(stand_in):
    values = stand_in.params(**OPENSTACK, status_command="/nonexistent/status-of-it")
    stand_in.start()
    probe = _ocf("monitor", values, interval_ms=0)
    assert probe.returncode == ocf_proto.OCF_ERR_INSTALLED
    assert (
        "ocf-exit-reason:cannot tell whether nova-compute runs: parameter "
        "'status_command'" in probe.stderr
    )
    stopped = _ocf("stop", values)
    assert stopped.returncode == ocf_proto.OCF_ERR_INSTALLED
    assert "'status_command'" in stopped.stderr


def test_an_agent_without_unchecked_actions_does_not_guess(monkeypatch):
    """ocf_proto itself: a stop or probe that cannot run its handler reports the problem."""
    monkeypatch.setattr(log, "setup", lambda *args, **kwargs: None)  # pytest's logging stays
    calls = []
    spec = ocf_proto.OcfAgentSpec(
        params.COMPUTE,
        "0",
        "s",
        "l",
        [],
        {"stop": lambda r: calls.append(r) or 0, "monitor": lambda r: calls.append(r) or 0},
        validate=lambda request: [(ocf_proto.OCF_ERR_CONFIGURED, "parameter 'x': bad")],
    )
    env = {"OCF_RESKEY_CRM_meta_interval": "0"}
    assert ocf_proto.dispatch(spec, ["stop"], env) == ocf_proto.OCF_ERR_CONFIGURED
    assert ocf_proto.dispatch(spec, ["monitor"], env) == ocf_proto.OCF_ERR_CONFIGURED
    assert not calls
    spec.unchecked = frozenset({"stop", "monitor"})
    assert ocf_proto.dispatch(spec, ["stop"], env) == 0
    assert ocf_proto.dispatch(spec, ["monitor"], env) == 0
    assert len(calls) == 2


# ---- class 10: no secret in the service's children ---------------------------------------------

SECRET_ENV = {
    "OCF_RESKEY_os_password": SECRET,
    "OCF_RESKEY_password": "bmc-pw-1",
    "OCF_RESKEY_passwd": "bmc-pw-2",
    "OCF_RESKEY_os_application_credential_secret": "ac-3",
    "OCF_RESKEY_notify_url": f"https://nova:{URL_SECRET}@hooks.example/x",
    "OS_PASSWORD": "os-env-4",
    "OS_TOKEN": "tok-5",
    "OS_AUTH_TOKEN": "tok-6",
    "OS_APPLICATION_CREDENTIAL_SECRET": "ac-7",
}


def test_every_secret_parameter_is_stripped():
    env = {f"OCF_RESKEY_{name}": f"v-{name}" for name in params.secret_names()}
    env.update(
        SECRET_ENV,
        PATH="/usr/bin",
        OCF_RESKEY_os_username="nova-ha",
        NOVA_HA_TOKEN_DIR="/run/x",
        OCF_RESKEY_CRM_meta_timeout="20000",
    )
    clean = service.clean_env(env)
    assert clean == {
        "PATH": "/usr/bin",
        "OCF_RESKEY_os_username": "nova-ha",
        "NOVA_HA_TOKEN_DIR": "/run/x",
        "OCF_RESKEY_CRM_meta_timeout": "20000",
    }
    # the notification child: the same helper, restricted to its few variables
    monkey = dict(env, HOME="/root")
    assert service.clean_env(monkey, keep=notify._ENV_KEEP) == {"PATH": "/usr/bin", "HOME": "/root"}


def test_start_status_stop_commands_get_no_secret(stand_in, monkeypatch):
    for key, value in SECRET_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("OCF_RESKEY_os_username", "nova-ha")
    svc = service.make(
        stand_in.command("start"), stand_in.command("stop"), stand_in.command("status"), None
    )
    svc.start(10)
    svc.stop(10)
    assert stand_in.calls()[:1] == ["start"] and "stop" in stand_in.calls()
    for action in ("start", "status", "stop"):
        env = stand_in.env(action)
        assert env.get("OCF_RESKEY_os_username") == "nova-ha"  # not a secret: kept
        leaked = [k for k in env if k in SECRET_ENV]
        assert not leaked, (action, leaked)
        assert not [v for v in SECRET_ENV.values() if v in json.dumps(env)]


def test_agent_hands_no_secret_to_its_commands(stand_in):
    values = stand_in.params(
        **OPENSTACK, password="bmc-pw", notify_url=(f"https://nova:{URL_SECRET}@hooks.example/x")
    )
    stand_in.start()
    assert _ocf("monitor", values, interval_ms=0).returncode == ocf_proto.OCF_SUCCESS
    assert _ocf("stop", values).returncode == ocf_proto.OCF_SUCCESS
    for action in ("status", "stop"):
        env = stand_in.env(action)
        assert "OCF_RESKEY_os_password" not in env and "OCF_RESKEY_notify_url" not in env
        assert env["OCF_RESKEY_os_username"] == "nova-ha"
        assert SECRET not in json.dumps(env) and URL_SECRET not in json.dumps(env)


# ---- class 5: a notify_url carries no secret into lookups or logs; channels independent --------


@pytest.fixture
def syslog_lines(monkeypatch):
    lines: list[tuple[str, str]] = []
    monkeypatch.setattr(notify, "_syslog", lambda priority, text: lines.append((priority, text)))
    return lines


@pytest.fixture
def lookups(monkeypatch):
    """Every host name this process resolves."""
    seen: list[str] = []
    real = socket.getaddrinfo

    def recording(host, *args, **kwargs):
        seen.append(str(host))
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", recording)
    return seen


def _with_userinfo(url: str, userinfo: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{userinfo}@{rest}"


def test_userinfo_goes_as_basic_auth_never_to_the_resolver(webhook, lookups, syslog_lines):
    url = _with_userinfo(webhook.url, f"alice:{URL_SECRET}%3Ax")
    event = notify.make_event("fenced", "c1")
    results = notify.deliver(event, url, None, 3.0)
    assert results["webhook"].startswith("delivered"), results
    assert webhook.received == [event]
    expected = base64.b64encode(f"alice:{URL_SECRET}:x".encode()).decode()
    assert webhook.headers[0]["authorization"] == f"Basic {expected}"
    assert lookups and all(URL_SECRET not in host and "@" not in host for host in lookups)
    assert not syslog_lines


def test_userinfo_url_failing_is_logged_without_the_password(lookups, syslog_lines):
    url = f"http://alice:{URL_SECRET}@127.0.0.1:9/hook"  # nothing listens there
    results = notify.deliver(notify.make_event("fenced", "c1"), url, None, 0.5)
    assert results["webhook"].startswith("failed after")
    assert all(URL_SECRET not in host for host in lookups)
    ((_, line),) = syslog_lines
    assert "http://127.0.0.1:9/hook" in line and URL_SECRET not in line
    assert "alice" not in line


def test_url_without_port_does_not_kill_the_notifier(tmp_path):
    """InvalidURL ('nonnumeric port') killed the detached child: the command hook was lost."""
    out = tmp_path / "event.json"
    code = f"import sys; open({str(out)!r}, 'wb').write(sys.stdin.buffer.read())"
    notifier = notify.Notifier(
        url=f"http://alice:{URL_SECRET}@127.0.0.1/hook",
        command=shlex.join([sys.executable, "-c", code]),
        timeout=1.0,
    )
    event = notifier.send("fenced", "c1")
    end = time.monotonic() + notify.total_budget(1.0) + 5
    while not (out.exists() and out.stat().st_size) and time.monotonic() < end:
        time.sleep(0.1)
    assert out.exists() and json.loads(out.read_bytes()) == event
    assert log.REDACTOR.redact(f"x {URL_SECRET} y") == "x ****** y"


@pytest.mark.parametrize(
    "url",
    [
        f"http://alice:{URL_SECRET}@127.0.0.1/hook",  # no port
        "http://127.0.0.1:notaport/hook",  # InvalidURL
        "http://[::1/hook",  # unparsable
    ],
)
def test_post_never_raises(url):
    outcome = notify.post(url, b"{}", 0.5, attempts=2, sleep=lambda s: None)
    assert not outcome.startswith("delivered") and URL_SECRET not in outcome


def test_a_failing_channel_never_stops_the_others(webhook, syslog_lines, tmp_path, monkeypatch):
    out = tmp_path / "event.json"
    code = f"import sys; open({str(out)!r}, 'wb').write(sys.stdin.buffer.read())"
    command = shlex.join([sys.executable, "-c", code])
    event = notify.make_event("fenced", "c1")

    def broken_post(*args, **kwargs):
        raise RuntimeError("webhook bug")

    monkeypatch.setattr(notify, "post", broken_post)
    results = notify.deliver(event, webhook.url, command, 3.0)
    assert results["webhook"].startswith("failed") and results["command"] == "ran (exit 0)"
    assert json.loads(out.read_bytes()) == event
    assert any("webhook" in line for _, line in syslog_lines)
    monkeypatch.undo()

    def broken_command(*args, **kwargs):
        raise RuntimeError("command bug")

    monkeypatch.setattr(notify, "run_command", broken_command)
    monkeypatch.setattr(notify, "_syslog", lambda p, t: syslog_lines.append((p, t)))
    results = notify.deliver(event, webhook.url, command, 3.0)
    assert results["webhook"].startswith("delivered") and results["command"].startswith("fail")
    assert webhook.received == [event]
    assert any("command" in line for _, line in syslog_lines)


# ---- class 12: redirects are failures, never a body-less GET -------------------------------------


class Redirecting:
    """Answers every request to /hook with `status` and a Location to /elsewhere (with a
    query, and userinfo when asked, that must not be shown), anything else with 200;
    records every request."""

    def __init__(self, status: int, userinfo: str = "") -> None:
        self.requests: list[tuple[str, str, int]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _answer(self):
                length = int(self.headers.get("Content-Length", 0) or 0)
                hook.requests.append((self.command, self.path, len(self.rfile.read(length))))
                if self.path.startswith("/hook"):
                    self.send_response(status)
                    port = self.server.server_address[1]
                    self.send_header(
                        "Location", f"http://{userinfo}127.0.0.1:{port}/elsewhere?token=loc-tok-9"
                    )
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:
                    self.send_response(200)
                    self.send_header("Content-Length", "0")
                    self.end_headers()

            do_POST = do_GET = _answer  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Redirecting:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize(
    "status,userinfo",
    [(301, ""), (302, ""), (303, ""), (307, ""), (308, ""), (302, "bob:loc-pw-9@")],
)
def test_webhook_redirect_is_a_failure_naming_the_location(status, userinfo, syslog_lines):
    with Redirecting(status, userinfo) as target:
        results = notify.deliver(notify.make_event("fenced", "c1"), target.url, None, 2.0)
    outcome = results["webhook"]
    assert outcome.startswith("refused") and f"HTTP {status}" in outcome, outcome
    assert f"http://127.0.0.1:{target.port}/elsewhere" in outcome
    assert "loc-pw-9" not in outcome and "loc-tok-9" not in outcome and "bob" not in outcome
    assert [r[0] for r in target.requests] == ["POST"]  # not followed, no GET, no retry
    ((_, line),) = syslog_lines
    assert "elsewhere" in line and "loc-pw-9" not in line


# ---- class 7: bounded command output, the timeout still enforced ---------------------------------


def test_flooding_command_is_read_within_a_bound():
    flood = shlex.join(
        [
            sys.executable,
            "-c",
            "import sys; chunk = b'x' * 65536\n"
            "for _ in range(320): sys.stderr.buffer.write(chunk)\n"
            "sys.stderr.buffer.write(b'\\nlast words'); sys.exit(3)",
        ]
    )
    tracemalloc.start()
    try:
        outcome = notify.run_command(flood, b"{}", 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert outcome.startswith("exited 3") and len(outcome) < 250
    assert peak < 4 * 1024 * 1024, peak  # 20 MiB written to stderr
    done = service.run_capped(shlex.split(flood), 20, keep_stdout=False)
    assert done.returncode == 3 and len(done.stderr) == service.OUTPUT_LIMIT
    assert done.discarded >= 20 * 1024 * 1024 - service.OUTPUT_LIMIT


def test_endless_output_is_still_killed_at_the_timeout():
    endless = shlex.join(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "while True:\n"
            "    sys.stderr.buffer.write(b'y' * 4096); sys.stderr.flush()\n"
            "    time.sleep(0.001)",
        ]
    )
    started = time.monotonic()
    assert notify.run_command(endless, b"{}", 1.0) == "killed after 1 s"
    assert time.monotonic() - started < 4


def test_command_that_does_not_read_its_stdin_is_not_a_hang():
    big = b"{" + b" " * (1024 * 1024) + b"}"  # far more than a pipe holds
    ignoring = shlex.join([sys.executable, "-c", "import time; time.sleep(0.2)"])
    started = time.monotonic()
    assert notify.run_command(ignoring, big, 5) == "ran (exit 0)"
    assert time.monotonic() - started < 4
