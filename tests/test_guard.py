"""The mass-failure guard: decided from the records' fencing times, whoever asks and when."""

from __future__ import annotations

import json

import pytest

from nova_ha.lib import guard, notify, params, state
from nova_ha.lib.lifecycle import Event, HostState
from tests.helpers import run_fence

T0 = 1_800_000_000.0  # some fixed epoch
AUTH = {
    "os_auth_url": "http://127.0.0.1:1/v3",
    "os_username": "admin",
    "os_password": "x",
    "os_project_name": "admin",
}


def _parsed(**values) -> params.Parsed:
    return params.parse({k: str(v) for k, v in values.items()}, params.EVACUATE)


def _limits(**values) -> params.EvacuationSettings:
    return _parsed(**values).settings.evacuation


def _fence(store: state.StateStore, host: str, at: float) -> None:
    store.mark(host, HostState.FENCED, Event.FENCED, "test", mode="all", now=at)


def _store(hosts: int = 3) -> state.MemoryStateStore:
    store = state.MemoryStateStore()
    for i in range(1, hosts + 1):  # known compute hosts, nothing happened to them yet
        store.mark(f"host{i}", HostState.OK)
    return store


def test_three_hosts_fenced_within_the_window_are_held():
    store = _store()
    for i, offset in enumerate((0, 100, 250), 1):
        _fence(store, f"host{i}", T0 + offset)
    limits = _limits(max_fenced_hosts=2, fenced_window=600)
    records = store.all()
    for host in ("host1", "host2", "host3"):
        verdict = guard.check(records, limits, host)
        assert verdict.blocked, verdict.message()
        assert verdict.wave == ["host1", "host2", "host3"] and verdict.limit == 2
    assert "3 hosts fenced within 600 s" in guard.check(records, limits, "host3").message()


def test_three_hosts_fenced_outside_the_window_are_not_held():
    store = _store()
    for i, offset in enumerate((0, 700, 1400), 1):
        _fence(store, f"host{i}", T0 + offset)
    limits = _limits(max_fenced_hosts=2, fenced_window=600)
    records = store.all()
    for host in ("host1", "host2", "host3"):
        assert not guard.check(records, limits, host).blocked
    # two within 600 s of each other (0 and 500) stay under a limit of 2
    store = _store()
    for i, offset in enumerate((0, 500, 1200), 1):
        _fence(store, f"host{i}", T0 + offset)
    assert not any(guard.check(store.all(), limits, h).blocked for h in ("host1", "host2", "host3"))


def test_the_decision_does_not_lapse_with_the_window():
    """Read from the fencing times, not from 'now': NovaEvacuate asking an hour later must
    not evacuate the wave, and a host fenced alone later is not held."""
    store = _store(4)
    for i, offset in enumerate((0, 30, 60), 1):
        _fence(store, f"host{i}", T0 + offset)
    _fence(store, "host4", T0 + 3600)
    limits = _limits(max_fenced_hosts=2, fenced_window=600)
    records = store.all()
    assert all(guard.check(records, limits, h).blocked for h in ("host1", "host2", "host3"))
    assert not guard.check(records, limits, "host4").blocked
    # a host of the wave that rejoined still counts for the others (it was fenced then)
    store.mark("host3", HostState.EVACUATED, Event.EVACUATION_FINISHED, now=T0 + 100)
    store.mark("host3", HostState.OK, Event.REJOINED, now=T0 + 900)
    assert guard.check(store.all(), limits, "host1").blocked
    assert guard.check(store.all(), limits, "host3").wave == ["host1", "host2", "host3"]


def test_a_host_never_fenced_is_never_held():
    store = _store()
    for i in (1, 2):
        _fence(store, f"host{i}", T0)
    verdict = guard.check(store.all(), _limits(max_fenced_hosts=1), "host3")
    assert not verdict.blocked and verdict.wave == []


@pytest.mark.parametrize(
    "setting,hosts,fenced,blocked",
    [
        ("25%", 3, 1, False),  # one host alone: never held (the limit is at least 1)
        ("25%", 3, 2, True),  # 25% of 3, rounded down, at least 1 -> 1
        ("25%", 10, 2, False),  # 25% of 10 -> 2
        ("25%", 10, 3, True),
        ("50%", 10, 5, False),
        ("50%", 10, 6, True),
        ("100%", 4, 4, False),  # more than every host: never
        ("2", 100, 2, False),
        ("2", 100, 3, True),
        ("0", 3, 3, False),  # off
    ],
)
def test_count_and_percent(setting, hosts, fenced, blocked):
    store = _store(hosts)
    for i in range(1, fenced + 1):
        _fence(store, f"host{i}", T0 + i)
    verdict = guard.check(store.all(), _limits(max_fenced_hosts=setting), "host1")
    assert verdict.blocked is blocked, verdict.message()


def test_default_is_a_quarter_of_the_hosts_within_ten_minutes():
    limits = _limits()
    assert limits.max_fenced_hosts == "25%" and limits.fenced_window == 600
    long = params.BY_NAME["max_fenced_hosts"].long
    assert "default, 25%" in long and "nova-ha evacuate HOST" in long


