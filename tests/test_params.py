"""The parameter table as users meet it: stdin and CLI, aliases, validation, secrets."""

import pytest

from nova_ha.lib import fence_proto, fencer, params
from tests.helpers import COMPUTE_AGENT, run_fence, run_ocf

AUTH = {
    "os_auth_url": "http://127.0.0.1:9/identity/v3",
    "os_username": "admin",
    "os_password": "s3cr3t-os-pass",
    "os_project_name": "admin",
}
BMC = {"ip": "127.0.0.1", "ipport": "6230", "username": "root", "password": "bmc-pa55word"}


def _parse_stdin(pairs):
    raw, framework, warnings, _ = fence_proto.parse_input(
        fencer.SPEC, [], "".join(f"{k}={v}\n" for k, v in pairs).encode()
    )
    return params.parse(raw, params.FENCE), framework, warnings


def _parse_argv(argv):
    raw, framework, warnings, _ = fence_proto.parse_input(fencer.SPEC, argv, None)
    return params.parse(raw, params.FENCE), framework, warnings


def test_stdin_and_cli_give_the_same_parameters():
    pairs = [
        ("action", "off"),
        ("port", "compute1"),
        ("ip", "10.0.0.5"),
        ("ipport", "624"),
        ("username", "root"),
        ("password", "pw"),
        ("lanplus", "1"),
        ("privlvl", "operator"),
        ("power_timeout", "30"),
        ("evacuate", "tagged"),
        ("max_parallel", "8"),
        ("os_cloud", "overcloud"),
        ("os_insecure", "1"),
        ("target_hosts", "c5,c6"),
        ("power_on_after", "0"),
        ("host_map", "compute1:c1.example.com"),
    ]
    argv = [
        "-o",
        "off",
        "-n",
        "compute1",
        "-a",
        "10.0.0.5",
        "-u",
        "624",
        "-l",
        "root",
        "-p",
        "pw",
        "-P",
        "-L",
        "operator",
        "--power-timeout=30",
        "--evacuate=tagged",
        "--max-parallel",
        "8",
        "--os-cloud=overcloud",
        "--os-insecure",
        "--target-hosts=c5,c6",
        "--power-on-after=0",
        "--host-map=compute1:c1.example.com",
    ]
    from_stdin, fw_stdin, _ = _parse_stdin(pairs)
    from_argv, fw_argv, _ = _parse_argv(argv)
    assert from_stdin.values == from_argv.values
    assert fw_stdin["--action"] == fw_argv["--action"] == "off"
    assert from_stdin["max_parallel"] == 8 and from_stdin["power_timeout"] == 30.0
    assert from_stdin["lanplus"] is True and from_stdin["power_on_after"] is False
    assert not from_stdin.problems and not from_argv.problems


@pytest.mark.parametrize(
    "old,new,value",
    [
        ("ipaddr", "ip", "10.1.1.1"),
        ("login", "username", "root"),
        ("passwd", "password", "x"),
        ("passwd_script", "password_script", "/bin/true"),
        ("auth_url", "os_auth_url", "http://k"),
        ("tenant_name", "os_project_name", "p"),
        ("user_domain", "os_user_domain_name", "d"),
        ("project_domain", "os_project_domain_name", "d"),
        ("region_name", "os_region_name", "r"),
        ("endpoint_type", "os_interface", "internalURL"),
        ("insecure", "os_insecure", "1"),
        ("plug", "port", "compute2"),
        ("nodename", "port", "compute3"),
    ],
)
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
    done = run_fence(
        [("action", "validate-all"), ("port", "c1"), ("os_pasword", "leak-me-1"), *AUTH.items()]
    )
    assert done.returncode == 0, done.stderr
    assert "os_pasword" in done.stderr and "leak-me-1" not in done.stderr


@pytest.mark.parametrize(
    "bad,message",
    [
        ({"max_parallel": "many"}, "parameter 'max_parallel'"),
        ({"evacuate": "some"}, "parameter 'evacuate'"),
        ({"power_timeout": "soon"}, "parameter 'power_timeout'"),
        ({"os_auth_url": ""}, "parameter 'os_auth_url'"),
        ({"ip": "10.0.0.1"}, "parameter 'username'"),
        ({"host_map": "compute1"}, "parameter 'host_map'"),
        ({"port": "", "action": "off"}, "parameter 'port'"),
        ({"os_password_script": "/nonexistent/script"}, "parameter 'os_password_script'"),
        ({"max_parallel": "0"}, "parameter 'max_parallel'"),
    ],
)
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
    given = dict(
        AUTH,
        **BMC,
        port="compute1",
        action="validate-all",
        verbose="1",
        os_application_credential_secret="appcred-s3cret",
        max_parallel="x",
    )
    for done in (
        run_fence(given),
        run_fence(
            args=[
                "-o",
                "validate-all",
                "-v",
                "-n",
                "c1",
                "--os-password=s3cr3t-os-pass",
                "-p",
                "bmc-pa55word",
                "--max-parallel=x",
            ]
        ),
    ):
        assert done.returncode == 1
        for secret in secrets:
            assert secret not in done.stdout + done.stderr


