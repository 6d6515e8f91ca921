"""config_file (one file for the shared settings) and bmc_map / bmc_node (one device for many
nodes, and no device fencing a node whose BMC it does not have)."""

from __future__ import annotations

import os
import time

import pytest

from nova_ha.lib import fence_proto, fencer, params
from tests.helpers import COMPUTE_AGENT, run_fence, run_ocf

AUTH = {
    "os_auth_url": "http://127.0.0.1:9/identity/v3",
    "os_username": "admin",
    "os_project_name": "admin",
}


def _conf(tmp_path, text: str, mode: int = 0o600, name: str = "nova-ha.conf") -> str:
    path = tmp_path / name
    path.write_text(text)
    os.chmod(path, mode)
    return str(path)


def _parse(pairs, agent: str = params.FENCE) -> params.Parsed:
    return params.parse(pairs, agent)


def _only_problem(parsed: params.Parsed) -> str:
    assert len(parsed.problems) == 1, parsed.problems
    return parsed.problems[0]


# ---- config_file ----------------------------------------------------------------------------


def test_direct_values_override_the_file(tmp_path):
    path = _conf(
        tmp_path,
        "# shared\n\nos_cloud = overcloud\nmax_parallel=4\n"
        "os_project_name=from-file\nhost_map='c1:h1 c2:h2'\n",
    )
    parsed = _parse([("config_file", path), ("max_parallel", "9"), ("tenant_name", "direct")])
    assert not parsed.problems, parsed.problems
    assert parsed["max_parallel"] == 9  # given directly
    assert parsed["os_project_name"] == "direct"  # a direct alias beats the file's name
    assert parsed["os_cloud"] == "overcloud" and parsed["host_map"] == "c1:h1 c2:h2"
    assert {"os_cloud", "host_map", "max_parallel"} <= parsed.given
    assert parsed["evacuate"] == "all"  # defaults still apply to what neither gives


def test_stdin_of_the_fence_agent_beats_the_file(tmp_path):
    path = _conf(tmp_path, "max_parallel=4\nos_cloud=overcloud\n")
    raw, _, _, _ = fence_proto.parse_input(
        fencer.SPEC, [], f"action=off\nport=c1\nconfig_file={path}\nmax_parallel=7\n".encode()
    )
    parsed = params.parse(raw, params.FENCE)
    assert parsed["max_parallel"] == 7 and parsed["os_cloud"] == "overcloud"
    assert parsed["port"] == "c1"


def test_each_agent_takes_its_own_parameters_silently(tmp_path):
    path = _conf(
        tmp_path,
        "os_cloud=overcloud\nstart_command=/bin/true\nbmc_map=c1=10.0.0.1\n"
        "max_parallel=4\nwatch_interval=2\nusername=admin\n",
    )
    fence = _parse([("config_file", path)])
    compute = _parse([("config_file", path)], params.COMPUTE)
    evacuate = _parse([("config_file", path)], params.EVACUATE)
    for parsed in (fence, compute, evacuate):
        assert not parsed.problems and not parsed.warnings, (parsed.problems, parsed.warnings)
        assert parsed["os_cloud"] == "overcloud"
    assert fence["bmc_map"] == "c1=10.0.0.1" and "start_command" not in fence.values
    assert compute["start_command"] == "/bin/true" and "bmc_map" not in compute.values
    assert evacuate["watch_interval"] == 2.0 and "username" not in evacuate.values


def test_deprecated_name_in_the_file_warns_and_counts(tmp_path):
    path = _conf(tmp_path, "auth_url=http://k/v3\n")
    parsed = _parse([("config_file", path)])
    assert parsed["os_auth_url"] == "http://k/v3"
    assert any("deprecated" in w and "auth_url" in w and "line 1" in w for w in parsed.warnings)


def test_unknown_name_names_file_and_line(tmp_path):
    path = _conf(tmp_path, "os_cloud=overcloud\n# comment\nos_pasword=leak-me-2\n")
    problem = _only_problem(_parse([("config_file", path)]))
    assert "parameter 'config_file'" in problem and path in problem
    assert "line 3" in problem and "os_pasword" in problem and "leak-me-2" not in problem


