"""Secrets stay out of children (issue 11, class 10): cibadmin, password scripts, debug
files; and the nova-ha config file is read line by line like the agents' input."""

from __future__ import annotations

import os
import stat

import pytest

from nova_ha import cli
from nova_ha.cli.context import read_config
from nova_ha.lib import log, params, state


def test_cibadmin_gets_no_secret(monkeypatch):
    monkeypatch.setenv("OCF_RESKEY_os_password", "s3cret")
    monkeypatch.setenv("OCF_RESKEY_password", "bmc-s3cret")
    monkeypatch.setenv("OS_PASSWORD", "s3cret")
    env = state.CibStateStore("/nonexistent/cib.xml")._env
    assert "s3cret" not in " ".join(env.values())
    assert env["CIB_file"] == "/nonexistent/cib.xml"


def test_password_script_gets_no_other_secret(tmp_path, monkeypatch):
    monkeypatch.setenv("OCF_RESKEY_os_password", "s3cret")
    script = tmp_path / "pw"
    script.write_text('#!/bin/sh\necho "bmc-${OCF_RESKEY_os_password:-none}"\n')
    script.chmod(stat.S_IRWXU)
    assert params.run_secret_script("password_script", str(script)) == "bmc-none"


def test_debug_file_is_private(tmp_path):
    path = tmp_path / "debug.log"
    old = os.umask(0)
    try:
        log.setup("test", verbose=True, debug_file=str(path))
    finally:
        os.umask(old)
        log.setup("test")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


@pytest.mark.parametrize("separator", ["\x1c", "\x85", "\u2028"])
def test_cli_config_lines_end_at_newlines_only(tmp_path, separator):
    path = tmp_path / "nova-ha.conf"
    path.write_text(f"os_cloud = a{separator}os_auth_url=http://evil\nevacuate = all\n")
    assert ("os_auth_url", "http://evil") not in read_config(str(path))


@pytest.mark.parametrize(
    "args",
    [
        ["evacuate", "host1", "--timeout", "1e10"],
        ["evacuate", "host1", "--timeout", "nan"],
        ["evacuate", "host1", "--timeout", "-1"],
        ["history", "-n", "99999999999"],
    ],
)
def test_cli_numbers_are_bounded(args, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(args)
    assert exited.value.code == 2
    assert "not between" in capsys.readouterr().err


def test_ocf_timeout_is_bounded():
    from nova_ha.lib.ocf_proto import OcfRequest

    def timeout(value: str) -> float:
        request = OcfRequest(
            "monitor", params.parse({}, params.EVACUATE), {"OCF_RESKEY_CRM_meta_timeout": value}
        )
        return request.timeout

    assert timeout("20000") == 20.0
    assert timeout("99999999999999") == 86400.0
    assert timeout("-5") == 1.0