def test_percentage_of_novas_hosts_asked_only_when_it_matters():
    store = _store(3)
    _fence(store, "host1", T0)
    calls = []

    def count():
        calls.append(1)
        return 12

    limits = _limits(max_fenced_hosts="25%")
    assert not guard.check(store.all(), limits, "host1", total_hosts=count).blocked
    assert calls == []  # one host: the answer cannot matter
    _fence(store, "host2", T0 + 5)
    _fence(store, "host3", T0 + 9)
    verdict = guard.check(store.all(), limits, "host1", total_hosts=count)
    assert calls == [1] and verdict.total == 12 and verdict.limit == 3 and not verdict.blocked


def test_hold_records_and_raises_once(monkeypatch):
    lines = []
    monkeypatch.setattr(notify, "_syslog", lambda priority, text: lines.append(text))
    store = _store()
    for i in (1, 2, 3):
        _fence(store, f"host{i}", T0 + i)
    verdict = guard.check(store.all(), _limits(max_fenced_hosts=2), "host3")
    notifier = notify.Notifier(source=params.FENCE)
    assert guard.hold(store, verdict, notifier) is True
    record = store.get("host3")
    assert record.state == "fenced" and record.history[-1].name == Event.EVACUATION_BLOCKED
    assert "3 fenced within 600s, limit 2" in record.history[-1].detail
    assert guard.hold(store, verdict, notifier) is False  # monitor after monitor: once
    events = [json.loads(line.split(" ", 1)[1]) for line in lines if line.startswith("event ")]
    assert [e["event"] for e in events] == [Event.EVACUATION_BLOCKED]
    assert events[0]["wave"] == ["host1", "host2", "host3"] and events[0]["limit"] == 2
    # a new incident (fenced again) may be held again
    _fence(store, "host3", T0 + 20)
    assert (
        guard.hold(store, guard.check(store.all(), _limits(max_fenced_hosts=2), "host3"), notifier)
        is True
    )


def test_check_store_reads_the_cib_once(cib_file):
    store = state.CibStateStore(cib_file)
    for i in (1, 2, 3):
        store.mark(f"host{i}", HostState.FENCED, Event.FENCED, "test", mode="all")
    limits = _limits(max_fenced_hosts=2, fenced_window=600)
    before = store.commands_run
    verdict = guard.check_store(store, limits, "host2")
    assert verdict.blocked and store.commands_run - before == 1
    assert guard.hold(store, verdict)
    assert state.CibStateStore(cib_file).get("host2").history[-1].name == Event.EVACUATION_BLOCKED


def test_check_store_without_records_does_not_hold(tmp_path):
    store = state.CibStateStore(str(tmp_path / "missing.xml"))
    assert guard.check_store(store, _limits(max_fenced_hosts=1), "host1") is None
    assert guard.check_store(None, _limits(), "host1") is None


@pytest.mark.parametrize(
    "text,expected",
    [
        ("3", (3, False)),
        ("25%", (25.0, True)),
        (" 12.5 % ", (12.5, True)),
        ("0", (0, False)),
        ("", (0, False)),
    ],
)
def test_parse_host_limit(text, expected):
    assert params.parse_host_limit(text) == expected


@pytest.mark.parametrize("bad", ["lots", "-1", "2.5", "150%", "3 hosts"])
def test_bad_limit_is_refused_by_validate_all(bad):
    with pytest.raises(params.ParamError):
        params.parse_host_limit(bad)
    done = run_fence(dict(AUTH, port="compute1", action="validate-all", max_fenced_hosts=bad))
    assert done.returncode == 1 and "parameter 'max_fenced_hosts'" in done.stderr
    assert "Traceback" not in done.stderr


def test_window_is_seconds():
    assert _parsed(fenced_window="90s")["fenced_window"] == 90.0
    assert _parsed(fenced_window="soon").problems


def test_screen_holds_new_starts_only_and_counts_hosts_once(monkeypatch):
    lines = []
    monkeypatch.setattr(notify, "_syslog", lambda priority, text: lines.append(text))
    store = _store(5)
    for i in (1, 2, 3, 4):
        _fence(store, f"host{i}", T0 + i)
    store.mark(
        "host2", HostState.EVACUATING, Event.EVACUATION_STARTED, "by a killed agent", now=T0 + 9
    )
    store.mark("host3", HostState.EVACUATING, now=T0 + 9)
    store.mark("host3", HostState.FAILED, Event.EVACUATION_FAILED, "no room", now=T0 + 20)
    calls = []

    def count():
        calls.append(1)
        return 8  # 25% of 8: 2 hosts; 4 were fenced within the window

    records = store.all()
    held = guard.screen(
        store,
        records,
        _limits(),
        ["host1", "host2", "host3", "host5"],
        notify.Notifier(source=params.EVACUATE),
        total_hosts=count,
    )
    assert sorted(held) == ["host1", "host3"]  # host2 resumes; host5 was never fenced
    assert calls == [1]
    assert held["host1"].limit == 2 and held["host1"].total == 8
    assert store.get("host3").state == "failed"
    assert store.get("host3").history[-1].name == Event.EVACUATION_BLOCKED
    again = guard.screen(
        store,
        store.all(),
        _limits(),
        ["host1", "host3"],
        notify.Notifier(source=params.EVACUATE),
        total_hosts=count,
    )
    assert sorted(again) == ["host1", "host3"]
    blocked = f'"event":"{Event.EVACUATION_BLOCKED}"'
    assert sum(1 for line in lines if blocked in line) == 2  # once each