@pytest.mark.parametrize(
    "line", ["port=compute2", "nodename=compute2", "action=off", "config_file=/etc/other.conf"]
)
def test_target_action_and_nesting_are_not_taken_from_the_file(tmp_path, line):
    path = _conf(tmp_path, f"os_cloud=overcloud\n{line}\n")
    parsed = _parse([("config_file", path), ("port", "compute1")])
    problem = _only_problem(parsed)
    assert "parameter 'config_file'" in problem and "line 2" in problem
    assert parsed["port"] == "compute1"


def test_lines_split_on_newline_only(tmp_path):
    # \u2028, \x0b and \x1c are line breaks for str.splitlines(), not for the file format.
    path = _conf(tmp_path, "evacuable_tag=a\u2028b\x0bc\x1cd\nbogus\n")
    parsed = _parse([("config_file", path)])
    assert parsed["evacuable_tag"] == "a\u2028b\x0bc\x1cd"
    problem = _only_problem(parsed)
    assert "line 2" in problem and "expected 'name=value'" in problem


def test_bad_value_in_the_file_is_named(tmp_path):
    path = _conf(tmp_path, "max_parallel=many\n")
    problem = _only_problem(_parse([("config_file", path)]))
    assert "line 1" in problem and "parameter 'max_parallel'" in problem


def test_oversize_file_refused(tmp_path):
    limit = params.CONFIG_FILE_MAX
    fits = _conf(tmp_path, "#" * (limit - 1) + "\n", name="fits.conf")
    assert not _parse([("config_file", fits)]).problems
    big = _conf(tmp_path, "#" * limit + "\n", name="big.conf")
    problem = _only_problem(_parse([("config_file", big)]))
    assert "parameter 'config_file'" in problem and "256 KiB" in problem


def test_fifo_does_not_hang(tmp_path):
    fifo = tmp_path / "fifo.conf"
    os.mkfifo(fifo)
    started = time.monotonic()
    problem = _only_problem(_parse([("config_file", str(fifo))]))
    assert time.monotonic() - started < 2
    assert "parameter 'config_file'" in problem and "not a regular file" in problem
    # Opened directly too (as if swapped in after the first look): O_NONBLOCK, no waiting.
    started = time.monotonic()
    done = run_fence(
        {"action": "validate-all", "port": "c1", "config_file": fifo, **AUTH}, timeout=30
    )
    assert time.monotonic() - started < 20
    assert done.returncode == fence_proto.EC_GENERIC_ERROR
    assert "not a regular file" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("kind", ["symlink", "directory", "missing", "relative", "nul", "device"])
def test_other_paths_refused(tmp_path, kind):
    target = _conf(tmp_path, "os_cloud=overcloud\n")
    path = str(tmp_path / "other")
    if kind == "symlink":
        os.symlink(target, path)
    elif kind == "directory":
        os.mkdir(path)
    elif kind == "relative":
        path = "nova-ha.conf"
    elif kind == "nul":
        path = "/etc/\x00nova-ha.conf"
    elif kind == "device":
        path = "/dev/zero"  # would never end without the bounds
    problem = _only_problem(_parse([("config_file", path)]))
    assert problem.startswith("parameter 'config_file'"), problem


def test_group_readable_file_with_a_secret_refused(tmp_path):
    path = _conf(tmp_path, "os_cloud=overcloud\npasswd=bmc-s3cret\n", mode=0o640)
    parsed = _parse([("config_file", path)], params.COMPUTE)  # another agent's secret too
    problem = _only_problem(parsed)
    assert "parameter 'config_file'" in problem and path in problem and "'password'" in problem
    assert "bmc-s3cret" not in problem
    assert "os_cloud" not in parsed.values  # nothing is taken from a refused file
    os.chmod(path, 0o600)
    parsed = _parse([("config_file", path)])
    assert not parsed.problems and parsed["password"] == "bmc-s3cret"
    assert "bmc-s3cret" in parsed.secrets()  # redacted from the logs like a direct secret


