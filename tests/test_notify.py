"""Notifications: syslog always, a webhook on 127.0.0.1 and a command, never blocking; and
what the users of a fenced host's servers see in Nova."""

from __future__ import annotations

import json
import os
import shlex
import sys
import time

import pytest

from nova_ha.lib import log, notify, params
from testbed.observe import Observer
from tests.helpers import run_fence


@pytest.fixture
def syslog_lines(monkeypatch):
    lines: list[tuple[str, str]] = []
    monkeypatch.setattr(notify, "_syslog", lambda priority, text: lines.append((priority, text)))
    return lines


def _events(lines) -> list[dict]:
    return [json.loads(text.split(" ", 1)[1]) for _, text in lines if text.startswith("event ")]


def _writer(path) -> str:
    """A command (no shell) that writes its stdin and its environment to files."""
    code = (
        "import os, sys, json; data = sys.stdin.buffer.read(); "
        f"open({str(path)!r} + '.env', 'w').write(json.dumps(dict(os.environ))); "
        f"open({str(path)!r}, 'wb').write(data)"
    )
    return shlex.join([sys.executable, "-c", code])


def _wait_file(path, timeout=20.0) -> bytes:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if os.path.exists(path) and os.path.getsize(path):
            time.sleep(0.05)
            return open(path, "rb").read()
        time.sleep(0.05)
    raise AssertionError(f"{path} never written")


def test_event_reaches_syslog_webhook_and_command(webhook, syslog_lines, tmp_path, monkeypatch):
    monkeypatch.setenv("OCF_RESKEY_os_password", "ocf-s3cret-pw")  # as an OCF agent has it
    out = tmp_path / "event.json"
    parsed = params.parse(
        {
            "notify_url": webhook.url,
            "notify_command": _writer(out),
            "os_password": "s3cret-pw",
            "notify_timeout": "3",
        },
        params.FENCE,
    )
    log.REDACTOR.add(*parsed.secrets())
    started = time.monotonic()
    event = notify.send(
        parsed.settings.notify,
        "fenced",
        "compute1",
        params.FENCE,
        host="compute1.example",
        detail="power off confirmed, forced down",
        mode="all",
    )
    assert time.monotonic() - started < 1.0  # handed to a detached child, not waited for
    assert event["event"] == "fenced" and event["node"] == "compute1"
    got = webhook.wait(1)[0]
    assert got == event
    assert got["host"] == "compute1.example" and got["source"] == params.FENCE
    assert got["mode"] == "all" and got["reporter"] == os.uname().nodename
    assert webhook.headers[0]["content-type"] == "application/json"
    assert webhook.headers[0]["x-nova-ha-event"] == "fenced"
    assert json.loads(_wait_file(out)) == event
    env = json.loads(open(f"{out}.env").read())
    assert env["NOVA_HA_EVENT"] == "fenced" and env["NOVA_HA_NODE"] == "compute1"
    assert not [k for k in env if k.startswith("OCF_RESKEY")]
    assert [e for e in _events(syslog_lines)] == [event]  # syslog always, synchronously
    everything = json.dumps(got) + open(f"{out}.env").read() + repr(syslog_lines)
    assert "s3cret-pw" not in everything and "ocf-s3cret-pw" not in everything


def test_syslog_only_without_url_or_command(syslog_lines):
    notifier = notify.Notifier.from_settings(
        params.parse({}, params.COMPUTE).settings.notify, params.COMPUTE
    )
    assert notifier.url is None and notifier.command is None
    notifier.send("rejoined", "compute2", detail="service up")
    ((priority, text),) = syslog_lines
    assert priority == "notice" and text.startswith('event {"detail":"service up"')
    notifier.send("evacuation_failed", "compute2")
    assert syslog_lines[-1][0] == "warning"


def test_webhook_is_retried_then_delivered(webhook):
    webhook.fail_first = 2
    body = json.dumps(notify.make_event("rejoined", "compute3")).encode()
    pauses = []
    outcome = notify.post(webhook.url, body, timeout=3, sleep=pauses.append)
    assert outcome == "delivered (HTTP 204, attempt 3)"
    assert webhook.attempts == 3 and pauses == list(notify.BACKOFF)
    assert webhook.received[0]["node"] == "compute3"


def test_webhook_gives_up_after_bounded_attempts(syslog_lines):
    # nothing listens on this port: every attempt fails at once
    results = notify.deliver(
        notify.make_event("fenced", "c1"),
        "http://user:pw-in-url@127.0.0.1:9/hook?token=abc",
        None,
        1.0,
    )
    assert results["webhook"].startswith("failed after 3 attempts")
    ((_, line),) = [x for x in syslog_lines if "notify:" in x[1]]
    assert "http://127.0.0.1:9/hook" in line and "pw-in-url" not in line and "abc" not in line


def test_a_hanging_receiver_never_blocks_and_the_child_ends(webhook, syslog_lines):
    webhook.hang = 60.0
    notifier = notify.Notifier(url=webhook.url, timeout=1.0, source=params.FENCE)
    started = time.monotonic()
    notifier.send("fenced", "compute1")
    assert time.monotonic() - started < 1.0
    child = notify._children[-1]
    budget = notify.total_budget(1.0)
    child.wait(timeout=budget + 5)  # bounded: 3 attempts of 1 s, pauses, then it is gone
    assert time.monotonic() - started < budget + 5
    assert webhook.attempts >= 1


