"""The mass-failure guard and notifications through the real agents: a wave of three
fenced hosts, NovaEvacuate holding the third, the operator evacuating it by hand."""

from __future__ import annotations

import time

from nova_ha.lib import state
from testbed.webhook import Webhook
from tests.helpers import COMPUTE_AGENT, run_fence, run_ocf
from tests.test_cli import _config, _nova_ha

HOSTS = ("host1", "host2", "host3")


def _events(hook: Webhook) -> list[tuple[str, str]]:
    return sorted((e["event"], e["node"]) for e in hook.received)


def test_wave_is_held_notified_and_evacuated_by_hand(sim_bed, tmp_path, webhook):
    bed = sim_bed
    hook = webhook
    ids = {h: bed.cloud.create_servers(h, 3, name_prefix=h) for h in HOSTS}
    guarded = {"max_fenced_hosts": 2, "notify_url": hook.url}
    with bed.evacuation_service(**guarded) as service:
        for host in HOSTS:
            done = run_fence(bed.fence_params(host, **guarded), env=bed.env())
            assert done.returncode == 0, done.stderr  # fencing itself always proceeds
            service.wait_settled(host)
        assert "host3: held by the mass-failure guard" in service.log()
    store = state.CibStateStore(bed.cib)
    held = store.get("host3")
    assert held.state == "fenced" and held.history[-1].name == "evacuation_blocked"
    assert held.lease_owner is None  # given back with the hold: the operator need not wait
    assert store.get("host1").state == store.get("host2").state == "evacuated"
    evacuated = {r["path"].split("/")[-2] for r in bed.requests(action="evacuate")}
    assert not evacuated & set(ids["host3"])
    hook.wait(8)
    assert _events(hook) == sorted(
        [
            ("fenced", "host1"),
            ("fenced", "host2"),
            ("fenced", "host3"),
            ("evacuation_started", "host1"),
            ("evacuation_started", "host2"),
            ("evacuation_finished", "host1"),
            ("evacuation_finished", "host2"),
            ("evacuation_blocked", "host3"),
        ]
    )

    # NovaEvacuate, started again, respects the hold and raises no second event
    with bed.evacuation_service(**guarded) as service:
        time.sleep(3)  # a few looks at the records
        assert "held by the mass-failure guard" in service.log()
    assert not {r["path"].split("/")[-2] for r in bed.requests(action="evacuate")} & set(
        ids["host3"]
    )
    assert len(hook.received) == 8

    # host1 rejoins through NovaCompute: 'rejoined' is announced
    bed.bmcs["host1"].power_state = "on"
    done = run_ocf(
        COMPUTE_AGENT,
        "start",
        dict(bed.compute_params("host1"), notify_url=hook.url),
        {"on_node": "host1", "timeout": 120000},
        env=bed.env(),
    )
    assert done.returncode == 0, done.stderr
    rejoined = hook.wait(9)
    assert any(
        e["event"] == "rejoined" and e["node"] == "host1" and e["source"] == "NovaCompute"
        for e in rejoined
    ), rejoined

    # the operator evacuates the held host by hand: the guard does not stop that
    config = _config(tmp_path, dict(bed.os_params(), notify_url=hook.url, max_fenced_hosts=2))
    done = _nova_ha(bed, "evacuate", "host3", "--config", config)
    assert done.returncode == 0, done.stdout + done.stderr
    hook.wait(11)
    time.sleep(2)  # a duplicate event would arrive by now
    finished = [
        e for e in hook.received if e["node"] == "host3" and e["event"] == "evacuation_finished"
    ]
    assert len(finished) == 1 and finished[0]["source"] == "nova-ha"
    assert store.get("host3").state == "evacuated"