def test_readable_file_without_secret_is_fine_but_not_writable(tmp_path):
    path = _conf(tmp_path, "os_cloud=overcloud\n", mode=0o644)
    assert not _parse([("config_file", path)]).problems
    os.chmod(path, 0o664)  # it names commands run as root
    problem = _only_problem(_parse([("config_file", path)]))
    assert "writable" in problem


# ---- bmc_map, bmc_endpoint, bmc_node ------------------------------------------------------------


def test_parse_bmc_map():
    assert params.parse_bmc_map(
        "c1=10.0.0.1; c2=10.0.0.2:6230,c3=bmc3.example.com\n"
        "c4=[fd00::4]:624 c5=fd00::5 c6=[fd00::6]"
    ) == {
        "c1": ("10.0.0.1", None),
        "c2": ("10.0.0.2", 6230),
        "c3": ("bmc3.example.com", None),
        "c4": ("fd00::4", 624),
        "c5": ("fd00::5", None),
        "c6": ("fd00::6", None),
    }


@pytest.mark.parametrize(
    "text,message",
    [
        ("c1:10.0.0.1", "entry 'c1:10.0.0.1'"),
        ("c1=", "entry 'c1='"),
        ("c1=10.0.0.1:0", "port"),
        ("c1=10.0.0.1:http", "port"),
        ("c1=10.0.0.1:\u00b2", "port"),  # a digit for str.isdigit(), not for int()
        ("c1=10.0.0.1:65536", "port"),
        ("c1=[fd00::1", "entry"),
        ("c1=10.0.0.1 c1=10.0.0.2", "listed twice"),
        ("c1=10.0.0.1 c2=10.0.0.1", "same BMC"),
        (" ; ", "no 'node=address[:port]'"),
    ],
)
def test_bad_bmc_map_named(text, message):
    with pytest.raises(params.ParamError) as err:
        params.parse_bmc_map(text)
    assert str(err.value).startswith("parameter 'bmc_map'") and message in str(err.value)


def test_bmc_endpoint_from_the_map():
    parsed = _parse(
        {
            "bmc_map": "c1=10.0.0.1 c2=10.0.0.2:6230",
            "ipport": "6000",
            "username": "admin",
            "password_script": "/bin/echo",
        }
    )
    assert parsed.settings.bmc.configured and params.check_bmc(parsed) == []
    assert parsed.settings.bmc.endpoint("c1") == ("10.0.0.1", 6000)  # ipport: the default
    assert parsed.settings.bmc.endpoint("c2") == ("10.0.0.2", 6230)
    with pytest.raises(params.ParamError) as err:
        parsed.settings.bmc.endpoint("c3")
    assert "'port'" in str(err.value) and "'bmc_map'" in str(err.value)
    assert "c3" in str(err.value)


def test_bmc_endpoint_with_ip_and_without_bmc():
    assert _parse({"ip": "10.0.0.9"}).settings.bmc.endpoint("c1") == ("10.0.0.9", 623)
    assert _parse({"ip": "10.0.0.9"}).settings.bmc.endpoint("") == ("10.0.0.9", 623)
    assert _parse({}).settings.bmc.endpoint("c1") is None
    assert not _parse({}).settings.bmc.configured
    with pytest.raises(params.ParamError, match="mutually exclusive"):
        _parse({"ip": "10.0.0.9", "bmc_map": "c1=10.0.0.1"}).settings.bmc.endpoint("c1")


def test_bmc_node_mismatch_refused():
    parsed = _parse({"ip": "10.0.0.1", "bmc_node": "host1", "username": "admin", "password": "pw"})
    assert params.check_bmc(parsed) == []
    assert parsed.settings.bmc.endpoint("host1") == ("10.0.0.1", 623)
    with pytest.raises(params.ParamError) as err:
        parsed.settings.bmc.endpoint("host2")
    text = str(err.value)
    assert "host1" in text and "host2" in text and "'bmc_node'" in text and "'port'" in text


