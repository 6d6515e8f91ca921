"""Hardening of what comes in and goes out (issue 11, classes 6, 8, 9 and 13).

6: numbers are bounded where they are parsed; 8: stdin and password scripts' output are split
into lines at "\\n" only, as fence-agents do; 9: strings from Nova (or the CIB) are data, never
lines, in logs and in every line-oriented output; 13: a reader that leaves early (`| head`)
costs the output only, never a traceback, the work or the exit code.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shlex
import subprocess
import threading
from types import SimpleNamespace

import pytest

from nova_ha.cli.output import ProgressBar, table
from nova_ha.cli.status import render_status
from nova_ha.lib import fence_proto, fencer, log, params, state
from nova_ha.lib.lifecycle import Event, HostState
from tests.helpers import (
    COMPUTE_AGENT,
    EVACUATE_AGENT,
    FENCE_AGENT,
    PYTHON,
    ROOT,
    cloud_params,
    run_fence,
    run_ocf,
)

AUTH = {
    "os_auth_url": "http://127.0.0.1:9/identity/v3",
    "os_username": "admin",
    "os_password": "s3cr3t-os-pass",
    "os_project_name": "admin",
}
NUMERIC = [p for p in params.PARAMETERS if p.type in ("integer", "second")]
# Every character at which str.splitlines() ends a line besides "\n" and "\r".
LINE_BREAKS = ["\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]


def _limit(param: params.Param) -> str:
    return str(int(param.maximum))


# ---- class 6: numbers are bounded where they are parsed ---------------------------------------


def test_every_number_of_the_table_has_a_maximum_that_is_shown():
    assert {p.name for p in NUMERIC} >= {
        "os_api_timeout",
        "power_timeout",
        "power_wait",
        "evacuate_timeout",
        "notify_timeout",
        "start_wait",
        "watch_interval",
        "fenced_window",
        "max_parallel",
        "evacuate_retries",
        "max_hosts",
        "ipport",
        "cipher",
    }
    for param in NUMERIC:
        assert param.maximum is not None, param.name
        # well below what the runtime can wait for or turn into a date
        assert param.maximum <= 86400 < threading.TIMEOUT_MAX, param.name
        if param.default is not None:
            params.convert(param, param.default)  # the default lies within the bounds
        # declared once, shown in metadata, --help, man pages and docs/parameters.md
        assert param.range_text() and f"({param.range_text()})" in param.short, param.name
    assert params.BY_NAME["ipport"].range_text() == "1-65535"
    assert params.BY_NAME["power_timeout"].range_text() == "at most 600 s"


@pytest.mark.parametrize("param", NUMERIC, ids=lambda p: p.name)
def test_a_number_above_the_maximum_is_refused_naming_the_parameter_and_limit(param):
    assert params.convert(param, _limit(param)) == param.maximum
    for raw in (str(int(param.maximum) + 1), "10000000000", "9" * 400, "9" * 5000):
        with pytest.raises(params.ParamError) as err:
            params.convert(param, raw)
        message = str(err.value)
        assert message.startswith(f"parameter '{param.name}': ")
        assert f"maximum of {_limit(param)}" in message
    if param.type == "second":  # the unit counts: 1000 ms more than the limit is too much
        with pytest.raises(params.ParamError, match="maximum"):
            params.convert(param, f"{int(param.maximum) * 1000 + 1000}ms")


@pytest.mark.parametrize(
    "name,below",
    [("ipport", "0"), ("max_parallel", "0"), ("max_hosts", "0"), ("evacuate_retries", "-1")],
)
def test_ports_and_counts_have_a_minimum(name, below):
    with pytest.raises(params.ParamError, match=f"^parameter '{name}': "):
        params.convert(params.BY_NAME[name], below)


@pytest.mark.parametrize("raw", ["1_000", "\u0663", "\uff15", "1e3", "0x10"])
def test_integers_are_plain_ascii_digits(raw):
    with pytest.raises(params.ParamError, match="not an integer"):
        params.convert(params.BY_NAME["max_parallel"], raw)


@pytest.mark.parametrize(
    "bad,name,limit",
    [
        ({"power_timeout": "10000000000"}, "power_timeout", "600"),
        ({"evacuate_timeout": "10000000000"}, "evacuate_timeout", "86400"),
        ({"notify_timeout": "9999999999.5"}, "notify_timeout", "300"),
        ({"os_api_timeout": "100000000000000000000"}, "os_api_timeout", "300"),
        ({"fenced_window": "10000000000"}, "fenced_window", "86400"),
        ({"max_parallel": "100000"}, "max_parallel", "256"),
        ({"ipport": "70000"}, "ipport", "65535"),
        ({"delay": "10000000000"}, "delay", "3600"),
        ({"delay": "\u00b2"}, "delay", "3600"),  # str.isdigit() says yes, int() says no
    ],
)
def test_fence_validate_all_refuses_numbers_that_would_crash_later(bad, name, limit):
    done = run_fence(dict(AUTH, port="compute1", action="validate-all", **bad))
    assert done.returncode == 1
    assert f"parameter '{name}'" in done.stderr and limit in done.stderr
    assert "Traceback" not in done.stderr and "s3cr3t-os-pass" not in done.stderr


def test_ocf_validate_all_refuses_numbers_that_would_crash_later():
    compute = dict(
        AUTH,
        start_command="/bin/true",
        stop_command="/bin/true",
        status_command="/bin/false",
        start_wait="10000000000",
    )
    done = run_ocf(COMPUTE_AGENT, "validate-all", compute)
    assert done.returncode == 6
    assert "parameter 'start_wait'" in done.stderr and "3600" in done.stderr
    evacuate = dict(AUTH, watch_interval="10000000000", max_hosts="0")
    done = run_ocf(EVACUATE_AGENT, "validate-all", evacuate)
    assert done.returncode == 6
    assert "parameter 'watch_interval'" in done.stderr and "300" in done.stderr
    assert "parameter 'max_hosts'" in done.stderr
    assert "Traceback" not in done.stderr


def test_config_file_numbers_are_bounded_too(tmp_path):
    path = tmp_path / "nova-ha.conf"
    path.write_text("os_cloud=overcloud\nfenced_window = 10000000000\n")
    path.chmod(0o600)
    parsed = params.parse([("config_file", str(path))], params.EVACUATE)
    assert any(
        "line 2" in p and "parameter 'fenced_window'" in p and "86400" in p for p in parsed.problems
    ), parsed.problems


# ---- class 8: lines end at "\n" only ------------------------------------------------------------


@pytest.mark.parametrize("brk", LINE_BREAKS, ids=lambda c: f"U+{ord(c):04X}")
def test_a_value_cannot_smuggle_parameters_in_at_another_line_break(brk):
    data = (
        f"action=validate-all\r\nport=compute1\nos_cloud=overcloud{brk}port=compute2{brk}"
        f"ip=10.6.6.6{brk}action=off\nusername=root\r\n"
    ).encode()
    raw, framework, _, _ = fence_proto.parse_input(fencer.SPEC, [], data)
    parsed = params.parse(raw, params.FENCE)
    assert parsed["port"] == "compute1"
    assert framework["--action"] == "validate-all"
    assert "ip" not in parsed.given
    assert parsed["os_cloud"] == f"overcloud{brk}port=compute2{brk}ip=10.6.6.6{brk}action=off"
    assert parsed["username"] == "root"  # "\r\n" line ends still work


def test_the_agent_reads_only_newline_separated_parameters():
    # The whole agent, as Pacemaker runs it: a smuggled 'action=off' would fence.
    done = run_fence(
        stdin=(
            "action=validate-all\nport=compute1\nos_auth_url=http://127.0.0.1:9/v3"
            "\u2028action=off\nos_username=admin\nos_password=x\n"
            "os_project_name=admin\n"
        ).encode()
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr


def test_a_password_script_is_read_up_to_the_first_newline(tmp_path):
    def first_line(output: bytes) -> str:
        script = tmp_path / "pw"
        script.write_bytes(output)
        return params.run_secret_script("password_script", f"cat {shlex.quote(str(script))}")

    assert first_line("pa\u2028ss\x85w\x1cord\r\nsecond\n".encode()) == "pa\u2028ss\x85w\x1cord"
    assert first_line(b"pw") == "pw"
    assert first_line(b" spaced pw \n") == " spaced pw "
    for nothing in (b"", b"\n", b"\r\n", b"\nsecond line\n"):
        with pytest.raises(params.SecretScriptError, match="printed nothing"):
            first_line(nothing)


# ---- class 9: Nova's strings are data, not lines ------------------------------------------------


@pytest.fixture
def captured_log():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logger = logging.getLogger("nova_ha.test_hardening_io")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    log._add(logger, handler)
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)


@pytest.mark.parametrize("brk", ["\n", "\r", *LINE_BREAKS], ids=lambda c: f"U+{ord(c):04X}")
def test_a_server_name_cannot_forge_a_log_line(captured_log, brk):
    logger, stream = captured_log
    logger.warning("evacuation of %s failed", f"vm-1{brk}ERROR: fence of compute2 failed")
    text = stream.getvalue()
    assert text.endswith("\n") and text.count("\n") == 1
    assert len(text.splitlines()) == 1, text
    assert text.startswith("WARNING: evacuation of vm-1\\")


def test_log_escaping_keeps_redaction_and_covers_tracebacks(captured_log):
    logger, stream = captured_log
    log.REDACTOR.add("hardening-s3cret\nline")
    logger.error("name %s, password=hunter2\nINFO: fake, %s", "\x1b[2Jvm", "hardening-s3cret\nline")
    try:
        raise ValueError("Nova said\nERROR: forged from an exception")
    except ValueError:
        logger.debug("details", exc_info=True)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert "hunter2" not in lines[0] and "hardening-s3cret" not in lines[0]
    assert "******" in lines[0] and "\x1b" not in lines[0] and "\\x1b[2Jvm" in lines[0]
    assert lines[1].startswith("DEBUG: details\\nTraceback") and "\\nERROR: forged" in lines[1]


def test_escape_is_idempotent_and_leaves_ordinary_text_alone():
    assert (
        log.escape("compute1.example.com: 3 servers, évacué ✓")
        == "compute1.example.com: 3 servers, évacué ✓"
    )
    once = log.escape("a\nb\u2028c\x00d\u202ee")
    assert once == "a\\nb\\u2028c\\x00d\\u202ee" and log.escape(once) == once
    assert (
        log.escape("evil\ncompute7,compute8 c9;c10\tx", field=True)
        == "evil\\ncompute7\\x2ccompute8\\x20c9\\x3bc10\\tx"
    )


def _pacemaker_host_list(output: str) -> set[str]:
    """The names Pacemaker's fencer takes from a list action's output: every token of every
    line, split at whitespace, ',' and ';', up to the first character outside its set."""
    names = set()
    for line in output.split("\n"):
        for token in re.split(r"[\s,;]+", line):
            match = re.match(r"[a-zA-Z0-9_.-]+", token)
            if match and match.group() not in ("on", "off"):
                names.add(match.group())
    return names


@pytest.mark.parametrize("action", ["list", "list-status"])
def test_fence_list_keeps_each_nova_host_on_its_own_line(action):
    from testbed.nova_sim import NovaSim

    hostile = ["evil\ncompute7", "x,compute8 compute9;c10", "y\u2028compute11", "z\rcompute12"]
    with NovaSim(hosts=["host1", *hostile]) as cloud:
        done = run_fence({"action": action, **cloud_params(cloud)})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split("\n")
    assert lines[-1] == "" and len(lines[:-1]) == 1 + len(hostile), done.stdout
    assert ("host1,host1,on" if action == "list-status" else "host1,host1") in lines
    fields = 3 if action == "list-status" else 2
    assert all(len(line.split(",")) == fields for line in lines[:-1]), done.stdout
    names = _pacemaker_host_list(done.stdout)
    assert not names & {"compute7", "compute8", "compute9", "c10", "compute11", "compute12"}
    assert "host1" in names


def test_the_nova_ha_command_shows_nova_strings_on_one_line():
    out = table(
        ["NODE", "DETAIL"],
        [["host1", "evacuated vm\nhost9  fenced"], ["host2\u2028host8", "x"]],
        False,
    )
    assert len(out.splitlines()) == 3, out
    stream = io.StringIO()
    bar = ProgressBar(2, stream=stream, tty=False)
    bar(
        "finished",
        SimpleNamespace(
            server_id="id-1", result="evacuated", detail="", name="vm\n  failed     other-vm (id-2)"
        ),
    )
    bar(
        "finished",
        SimpleNamespace(
            server_id="id-2", result="failed", name="vm2", detail="Nova said\r\nall fine"
        ),
    )
    assert len(stream.getvalue().splitlines()) == 2, stream.getvalue()
    text = render_status({"hosts": [], "problems": ["Nova: bad\nhost9  online"]}, False)
    assert text.splitlines() == ["no compute host found", "note: Nova: bad\\nhost9  online"]


# ---- class 13: a reader that leaves early ------------------------------------------------------


def _into_closed_pipe(
    argv: list[str], stdin: bytes | None = None, env: dict | None = None
) -> subprocess.CompletedProcess[str]:
    """Run with stdout a pipe whose reader is gone (`| head -0`): every write gets EPIPE."""
    reader, writer = os.pipe()
    os.close(reader)
    try:
        done = subprocess.run(
            argv,
            stdout=writer,
            stderr=subprocess.PIPE,
            input=stdin,
            env=dict(env or os.environ, PYTHONPATH=ROOT),
            timeout=120,
            cwd="/",
        )
    finally:
        os.close(writer)
    return subprocess.CompletedProcess(
        done.args, done.returncode, "", done.stderr.decode(errors="replace")
    )


def test_nova_ha_output_into_a_closed_pipe_is_quiet():
    done = _into_closed_pipe([PYTHON, "-m", "nova_ha.cli", "params", "--all"])
    assert done.returncode == 0 and done.stderr == ""


@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "unbuffered"])
def test_nova_ha_reset_into_a_closed_pipe_does_all_its_work(tmp_path, cib_file, webhook, buffered):
    store = state.CibStateStore(cib_file)
    store.mark("host1", HostState.FENCED, Event.FENCED, "power off", mode="all")
    config = tmp_path / "nova-ha.conf"
    config.write_text(f"notify_url = {webhook.url}\n")
    config.chmod(0o600)
    env = dict(os.environ, CIB_file=cib_file)
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"  # the first line already meets the closed pipe
    done = _into_closed_pipe(
        [PYTHON, "-m", "nova_ha.cli", "reset", "host1", "--no-cib", "--config", str(config)],
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr
    assert "Broken pipe" not in done.stderr
    assert store.get("host1").state == "ok"
    event = webhook.wait(1)[0]  # the work after the output went on: the event is sent
    assert event["event"] == "reset" and event["node"] == "host1"


@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "unbuffered"])
def test_fence_list_into_a_closed_pipe_keeps_its_result(buffered):
    from testbed.nova_sim import NovaSim

    env = dict(os.environ)
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    with NovaSim(hosts=["host1", "host2", "host3"]) as cloud:
        values = {"action": "list", **cloud_params(cloud)}
        stdin = "".join(f"{k}={v}\n" for k, v in values.items()).encode()
        done = _into_closed_pipe([PYTHON, FENCE_AGENT], stdin=stdin, env=env)
    assert done.returncode == fence_proto.EC_OK, done.stderr
    assert "Traceback" not in done.stderr and "Broken pipe" not in done.stderr
    assert "BrokenPipe" not in done.stderr


def test_pipe_safe_output_drops_what_cannot_be_written(capsys):
    class GoneReader(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    stream = log.PipeSafe(GoneReader())
    assert stream.write("one\n") == 4 and stream.reader_gone
    stream.write("two\n")
    stream.flush()
    with log.PipeSafeOutput():
        print("through the guard")
    assert capsys.readouterr().out == "through the guard\n"
