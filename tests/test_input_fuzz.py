"""No input, however malformed, ends in a Python traceback (property tests)."""

import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nova_ha.lib import fence_proto, fencer, ocf_proto, params
from tests.helpers import run_fence

NAMES = (
    [p.name for p in params.PARAMETERS]
    + list(params.ALIASES)
    + ["action", "verbose", "delay", "nodename", "=", "", "port", "debug_file"]
)
name = st.one_of(st.sampled_from(NAMES), st.text(max_size=20))
value = st.one_of(
    st.text(max_size=50),
    st.sampled_from(["", "1", "0", "-1", "yes", "=", "off", "list", "x" * 5000]),
)
line = st.one_of(st.builds(lambda n, v: f"{n}={v}", name, value), st.text(max_size=80))
junk = st.one_of(
    st.binary(max_size=2000),
    st.lists(line, max_size=30).map(lambda ls: "\n".join(ls).encode("utf-8", "surrogatepass")),
)


def _request(raw_stdin: bytes):
    raw, framework, warnings, _ = fence_proto.parse_input(fencer.SPEC, [], raw_stdin)
    parsed = params.parse(raw, params.FENCE)
    action = framework.get("--action", "reboot")
    request = fence_proto.FenceRequest(action=action, params=parsed, framework=framework)
    return request, fencer.validate(request)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(junk)
def test_stdin_parser_never_raises(data):
    request, problems = _request(data)
    assert isinstance(problems, list)
    for problem in problems + request.params.problems:
        assert problem.startswith("parameter '") or "'" in problem


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.lists(
        st.one_of(
            st.sampled_from(
                [
                    "-o",
                    "-n",
                    "-a",
                    "-p",
                    "-C",
                    "--ip",
                    "--plug",
                    "--evacuate",
                    "--max-parallel=x",
                    "-v",
                    "--",
                    "--os-cloud",
                    "-h",
                    "--help=1",
                ]
            ),
            st.text(alphabet=string.printable, max_size=15),
        ),
        max_size=12,
    )
)
def test_cli_parser_fails_only_like_a_fence_agent(argv):
    try:
        raw, framework, _, _ = fence_proto.parse_input(fencer.SPEC, argv or ["-o", "x"], None)
    except SystemExit as stop:  # fencing.fail_usage: a message and exit 1, the fence protocol
        assert stop.code == 1
        return
    params.parse(raw, params.FENCE)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [f"OCF_RESKEY_{n}" for n in NAMES] + ["OCF_RESKEY_CRM_meta_interval", "OCF_RESKEY_"]
        ),
        st.text(max_size=40),
        max_size=12,
    )
)
def test_ocf_environment_never_raises(env):
    parsed = ocf_proto.parse_env(env, params.COMPUTE)
    request = ocf_proto.OcfRequest(action="monitor", params=parsed, env=env)
    assert isinstance(request.is_probe, bool)
    assert request.timeout > 0


NASTY = [
    b"\xff\xfe\x00binary\x00junk\xc3\x28",
    b"=\n=\n==\n",
    b"port=" + b"A" * 1_000_000,
    "port=c\u00f6mpute\u2603\nos_cloud=\U0001f600\n".encode(),
    b"action=off\naction=on\n",
    b"\n".join([b"port=compute1"] * 1000),
    b"max_parallel=\x00\x01\x02",
    b'password="unterminated\n',
    b"#comment only\n",
]


def test_the_agent_answers_junk_with_messages_not_tracebacks():
    for data in NASTY:
        done = run_fence(stdin=data + b"\naction=validate-all\n")
        assert done.returncode in (0, 1)
        assert "Traceback" not in done.stderr, done.stderr[-2000:]
