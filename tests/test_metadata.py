"""The agents' metadata: valid against the schemas Debian ships, as Pacemaker asks for it."""

import os
import re
import subprocess
import sys

import pytest
from lxml import etree

from nova_ha.lib import params
from testbed.util import need
from tests.helpers import (
    COMPUTE_AGENT,
    EVACUATE_AGENT,
    INSTANCE_AGENT,
    PYTHON,
    run_fence,
    run_ocf,
)

FENCE_RNG = "/usr/share/cluster/relaxng/metadata.rng"
OCF_RNG = "/usr/share/resource-agents/metadata.rng"
OCF_DTD = "/usr/share/resource-agents/ra-api-1.dtd"
HEAVY = ("novaclient", "keystoneauth1", "pyghmi")


def _xml(text: str) -> etree._Element:
    parser = etree.XMLParser(no_network=True, load_dtd=False, resolve_entities=False)
    return etree.fromstring(text.encode(), parser)


def _schema(path: str):
    need(os.path.exists(path), path)
    return etree.RelaxNG(etree.parse(path)) if path.endswith(".rng") else etree.DTD(path)


@pytest.fixture(scope="module")
def fence_metadata() -> etree._Element:
    # Exactly as Pacemaker's fencer asks: unprivileged, only action=metadata on stdin.
    done = run_fence({"action": "metadata"}, user="hacluster")
    assert done.returncode == 0, done.stderr
    return _xml(done.stdout)


@pytest.fixture(scope="module", params=[COMPUTE_AGENT, EVACUATE_AGENT, INSTANCE_AGENT])
def ocf_metadata(request) -> etree._Element:
    done = run_ocf(request.param, "meta-data", user="hacluster")
    assert done.returncode == 0, done.stderr
    return _xml(done.stdout)


def test_fence_metadata_valid_against_fence_agents_schema(fence_metadata):
    schema = _schema(FENCE_RNG)
    assert schema.validate(fence_metadata), schema.error_log


def test_ocf_metadata_valid_against_rng_and_dtd(ocf_metadata):
    for path in (OCF_RNG, OCF_DTD):
        schema = _schema(path)
        assert schema.validate(ocf_metadata), (path, schema.error_log)


def test_ocf_actions_carry_units(ocf_metadata):
    actions = ocf_metadata.findall("actions/action")
    assert {a.get("name") for a in actions} >= {
        "start",
        "stop",
        "monitor",
        "meta-data",
        "validate-all",
    }
    for action in actions:
        assert re.fullmatch(r"\d+s", action.get("timeout")), action.attrib
        if action.get("interval") is not None:
            assert re.fullmatch(r"\d+s", action.get("interval")), action.attrib


def test_fence_metadata_lists_every_table_parameter_and_alias(fence_metadata):
    names = {p.get("name"): p for p in fence_metadata.findall("parameters/parameter")}
    for param in params.for_agent(params.FENCE):
        shown = param.cli or param.name
        assert shown in names, shown
        assert names[shown].get("deprecated") is None
    # fence_ipmilan's and fence_compute's names stay accepted, marked deprecated
    for alias in ("ipaddr", "login", "passwd", "passwd_script", "port", "auth_url"):
        assert names[alias].get("deprecated") == "1", alias
    assert names["os_auth_url"].get("obsoletes") == "auth_url"
    actions = {a.get("name") for a in fence_metadata.findall("actions/action")}
    assert actions == {
        "on",
        "off",
        "reboot",
        "status",
        "list",
        "list-status",
        "monitor",
        "metadata",
        "manpage",
        "validate-all",
    }
    evacuate = names["evacuate"].find("content")
    assert evacuate.get("type") == "select"
    assert [o.get("value") for o in evacuate.findall("option")] == [
        "all",
        "tagged",
        "none",
        "record",
    ]


def test_ocf_metadata_lists_the_agents_parameters(ocf_metadata):
    names = {p.get("name") for p in ocf_metadata.findall("parameters/parameter")}
    assert names == {p.name for p in params.for_agent(ocf_metadata.get("name"))}
    assert "password" not in names  # the BMC's parameters belong to the fence agent only
    assert "os_cloud" in names


def _modules_loaded(argv: list[str], stdin: str = "") -> str:
    done = subprocess.run(
        [PYTHON, "-X", "importtime"] + argv, input=stdin, text=True, capture_output=True, timeout=60
    )
    return done.stderr


@pytest.mark.parametrize(
    "argv,stdin",
    [
        (["agents/fence/fence_nova_evacuate"], "action=metadata\n"),
        (["agents/fence/fence_nova_evacuate", "--help"], ""),
        (
            ["agents/fence/fence_nova_evacuate"],
            "action=validate-all\nport=compute1\nos_auth_url=http://127.0.0.1:1/v3\n"
            "os_username=admin\nos_password=x\nos_project_name=admin\n",
        ),
        (["agents/ocf/NovaCompute", "meta-data"], ""),
        (["agents/ocf/NovaEvacuate", "meta-data"], ""),
        (["agents/ocf/NovaInstanceHA", "meta-data"], ""),
        (["agents/ocf/NovaInstanceHA", "validate-all"], ""),
    ],
)
def test_no_heavy_import_for_metadata_help_validate(argv, stdin):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    imported = _modules_loaded([os.path.join(root, argv[0])] + argv[1:], stdin)
    assert "nova_ha" in imported  # the measurement itself works
    for module in HEAVY:
        assert not re.search(rf"\|\s+{module}\b", imported), f"{module} imported for {argv}"


def test_man_pages_render_from_the_table():
    done = run_fence({"action": "manpage"})
    assert done.returncode == 0
    assert done.stdout.startswith(".TH FENCE_NOVA_EVACUATE 8")
    section = done.stdout.split(".SH PARAMETERS")[1]
    for option in ("os\\-cloud", "max\\-parallel", "\\-a, \\-\\-ip"):
        assert option in section, option
    ocf = subprocess.run(
        [sys.executable, COMPUTE_AGENT, "manpage"], capture_output=True, text=True, timeout=30
    )
    assert ocf.returncode == 0 and ".SH PARAMETERS" in ocf.stdout
    assert "start_command" in ocf.stdout.replace("\\", "")


def test_parameter_docs_are_in_sync_with_the_table():
    from nova_ha.lib import docs

    path = os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "parameters.md"
    )
    with open(path) as page:
        assert page.read().rstrip("\n") == docs.parameters_page().rstrip("\n"), (
            "run: nova-ha params --all > docs/parameters.md"
        )


def test_nova_ha_command_has_a_man_page():
    done = subprocess.run(
        [PYTHON, "-m", "nova_ha.cli", "manpage"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    page = done.stdout
    assert page.startswith(".TH NOVA-HA 8")
    for command in ("status", "history", "reset", "evacuate"):
        assert f".B {command}" in page
    assert ".B max_fenced_hosts" in page and ".B os_cloud" in page