def test_command_runs_without_shell_and_is_killed_after_the_timeout(tmp_path):
    marker = tmp_path / "no-shell"
    event = notify.make_event("fenced", "c1")
    # a shell would create the file; without one ';' and 'touch' are plain arguments
    outcome = notify.run_command(f"/bin/echo ; touch {marker}", b"{}", 5)
    assert outcome == "ran (exit 0)" and not marker.exists()
    started = time.monotonic()
    outcome = notify.run_command(
        shlex.join([sys.executable, "-c", "import time; time.sleep(30)"]), b"{}", 1.0
    )
    assert outcome == "killed after 1 s" and time.monotonic() - started < 5
    assert notify.run_command("/nonexistent/hook", b"{}", 1).startswith("cannot run it")
    failing = shlex.join([sys.executable, "-c", "import sys; sys.exit('bad event')"])
    assert notify.deliver(event, None, failing, 2)["command"] == "exited 1 bad event"


def test_secrets_are_redacted_from_events():
    log.REDACTOR.add("hunter2-secret")
    event = notify.make_event(
        "evacuation_failed",
        "c1",
        detail="Keystone said: password=abc rejected hunter2-secret",
        extra={"note": "hunter2-secret"},
    )
    text = json.dumps(event)
    assert "hunter2-secret" not in text and "abc" not in text
    with pytest.raises(ValueError):
        notify.make_event("not-an-event", "c1")


def test_summary_fields_list_failures_first():
    from nova_ha.lib.evacuation import Outcome, Summary
    from nova_ha.lib.server_lifecycle import ServerState

    outcomes = (
        Outcome("a", "vm-a", ServerState.RUNNING, host="c2"),
        Outcome("b", "vm-b", ServerState.FAILED, detail="no valid host"),
        Outcome("c", "vm-c", ServerState.SKIPPED, detail="task migrating"),
    )
    summary = Summary(host="c1", found=3, selected=3, outcomes=outcomes, finished_after=4.25)
    fields = notify.summary_fields(summary)
    assert (fields["found"], fields["evacuated"], fields["failed"], fields["skipped"]) == (
        3,
        1,
        1,
        1,
    )
    assert [s["id"] for s in fields["servers"]] == ["b", "c", "a"]
    event = notify.Notifier(source="x").send("evacuation_failed", "c1", summary=summary)
    assert event["failed"] == 1 and event["detail"].startswith("evacuation of c1:")
    assert event["seconds"] == 4.2 or event["seconds"] == 4.3


@pytest.mark.parametrize(
    "values,message",
    [
        ({"notify_url": "ftp://example.com/x"}, "parameter 'notify_url'"),
        ({"notify_url": "http://"}, "parameter 'notify_url'"),
        ({"notify_command": "/nonexistent/hook --x"}, "parameter 'notify_command'"),
        ({"notify_command": "'unclosed"}, "parameter 'notify_command'"),
        ({"notify_timeout": "soon"}, "parameter 'notify_timeout'"),
    ],
)
def test_notify_parameters_are_checked(values, message):
    parsed = params.parse(values, params.COMPUTE)
    problems = parsed.problems + params.check_notify(parsed)
    assert any(message in p for p in problems), problems


def test_notify_url_with_credentials_is_not_shown():
    parsed = params.parse({"notify_url": "gopher://u:very-secret@x/"}, params.FENCE)
    problems = params.check_notify(parsed)
    assert problems and "very-secret" not in problems[0]
    assert (
        params.check_notify(params.parse({"notify_url": "https://h:8443/p?t=1"}, params.FENCE))
        == []
    )


@pytest.mark.parametrize("bed_name", ["sim_bed", "box_bed"])
def test_users_see_host_status_down_once_forced_down(request, bed_name):
    """Nova reports host_status DOWN (microversion >= 2.16) for every server of a host as
    soon as its service is forced down: users learn their server's host failed."""
    bed = request.getfixturevalue(bed_name)
    ids = bed.cloud.create_servers("host1", 2)
    try:
        _host_status_down(bed, ids)
    finally:  # the real box is shared by the session: leave no server behind
        observer = Observer(bed.cloud)
        for server_id in ids:
            try:
                observer.nova.servers.delete(server_id)
            except Exception:  # best effort cleanup
                pass


def _host_status_down(bed, ids):
    before = Observer(bed.cloud, "2.16").nova.servers.get(ids[0])
    assert before.host_status == "UP"
    done = run_fence(bed.fence_params(evacuate="none"), env=bed.env())
    assert done.returncode == 0, done.stderr
    for version in ("2.16", "2.60"):
        nova = Observer(bed.cloud, version).nova
        for server_id in ids:
            server = nova.servers.get(server_id)
            assert server.host_status == "DOWN", (version, server_id, server.host_status)
            assert getattr(server, "OS-EXT-SRV-ATTR:host") == "host1"  # not moved: none
    # at 2.15 the field does not exist: users of older clients see nothing
    assert not hasattr(Observer(bed.cloud, "2.15").nova.servers.get(ids[0]), "host_status")