@pytest.mark.parametrize(
    "given,message",
    [
        ({"ip": "10.0.0.1", "bmc_map": "c1=10.0.0.2"}, "mutually exclusive"),
        ({"bmc_map": "c1=10.0.0.2 c2"}, "parameter 'bmc_map': entry 'c2'"),
        ({"bmc_map": "c1=10.0.0.2", "bmc_node": "c1"}, "parameter 'bmc_node'"),
        ({"bmc_map": "c1=10.0.0.2", "password": "pw"}, "parameter 'username'"),
        ({"bmc_map": "c1=10.0.0.2", "username": "admin"}, "'password_script'"),
        ({"username": "admin", "password": "pw"}, "'bmc_map'"),
    ],
)
def test_check_bmc_names_the_problem(given, message):
    base = {"username": "admin", "password": "pw"}
    base.update(given)
    if "password" not in given and "username" in given and "bmc_map" in given:
        base.pop("password")
    if "username" not in given and "password" in given and "bmc_map" in given:
        base.pop("username")
    problems = params.check_bmc(_parse(base))
    assert any(message in p for p in problems), problems


def test_password_script_gets_the_node_with_bmc_map():
    shared = _parse(
        {"bmc_map": "c1=10.0.0.1 c2=10.0.0.2", "password_script": "/etc/nova-ha/bmc-password"}
    )
    assert shared.settings.bmc.password_command("c2") == "/etc/nova-ha/bmc-password c2"
    assert shared.settings.bmc.password_command("a b") == "/etc/nova-ha/bmc-password 'a b'"
    single = _parse({"ip": "10.0.0.1", "password_script": "/etc/nova-ha/bmc-password c1"})
    assert single.settings.bmc.password_command("c1") == "/etc/nova-ha/bmc-password c1"
    assert _parse({"ip": "10.0.0.1"}).settings.bmc.password_command("c1") is None


# ---- the agents, run as Pacemaker runs them -----------------------------------------------------

NEW = ("config_file", "bmc_map", "bmc_node")


@pytest.mark.parametrize("how", ["stdin", "argv"])
def test_fence_metadata_lists_the_new_parameters(how):
    done = (
        run_fence({"action": "metadata"}) if how == "stdin" else run_fence(args=["-o", "metadata"])
    )
    assert done.returncode == 0, done.stderr
    for name in NEW:
        assert f'<parameter name="{name}"' in done.stdout, name


def test_ocf_metadata_lists_config_file():
    done = run_ocf(COMPUTE_AGENT, "meta-data")
    assert '<parameter name="config_file"' in done.stdout
    assert '<parameter name="bmc_map"' not in done.stdout


def test_fence_validate_all_with_config_file(tmp_path):
    good = _conf(
        tmp_path,
        "".join(f"{k}={v}\n" for k, v in AUTH.items())
        + "os_password=s3cr3t-in-file\nbmc_map=c1=127.0.0.1:6230 c2=127.0.0.1:6231\n"
        "username=admin\npassword_script=/bin/echo\nstart_command=/bin/true\n",
        name="good.conf",
    )
    done = run_fence({"action": "validate-all", "port": "c1", "config_file": good})
    assert done.returncode == fence_proto.EC_OK, done.stderr
    bad = _conf(
        tmp_path, "os_cloud=overcloud\nos_password=s3cr3t-in-file\nmax_paralel=4\n", name="bad.conf"
    )
    done = run_fence({"action": "validate-all", "port": "c1", "config_file": bad, "verbose": "1"})
    # fence_proto: every validation failure of validate-all exits EC_GENERIC_ERROR (1).
    assert done.returncode == fence_proto.EC_GENERIC_ERROR
    assert "parameter 'config_file'" in done.stderr and "line 3" in done.stderr
    assert "max_paralel" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert "s3cr3t-in-file" not in done.stderr + done.stdout
    done = run_fence(
        {
            "action": "validate-all",
            "port": "c1",
            "config_file": str(tmp_path / "absent.conf"),
            **AUTH,
        }
    )
    assert done.returncode == fence_proto.EC_GENERIC_ERROR
    assert "does not exist" in done.stderr and "Traceback" not in done.stderr