def test_ocf_validate_all_exit_codes(tmp_path):
    ok = dict(
        AUTH, start_command="/bin/true", stop_command="/bin/true", status_command="/bin/false"
    )
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


# ---- typed settings ------------------------------------------------------------------------------

SETTINGS_GROUPS = (
    params.HostNaming,
    params.BmcSettings,
    params.OpenStackSettings,
    params.EvacuationSettings,
    params.NotifySettings,
    params.ComputeSettings,
    params.InstanceSettings,
    params.TlsSettings,
    params.ServiceRunner,
)
GROUP_OF = {
    params.HostNaming: "naming",
    params.BmcSettings: "bmc",
    params.OpenStackSettings: "openstack",
    params.EvacuationSettings: "evacuation",
    params.NotifySettings: "notify",
    params.ComputeSettings: "compute",
    params.InstanceSettings: "instance",
    params.TlsSettings: "openstack.tls",
    params.ServiceRunner: "compute.runner",
}


def _settings(agent: str = params.FENCE, **values: str) -> params.Settings:
    return params.parse(values, agent).settings


def _naming(host_map: str = "", domain: str = "") -> params.HostNaming:
    return _settings(params.CLI, host_map=host_map, domain=domain).naming


def test_host_map_and_domain():
    assert _naming("compute1:c1.cloud;compute2:c2.cloud").nova_host("compute1") == "c1.cloud"
    assert _naming("compute1:c1.cloud", "cloud").nova_host("compute3") == "compute3.cloud"
    assert _naming("", "cloud").nova_host("c4.cloud") == "c4.cloud"
    assert _naming("", ".cloud.").nova_host("c4") == "c4.cloud"
    assert _naming("compute1=c1.cloud").node_for("c1.cloud") == "compute1"
    assert _naming("", "cloud").node_for("compute3.cloud") == "compute3"
    assert _naming().nova_host("compute5") == "compute5" == _naming().node_for("compute5")


def test_host_naming_round_trip():
    naming = _naming("compute1:nova-a.dc compute2=nova-b.dc", "dc")
    for node in ("compute1", "compute2", "compute3", "compute4.dc"):
        host = naming.nova_host(node)
        assert host.endswith(".dc")
        assert naming.node_for(host) == node.removesuffix(".dc")
    assert naming.nova_host("compute3") == "compute3.dc"


def test_malformed_host_map_is_refused_where_names_are_mapped():
    settings = _settings(params.CLI, host_map="compute1", evacuate="tagged")
    assert settings.evacuation.mode == "tagged"  # other groups do not depend on it
    with pytest.raises(params.ParamError, match="parameter 'host_map': entry 'compute1'"):
        settings.naming.nova_host("compute1")


def _table_default(name: str):
    param = params.BY_NAME[name]
    return None if param.default is None else params.convert(param, param.default)


def test_every_settings_default_is_the_tables():
    """Nothing set, for no agent or for any agent: every field holds the table's default."""
    import dataclasses

    for agent in (None, params.FENCE, params.COMPUTE, params.EVACUATE, params.CLI):
        parsed = params.Parsed(values={}) if agent is None else params.parse({}, agent)
        for group in SETTINGS_GROUPS:
            built = parsed.settings
            for name in GROUP_OF[group].split("."):
                built = getattr(built, name)
            for item in dataclasses.fields(group):
                if "param" not in item.metadata:
                    continue  # not a parameter (OpenStackSettings.given, tls, runner)
                expected = _table_default(item.metadata["param"])
                convert = item.metadata["convert"]
                expected = convert(expected) if convert else expected
                assert getattr(built, item.name) == expected, (agent, item.name)


def test_settings_cover_the_whole_table():
    import dataclasses

    named = [
        f.metadata["param"]
        for g in SETTINGS_GROUPS
        for f in dataclasses.fields(g)
        if "param" in f.metadata
    ]
    assert len(named) == len(set(named))  # each parameter in one group only
    # port: Settings.target_node; config_file: merged into the values by parse().
    assert set(named) | {"port", "config_file"} == set(params.BY_NAME)


