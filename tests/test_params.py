"""The parameter table as users meet it: stdin and CLI, aliases, validation, secrets."""

import pytest

from nova_ha.lib import fence_proto, fencer, params
from tests.helpers import COMPUTE_AGENT, run_fence, run_ocf

AUTH = {"os_auth_url": "http://127.0.0.1:9/identity/v3", "os_username": "admin",
        "os_password": "s3cr3t-os-pass", "os_project_name": "admin"}
BMC = {"ip": "127.0.0.1", "ipport": "6230", "username": "root", "password": "bmc-pa55word"}


def _parse_stdin(pairs):
    raw, framework, warnings, _ = fence_proto.parse_input(
        fencer.SPEC, [], "".join(f"{k}={v}\n" for k, v in pairs).encode())
    return params.parse(raw, params.FENCE), framework, warnings


def _parse_argv(argv):
    raw, framework, warnings, _ = fence_proto.parse_input(fencer.SPEC, argv, None)
    return params.parse(raw, params.FENCE), framework, warnings


def test_stdin_and_cli_give_the_same_parameters():
    pairs = [("action", "off"), ("port", "compute1"), ("ip", "10.0.0.5"), ("ipport", "624"),
             ("username", "root"), ("password", "pw"), ("lanplus", "1"), ("privlvl", "operator"),
             ("power_timeout", "30"), ("evacuate", "tagged"), ("max_parallel", "8"),
             ("os_cloud", "overcloud"), ("os_insecure", "1"), ("target_hosts", "c5,c6"),
             ("power_on_after", "0"), ("host_map", "compute1:c1.example.com")]
    argv = ["-o", "off", "-n", "compute1", "-a", "10.0.0.5", "-u", "624", "-l", "root",
            "-p", "pw", "-P", "-L", "operator", "--power-timeout=30", "--evacuate=tagged",
            "--max-parallel", "8", "--os-cloud=overcloud", "--os-insecure",
            "--target-hosts=c5,c6", "--power-on-after=0",
            "--host-map=compute1:c1.example.com"]
    from_stdin, fw_stdin, _ = _parse_stdin(pairs)
    from_argv, fw_argv, _ = _parse_argv(argv)
    assert from_stdin.values == from_argv.values
    assert fw_stdin["--action"] == fw_argv["--action"] == "off"
    assert from_stdin["max_parallel"] == 8 and from_stdin["power_timeout"] == 30.0
    assert from_stdin["lanplus"] is True and from_stdin["power_on_after"] is False
    assert not from_stdin.problems and not from_argv.problems


@pytest.mark.parametrize("old,new,value", [
    ("ipaddr", "ip", "10.1.1.1"), ("login", "username", "root"), ("passwd", "password", "x"),
    ("passwd_script", "password_script", "/bin/true"), ("auth_url", "os_auth_url", "http://k"),
    ("tenant_name", "os_project_name", "p"), ("user_domain", "os_user_domain_name", "d"),
    ("project_domain", "os_project_domain_name", "d"), ("region_name", "os_region_name", "r"),
    ("endpoint_type", "os_interface", "internalURL"), ("insecure", "os_insecure", "1"),
    ("plug", "port", "compute2"), ("nodename", "port", "compute3"),
])
def test_deprecated_names_are_accepted(old, new, value):
    parsed, _, warnings = _parse_stdin([(old, value)])
    assert new in parsed.given
    expected = params.convert(params.BY_NAME[new], value)
    assert parsed[new] == expected
    if new != "port":
        assert any("deprecated" in w and old in w for w in warnings)


def test_pacemaker_port_wins_over_nodename():
    parsed, _, _ = _parse_stdin([("nodename", "other"), ("port", "compute1")])
    assert parsed["port"] == "compute1"


def test_unknown_parameter_warns_with_name_only():
    done = run_fence([("action", "validate-all"), ("port", "c1"), ("os_pasword", "leak-me-1"),
                      *AUTH.items()])
    assert done.returncode == 0, done.stderr
    assert "os_pasword" in done.stderr and "leak-me-1" not in done.stderr