def test_ocf_validate_all_with_a_bad_config_file(tmp_path):
    bad = _conf(tmp_path, "os_cloud=overcloud\nos_password=x\n", mode=0o644)
    done = run_ocf(
        COMPUTE_AGENT,
        "validate-all",
        {
            "config_file": bad,
            "start_command": "/bin/true",
            "stop_command": "/bin/true",
            "status_command": "/bin/true",
        },
    )
    assert done.returncode == 6  # OCF_ERR_CONFIGURED
    assert "ocf-exit-reason:parameter 'config_file'" in done.stderr
    assert "Traceback" not in done.stderr


# ---- cluster/crm-config: the layouts of nova-ha.pcs ---------------------------------------------

CRM_CONFIG = os.path.join(os.path.dirname(COMPUTE_AGENT), "..", "..", "cluster", "crm-config")


def _pcs_script(*args: str) -> str:
    import subprocess

    done = subprocess.run(
        [
            "bash",
            os.path.join(CRM_CONFIG, "nova-ha.pcs"),
            "-e",
            os.path.join(CRM_CONFIG, "nova-ha.env.example"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _creates(output: str) -> dict[str, dict[str, str]]:
    """`-n` output -> {resource id: its name=value parameters} of each create command."""
    import shlex

    found = {}
    for line in output.splitlines():
        words = shlex.split(line)
        if "create" not in words:
            continue
        rid = words[words.index("create") + 1]
        args = words[words.index("create") + 3 :]
        args = args[: args.index("op")] if "op" in args else args
        found[rid] = dict(a.split("=", 1) for a in args if "=" in a)
    return found


def _settings(text: str) -> list[tuple[str, str]]:
    return [
        (line.split("=", 1)[0], line.split("=", 1)[1])
        for line in text.split("\n")
        if line.strip() and not line.startswith("#")
    ]


def test_conf_example_is_what_the_script_prints_and_parses(tmp_path):
    with open(os.path.join(CRM_CONFIG, "nova-ha.conf.example")) as example:
        text = example.read()
    assert _settings(text) == _settings(_pcs_script("-c"))
    path = _conf(tmp_path, text)
    for agent in (params.FENCE, params.COMPUTE, params.EVACUATE, params.CLI):
        parsed = _parse([("config_file", path)], agent)
        assert not parsed.problems and not parsed.warnings, (agent, parsed.problems)
        assert parsed["os_cloud"] == "nova-ha-testbed"


def test_per_node_devices_carry_their_node():
    devices = _creates(_pcs_script("-n", "fencing"))
    assert len(devices) == 3
    for rid, given in devices.items():
        assert given["bmc_node"] == given["pcmk_host_list"] == rid.removeprefix("fence-")
        parsed = _parse(given)
        assert parsed.settings.bmc.endpoint(given["bmc_node"]) == (
            given["ip"],
            int(given["ipport"]),
        )


def test_shared_layout_with_config_file():
    out = _pcs_script("-n", "NHA_DEVICE_LAYOUT=shared", "NHA_CONFIG_FILE=/etc/nova-ha/nova-ha.conf")
    creates = _creates(out)
    stonith = [rid for rid in creates if rid.startswith("fence-")]
    assert stonith == ["fence-nova"]
    device = creates["fence-nova"]
    assert device["pcmk_host_list"].split() == ["compute1", "compute2", "compute3"]
    parsed = _parse({k: v for k, v in device.items() if k != "config_file"})  # not installed
    # The bed's password script exists only while the bed runs: not checked here.
    assert not parsed.problems
    assert [p for p in params.check_bmc(parsed) if "'password_script'" not in p] == []
    from testbed import e2e

    bmcs = e2e.entries(e2e.read_env()["NHA_BMCS"])
    for node, bmc in bmcs.items():
        assert parsed.settings.bmc.endpoint(node) == e2e.address_port(bmc)
        assert parsed.settings.bmc.password_command(node).endswith(f"bmc-password {node}")
    for rid, given in creates.items():
        if rid.startswith("compute"):
            continue  # the remote connections
        assert given["config_file"] == "/etc/nova-ha/nova-ha.conf", rid
        assert not {"os_cloud", "host_map", "max_parallel"} & set(given), rid
