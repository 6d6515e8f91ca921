"""nova_ha.lib.power against real IPMI servers on loopback: pyghmi's BMC (BmcSim) and
OpenIPMI's ipmi_sim (IpmiSim). No mocks: every test speaks RMCP+ over UDP."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator

import pytest

from nova_ha.lib.power import Bmc, BmcConfig, PowerError, _power_state
from testbed.bmc import BmcSim
from testbed.ipmi_sim import IpmiSim
from tests.helpers import ROOT, need_binary

PASSWORD = "s3cret-bmc-pw"  # distinctive, so "not in message" checks mean something
WRONG = "n0t-the-pw-x"

Sim = BmcSim | IpmiSim


def make_sim(kind: str, **kw: object) -> Sim:
    if kind == "ipmi_sim":
        need_binary("ipmi_sim")
        return IpmiSim(f"t-{kind}", password=PASSWORD, **kw).start()  # type: ignore[arg-type]
    return BmcSim(f"t-{kind}", password=PASSWORD, **kw).start()  # type: ignore[arg-type]


@pytest.fixture(params=["pyghmi", "ipmi_sim"])
def sim(request: pytest.FixtureRequest) -> Iterator[Sim]:
    s = make_sim(request.param)
    yield s
    s.stop()


@pytest.fixture
def bmcsim() -> Iterator[BmcSim]:
    s = BmcSim("t-pyghmi", password=PASSWORD).start()
    yield s
    s.stop()


def config(s: Sim, **kw: object) -> BmcConfig:
    values: dict = {
        "username": "admin",
        "password": PASSWORD,
        "timeout": 5.0,
        "connect_timeout": 3.0,
    }
    values.update(kw)
    return BmcConfig("127.0.0.1", s.port, **values)


# -- module and configuration -------------------------------------------------------


def test_import_does_not_load_pyghmi() -> None:
    code = "import sys, nova_ha.lib.power; print(sorted(m for m in sys.modules if 'pyghmi' in m))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert out.stdout.strip() == "[]"


def test_config_repr_hides_password() -> None:
    cfg = BmcConfig("192.0.2.1", username="admin", password=PASSWORD)
    assert PASSWORD not in repr(cfg) and PASSWORD not in str(cfg)


@pytest.mark.parametrize(
    "bad",
    [
        {"lanplus": False},
        {"cipher": 1},
        {"privlvl": "root"},
        {"port": 0},
        {"timeout": 0},
        {"address": ""},
    ],
)
def test_invalid_config_is_refused(bad: dict) -> None:
    values = {"address": "127.0.0.1", "password": PASSWORD} | bad
    with pytest.raises(PowerError) as err:
        Bmc(BmcConfig(**values))
    assert PASSWORD not in str(err.value)


def test_status_parser_never_guesses() -> None:
    assert _power_state(b"") is None
    assert _power_state(b"\x01\x00\x00") == "on"
    assert _power_state(b"\x00\x00\x00") == "off"
    assert _power_state(b"\x60") == "off"  # other bits (policy) are not "on"


# -- core checks, against both simulators -------------------------------------------


def test_status_on(sim: Sim) -> None:
    with Bmc(config(sim)) as bmc:
        assert bmc.status() == "on"
        assert bmc.status() == "on"  # second call on the same session
    assert sim.count("status") == 2


def test_off_and_confirm(sim: Sim) -> None:
    with Bmc(config(sim)) as bmc:
        before = time.time()
        taken = bmc.off_and_confirm()
        assert 0 <= taken < 2
        assert [s for _, s in sim.power_log] == ["off"]
        assert sim.power_log[0][0] >= before
        assert sim.power_state == "off"
        assert bmc.status() == "off"
    assert sim.count("off") == 1


def test_second_off_sends_no_power_command(sim: Sim) -> None:
    with Bmc(config(sim)) as bmc:
        bmc.off_and_confirm()
        taken = bmc.off_and_confirm()
    assert taken < 1
    assert sim.count("off") == 1
    assert [s for _, s in sim.power_log] == ["off"]


def test_on_and_confirm(sim: Sim) -> None:
    sim.power_state = "off"
    with Bmc(config(sim)) as bmc:
        assert bmc.status() == "off"
        bmc.on_and_confirm()
        assert bmc.status() == "on"
    assert [s for _, s in sim.power_log] == ["on"]
    assert sim.count("on") == 1


def test_off_is_confirmed_only_after_the_delayed_power_off(sim: Sim) -> None:
    sim.off_delay = 2.0
    with Bmc(config(sim)) as bmc:
        start = time.time()
        taken = bmc.off_and_confirm()
        end = time.time()
    assert 1.9 <= taken <= 3.5
    ((when, state),) = sim.power_log
    assert state == "off" and start + 1.9 <= when <= end
    assert sim.count("off") == 1
    assert sim.count("status") >= 3  # it really polled


def test_power_timeout_shorter_than_the_delay_fails(sim: Sim) -> None:
    sim.off_delay = 2.0
    with Bmc(config(sim, timeout=1.0)) as bmc:
        start = time.monotonic()
        with pytest.raises(PowerError, match="did not report power off within 1 s") as err:
            bmc.off_and_confirm()
        assert 0.9 <= time.monotonic() - start <= 2.5
        assert PASSWORD not in str(err.value)
        assert sim.power_log == []  # the BMC had not switched off yet...
        assert bmc.status() == "on"  # ...and status says so rather than guessing
    assert sim.wait_for("off", timeout=5)  # the acknowledged command still completes


def test_wrong_password(sim: Sim) -> None:
    with Bmc(config(sim, password=WRONG)) as bmc:
        start = time.monotonic()
        with pytest.raises(PowerError, match="authentication failed") as err:
            bmc.status()
        assert time.monotonic() - start < 1.5
    assert WRONG not in str(err.value) and PASSWORD not in str(err.value)
    assert f"127.0.0.1:{sim.port}" in str(err.value)


def test_unreachable_bmc_fails_within_connect_timeout(sim: Sim) -> None:
    sim.unreachable = True
    try:
        with Bmc(config(sim, connect_timeout=1.5)) as bmc:
            start = time.monotonic()
            with pytest.raises(PowerError) as err:
                bmc.status()
            elapsed = time.monotonic() - start
            with pytest.raises(PowerError):
                bmc.off_and_confirm()
    finally:
        sim.unreachable = False
    assert 1.4 <= elapsed <= 2.5
    message = str(err.value)
    assert f"127.0.0.1:{sim.port}" in message and "did not answer" in message
    assert PASSWORD not in message
    assert sim.power_log == []


def test_bmc_lost_mid_session_then_back(sim: Sim) -> None:
    bmc = Bmc(config(sim, connect_timeout=1.5))
    try:
        assert bmc.status() == "on"
        sim.unreachable = True
        start = time.monotonic()
        with pytest.raises(PowerError) as err:
            bmc.status()
        assert time.monotonic() - start <= 2.5
        assert PASSWORD not in str(err.value)
        sim.unreachable = False
        # pyghmi would go on retrying the lost request on the old session for ~30 s;
        # that session was given up, so the next call logs in afresh.
        start = time.monotonic()
        while True:
            try:
                assert bmc.status() == "on"
                break
            except PowerError:
                # ipmi_sim, woken by SIGCONT, first works through the stale packets
                # queued while it was stopped and now and then loses one of ours.
                assert time.monotonic() - start < 6
        if isinstance(sim, BmcSim):
            assert time.monotonic() - start < 1.0
    finally:
        sim.unreachable = False
        bmc.close()


def test_refused_power_command(sim: Sim) -> None:
    sim.refuse = True
    with Bmc(config(sim)) as bmc:
        with pytest.raises(PowerError, match="refused chassis power off") as err:
            bmc.off_and_confirm()
        assert bmc.status() == "on"
    assert PASSWORD not in str(err.value)
    assert sim.power_log == []


def test_callback_runs_before_the_bmc_reports_off(sim: Sim) -> None:
    seen: list[str] = []

    def killed() -> None:
        time.sleep(0.3)  # like killing a node's processes
        seen.append(sim.power_state)

    sim.on_power_off = killed
    with Bmc(config(sim)) as bmc:
        taken = bmc.off_and_confirm()
    assert seen == ["on"]  # still on while the callback ran: "off" means really off
    assert taken >= 0.3
    assert sim.callback_errors == []


# -- pyghmi BMC only ----------------------------------------------------------------


def test_unknown_user(bmcsim: BmcSim) -> None:
    with Bmc(config(bmcsim, username="nobody")) as bmc:
        with pytest.raises(PowerError, match="authentication failed.*unknown user"):
            bmc.status()


def test_status_error_is_not_read_as_on(bmcsim: BmcSim) -> None:
    bmcsim.status_error = 0xFF
    with Bmc(config(bmcsim)) as bmc:
        with pytest.raises(PowerError, match="refused chassis status"):
            bmc.status()
        with pytest.raises(PowerError):
            bmc.off_and_confirm()
    assert bmcsim.count("off") == 0


def test_confirm_polls_through_status_errors(bmcsim: BmcSim) -> None:
    """A BMC that answers the command but errs on status while switching: keep polling."""
    bmcsim.off_delay = 0.5
    with Bmc(config(bmcsim)) as bmc:
        assert bmc.status() == "on"

        def flaky() -> None:
            time.sleep(0.1)  # after the command went through
            bmcsim.status_error = 0xC3
            time.sleep(0.6)
            bmcsim.status_error = None

        t = threading.Thread(target=flaky)
        t.start()
        taken = bmc.off_and_confirm()
        t.join()
    assert 0.5 <= taken < 3
    assert [s for _, s in bmcsim.power_log] == ["off"]


def test_ipmitool_against_bmcsim(bmcsim: BmcSim) -> None:
    ipmitool = need_binary("ipmitool")
    base = [
        ipmitool,
        "-I",
        "lanplus",
        "-H",
        "127.0.0.1",
        "-p",
        str(bmcsim.port),
        "-U",
        "admin",
        "-P",
        PASSWORD,
        "chassis",
        "power",
    ]

    def run(action: str) -> str:
        done = subprocess.run(base + [action], capture_output=True, text=True, timeout=20)
        assert done.returncode == 0, done.stderr
        return done.stdout

    start = time.monotonic()
    assert "is on" in run("status")
    run("off")
    assert bmcsim.wait_for("off")
    assert "is off" in run("status")
    run("on")
    assert bmcsim.wait_for("on")
    assert time.monotonic() - start < 5  # no cipher-suite discovery stalls
    assert [s for _, s in bmcsim.power_log] == ["off", "on"]


# -- ipmi_sim only -----------------------------------------------------------------


def test_ipmitool_against_ipmi_sim() -> None:
    ipmitool = need_binary("ipmitool")
    s = make_sim("ipmi_sim")
    try:
        # -C 3: ipmi_sim has no SHA-256 suites, and without -C ipmitool waits 10 s.
        base = [
            ipmitool,
            "-I",
            "lanplus",
            "-C",
            "3",
            "-H",
            "127.0.0.1",
            "-p",
            str(s.port),
            "-U",
            "admin",
            "-P",
            PASSWORD,
            "chassis",
            "power",
        ]
        done = subprocess.run(base + ["off"], capture_output=True, text=True, timeout=20)
        assert done.returncode == 0, done.stderr
        assert s.wait_for("off")
        done = subprocess.run(base + ["status"], capture_output=True, text=True, timeout=20)
        assert "is off" in done.stdout
    finally:
        s.stop()


# -- process behaviour --------------------------------------------------------------


def test_process_exits_promptly_after_an_unreachable_bmc() -> None:
    """pyghmi's IO thread and our abandoned call threads must not hold up exit."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # receives, never answers
        port = silent.getsockname()[1]
        code = textwrap.dedent(f"""
            import time
            from nova_ha.lib.power import Bmc, BmcConfig, PowerError
            bmc = Bmc(BmcConfig("127.0.0.1", {port}, "admin", {PASSWORD!r},
                                connect_timeout=1.0))
            start = time.monotonic()
            try:
                bmc.status()
            except PowerError as exc:
                print("failed after", time.monotonic() - start, exc)
            bmc.close()
            print("leaving at", time.time())
        """)
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30
        )
        ended = time.time()
    assert done.returncode == 0, done.stderr
    failed = next(line for line in done.stdout.splitlines() if line.startswith("failed after"))
    leaving = next(line for line in done.stdout.splitlines() if line.startswith("leaving at"))
    assert 0.95 <= float(failed.split()[2]) <= 1.8, failed
    assert "did not answer" in failed and f"127.0.0.1:{port}" in failed
    assert PASSWORD not in done.stdout + done.stderr
    # The login thread is still inside pyghmi (which would go on ~4 s): exit must not wait.
    assert ended - float(leaving.split()[2]) < 1.5


def test_idle_session_is_replaced(bmcsim: BmcSim, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sessions idle past _MAX_IDLE are logged out and a new one is opened."""
    import nova_ha.lib.power as power

    monkeypatch.setattr(power, "_MAX_IDLE", 0.0)
    with Bmc(config(bmcsim)) as bmc:
        assert bmc.status() == "on"
        first = bmc._cmd.ipmi_session
        time.sleep(0.01)
        assert bmc.status() == "on"
        assert bmc._cmd.ipmi_session is not first