@pytest.mark.parametrize("bad,message", [
    ({"max_parallel": "many"}, "parameter 'max_parallel'"),
    ({"evacuate": "some"}, "parameter 'evacuate'"),
    ({"power_timeout": "soon"}, "parameter 'power_timeout'"),
    ({"os_auth_url": ""}, "parameter 'os_auth_url'"),
    ({"ip": "10.0.0.1"}, "parameter 'username'"),
    ({"host_map": "compute1"}, "parameter 'host_map'"),
    ({"port": "", "action": "off"}, "parameter 'port'"),
    ({"os_password_script": "/nonexistent/script"}, "parameter 'os_password_script'"),
    ({"max_parallel": "0"}, "parameter 'max_parallel'"),
])
def test_validate_all_names_the_wrong_parameter(bad, message):
    given = dict(AUTH, port="compute1", action="validate-all")
    given.update(bad)
    done = run_fence(given)
    assert done.returncode == 1
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_validate_all_without_bmc_says_topology():
    done = run_fence(dict(AUTH, port="compute1", action="validate-all"))
    assert done.returncode == 0, done.stderr
    full = dict(AUTH, **BMC, port="compute1", action="validate-all")
    assert run_fence(full).returncode == 0
    status = run_fence(dict(AUTH, port="compute1", action="status"))
    assert status.returncode == 1 and "fencing topology" in status.stderr


def test_secrets_never_shown_even_verbose():
    secrets = ["s3cr3t-os-pass", "bmc-pa55word", "appcred-s3cret"]
    given = dict(AUTH, **BMC, port="compute1", action="validate-all", verbose="1",
                 os_application_credential_secret="appcred-s3cret", max_parallel="x")
    for done in (run_fence(given), run_fence(args=["-o", "validate-all", "-v", "-n", "c1",
                                                  "--os-password=s3cr3t-os-pass",
                                                  "-p", "bmc-pa55word", "--max-parallel=x"])):
        assert done.returncode == 1
        for secret in secrets:
            assert secret not in done.stdout + done.stderr


def test_ocf_validate_all_exit_codes(tmp_path):
    ok = dict(AUTH, start_command="/bin/true", stop_command="/bin/true",
              status_command="/bin/false")
    assert run_ocf(COMPUTE_AGENT, "validate-all", ok).returncode == 0
    missing = dict(ok, start_command="/nonexistent/nova-compute")
    done = run_ocf(COMPUTE_AGENT, "validate-all", missing)
    assert done.returncode == 5
    assert "ocf-exit-reason:parameter 'start_command'" in done.stderr
    partial = dict(AUTH, start_command="/bin/true")
    done = run_ocf(COMPUTE_AGENT, "validate-all", partial)
    assert done.returncode == 6 and "stop_command" in done.stderr
    no_cloud = {k: v for k, v in ok.items() if not k.startswith("os_")}
    done = run_ocf(COMPUTE_AGENT, "validate-all", no_cloud)
    assert done.returncode == 6 and "os_auth_url" in done.stderr
    typo = dict(ok, check_nova_service="perhaps")
    done = run_ocf(COMPUTE_AGENT, "validate-all", typo)
    assert done.returncode == 6 and "parameter 'check_nova_service'" in done.stderr
    # A probe with a broken configuration answers 'not running', it does not escalate.
    assert run_ocf(COMPUTE_AGENT, "monitor", missing, meta={"interval": 0}).returncode == 7


def test_host_map_and_domain():
    assert params.nova_host_name("compute1", "compute1:c1.cloud;compute2:c2.cloud") == "c1.cloud"
    assert params.nova_host_name("compute3", "compute1:c1.cloud", "cloud") == "compute3.cloud"
    assert params.nova_host_name("c4.cloud", "", "cloud") == "c4.cloud"
    assert params.node_name_for_host("c1.cloud", "compute1=c1.cloud") == "compute1"
    assert params.node_name_for_host("compute3.cloud", "", "cloud") == "compute3"


def test_log_redaction_of_values_and_secret_assignments():
    import logging

    from nova_ha.lib import log

    redactor = log.Redactor()
    redactor.add("hunter2-secret")
    record = logging.LogRecord("x", logging.ERROR, __file__, 1,
                               "login failed with %s; password=abc123 X-Auth-Token: tok-9",
                               ("hunter2-secret",), None)
    try:
        raise RuntimeError("boom hunter2-secret")
    except RuntimeError:
        import sys
        record.exc_info = sys.exc_info()
    redactor.filter(record)
    text = record.getMessage()
    for secret in ("hunter2-secret", "abc123", "tok-9"):
        assert secret not in text
    assert "login failed" in text and "boom" in text