def test_settings_carry_the_given_values_typed():
    settings = _settings(
        power_timeout="30",
        ipport="624",
        evacuate="tagged",
        max_parallel="8",
        evacuate_timeout="90s",
        notify_timeout="2",
        os_insecure="yes",
        os_api_timeout="15",
        privlvl="OPERATOR",
    )
    assert (settings.bmc.power_timeout, settings.bmc.ipport, settings.bmc.privlvl) == (
        30.0,
        624,
        "operator",
    )
    evacuation = settings.evacuation
    assert (evacuation.mode, evacuation.max_parallel, evacuation.timeout) == ("tagged", 8, 90.0)
    assert settings.notify.timeout == 2.0
    assert settings.openstack.tls.insecure is True and settings.openstack.api_timeout == 15.0
    assert settings.openstack.given == {"os_insecure", "os_api_timeout"}  # not the defaults


def test_empty_or_zero_values_keep_the_defaults_they_had():
    settings = _settings(evacuable_tag="", notify_timeout="0", power_wait="0")
    assert settings.evacuation.tag == "evacuable"
    assert settings.notify.timeout == 5.0  # a zero timeout was never meant
    assert settings.bmc.power_wait == 0.0  # no wait is a wait of its own
    assert _settings(params.COMPUTE, start_wait="0").compute.start_wait == 10.0


@pytest.mark.parametrize(
    "text,hosts",
    [
        ("c5,c6", ("c5", "c6")),
        ("c5, c6", ("c5", "c6")),
        (" c5  c6\tc7 ,, c8 ", ("c5", "c6", "c7", "c8")),
        ("", ()),
    ],
)
def test_target_hosts_split_at_commas_and_spaces(text, hosts):
    assert _settings(params.EVACUATE, target_hosts=text).evacuation.target_hosts == hosts
    assert params.parse_host_list(text) == hosts


def test_evacuation_options_come_from_the_settings():
    from nova_ha.lib import recovery

    evacuation = _settings(params.CLI, target_hosts="c5 c6", max_parallel="4").evacuation
    policy = recovery.Options.from_settings(evacuation, "tagged").policy
    assert (policy.mode, policy.tag, policy.max_parallel, policy.retries) == (
        "tagged",
        "evacuable",
        4,
        2,
    )
    assert policy.target_hosts == ("c5", "c6")


def test_bmc_map_resolution_per_node():
    bmc = _settings(
        bmc_map="c1=10.0.0.1 c2=10.0.0.2:6230 c3=[fd00::3]",
        ipport="700",
        password_script="/bin/bmc-password",
    ).bmc
    assert bmc.configured
    assert bmc.endpoint("c1") == ("10.0.0.1", 700)  # ipport: the port of unported entries
    assert bmc.endpoint("c2") == ("10.0.0.2", 6230)
    assert bmc.endpoint("c3") == ("fd00::3", 700)
    with pytest.raises(params.ParamError, match="node 'c4' has no BMC"):
        bmc.endpoint("c4")
    assert bmc.password_command("c2") == "/bin/bmc-password c2"
    assert bmc.monitor_node("") == "c1" and bmc.monitor_node("c3") == "c3"
    single = _settings(ip="10.0.0.9", bmc_node="c1").bmc
    assert single.endpoint("c1") == ("10.0.0.9", 623) and single.monitor_node("") == ""
    with pytest.raises(params.ParamError, match="'bmc_node'"):
        single.endpoint("c2")
    assert not _settings().bmc.configured and _settings().bmc.endpoint("c1") is None


def test_a_malformed_bmc_map_is_refused_only_when_used():
    bmc = _settings(bmc_map="c1").bmc  # validation (check_bmc) reports it before any action
    assert bmc.configured
    with pytest.raises(params.ParamError, match="parameter 'bmc_map'"):
        bmc.endpoint("c1")


def test_settings_are_built_once_and_only_when_read():
    parsed = params.parse({"host_map": "broken"}, params.FENCE)
    settings = parsed.settings
    assert parsed.settings is settings
    assert settings.notify is settings.notify
    assert set(vars(settings)) == {"_parsed", "notify"}  # no other group was built
    assert _settings(port="compute1").target_node == "compute1"
    assert _settings().target_node == ""


def test_secrets_stay_out_of_the_settings_repr():
    settings = _settings(
        password="bmc-s3cret",
        os_password="os-s3cret",
        os_application_credential_secret="ac-s3cret",
        notify_url="https://hook:url-s3cret@example.com/",
    )
    shown = repr(settings.bmc) + repr(settings.openstack) + repr(settings.notify)
    assert "s3cret" not in shown
    assert settings.bmc.password == "bmc-s3cret"  # held, only not shown


def test_log_redaction_of_values_and_secret_assignments():
    import logging

    from nova_ha.lib import log

    redactor = log.Redactor()
    redactor.add("hunter2-secret")
    record = logging.LogRecord(
        "x",
        logging.ERROR,
        __file__,
        1,
        "login failed with %s; password=abc123 X-Auth-Token: tok-9",
        ("hunter2-secret",),
        None,
    )
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
