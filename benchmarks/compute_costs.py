"""Per-compute costs and the scheduler's choice, on the real Nova box or on NovaSim.

One round: `n` servers on host1, host1 crashed and forced down, its servers evacuated either
one request after the other ("sequential") or all at once ("concurrent"), then, when Nova
landed them SHUTOFF (>= 2.95), started the same way. Printed per round: how long the
requests took to be accepted, when the last server landed and ran, the per-server rebuild
and start durations from Nova's own instance-action events (box only: the simulator keeps
no events), and where the servers landed. Used to calibrate NovaSim's per-compute knobs
(testbed/nova_sim/README.md) and to diagnose issue 13's "flooding". Reported, not asserted:

    flock /tmp/nha-bench.lock env PYTHONPATH=$PWD .venv/bin/python -m benchmarks.compute_costs \
        [--cloud box|sim] [-n 8] [--microversion 2.95] [--py-spy DIR]

`--py-spy DIR` records the box process (py-spy from .venv-nova) during every round's
evacuations into DIR (collapsed stacks, all threads, idle ones too: where they wait).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from nova_ha.lib import params, proof
from nova_ha.openstack.compute import Nova
from nova_ha.openstack.transport import Deadline
from testbed.observe import back_in_service

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOSTS = ("host1", "host2", "host3")
SOURCE = "host1"


# nova-ha's settings -> the cloud's attribute holding each one
CREDENTIALS = {
    "os_auth_url": "auth_url",
    "os_username": "username",
    "os_password": "password",
    "os_project_name": "project_name",
}


def connect(cloud: Any, version: str) -> Nova:
    settings = {key: getattr(cloud, attr) for key, attr in CREDENTIALS.items()}
    settings.update(os_interface="public", os_compute_api_version=version, max_parallel="32")
    return Nova.from_params(params.parse(settings, params.FENCE))


def _fan_out(concurrent: bool, calls: list[Any]) -> list[float]:
    """Run the calls one after the other or all at once; the time each one was answered."""

    def timed(call: Any) -> float:
        call()
        return time.time()

    if not concurrent:
        return [timed(c) for c in calls]
    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(timed, calls))


def _wait_all(nova: Nova, ids: list[str], settled: Any, timeout: float = 300) -> dict[str, float]:
    """When each server first met `settled` (polled every 0.5 s: polling costs the box CPU)."""
    seen: dict[str, float] = {}
    end = time.time() + timeout
    while len(seen) < len(ids) and time.time() < end:
        for sid in ids:
            if sid not in seen and settled(nova.server(Deadline(30), sid)):
                seen[sid] = time.time()
        time.sleep(0.5)
    return seen


def _events(nova: Nova, sid: str, action: str) -> dict[str, float]:
    """Durations (s) of the instance action's events, newest action of that name (box)."""
    listing = nova.request("GET", f"/servers/{sid}/os-instance-actions", Deadline(30))
    found = [a for a in listing.get("instanceActions", []) if a["action"] == action]
    if not found:
        return {}
    try:
        detail = nova.request(
            "GET", f"/servers/{sid}/os-instance-actions/{found[0]['request_id']}", Deadline(30)
        )
    except Exception:  # the simulator has no action detail
        return {}
    spans = {}
    for event in detail["instanceAction"].get("events", []):
        if event.get("start_time") and event.get("finish_time"):
            start = datetime.fromisoformat(event["start_time"])
            spans[event["event"]] = (
                datetime.fromisoformat(event["finish_time"]) - start
            ).total_seconds()
    return spans


def _summary(values: list[float]) -> str:
    if not values:
        return "-"
    return f"median {statistics.median(values):.2f} max {max(values):.2f}"


class Spy:
    """py-spy recording the box process for one phase (nothing when not asked for)."""

    def __init__(self, directory: str | None, pid: int | None) -> None:
        self.directory, self.pid = directory, pid
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, name: str) -> None:
        if not self.directory or not self.pid:
            return
        os.makedirs(self.directory, exist_ok=True)
        spy = os.path.join(ROOT, ".venv-nova", "bin", "py-spy")
        out = os.path.join(self.directory, f"{name}.txt")
        self.proc = subprocess.Popen(
            [spy, "record", "--pid", str(self.pid), "--idle", "--threads", "--rate", "50"]
            + ["--format", "raw", "--output", out, "--nonblocking"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(2)  # SIGINT: py-spy writes its file and exits
            self.proc.wait(timeout=30)
            self.proc = None


def _landed(server: Any) -> bool:
    return not server.task_state and server.host not in (None, SOURCE)


def evacuate_round(
    cloud: Any, nova: Nova, n: int, concurrent: bool, spy: Spy, name: str
) -> dict[str, Any]:
    ids = cloud.create_servers(SOURCE, n)
    confirmed = proof.by_bmc(SOURCE, SOURCE)
    cloud.crash(SOURCE)
    nova.force_down(Deadline(60), nova.service(Deadline(60), SOURCE), confirmed)
    servers = [nova.server(Deadline(30), sid) for sid in ids]
    spy.start(name)
    begun = time.time()
    answered = _fan_out(
        concurrent, [lambda s=s: nova.evacuate(Deadline(120), s, confirmed) for s in servers]
    )
    landed = _wait_all(nova, ids, _landed)
    spy.stop()
    final = {sid: nova.server(Deadline(30), sid) for sid in ids}
    stopped = [sid for sid, s in final.items() if s.status == "SHUTOFF"]
    started_at = time.time()
    _fan_out(concurrent, [lambda i=i: nova.start_server(Deadline(120), i) for i in stopped])
    running = _wait_all(nova, stopped, lambda s: s.status == "ACTIVE") if stopped else {}
    row = {
        "round": name,
        "accepted_s": round(max(answered) - begun, 2),
        "landed_s": round(max(landed.values()) - begun, 2) if landed else None,
        "landed_status": dict(Counter(s.status for s in final.values())),
        "running_s": round(max([*running.values(), *landed.values()]) - begun, 2),
        "start_phase_s": round(max(running.values()) - started_at, 2) if running else None,
        "spread": dict(sorted(Counter(s.host for s in final.values()).items())),
        "rebuild": _summary(_event_spans(nova, ids, "evacuate", "compute_rebuild_instance")),
        "start": _summary(_event_spans(nova, stopped, "start", "compute_start_instance")),
    }
    for sid in ids:
        nova.request("DELETE", f"/servers/{sid}", Deadline(60))
    back_in_service(cloud, SOURCE)
    return row


def _event_spans(nova: Nova, ids: list[str], action: str, event: str) -> list[float]:
    spans = (_events(nova, sid, action).get(event) for sid in ids)
    return [s for s in spans if s is not None]


def _cloud(kind: str) -> Any:
    if kind == "sim":
        from testbed.nova_sim import NovaSim

        return NovaSim(hosts=list(HOSTS))
    from testbed.nova_box import NovaBox

    return NovaBox(hosts=HOSTS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cloud", choices=("box", "sim"), default="box")
    parser.add_argument("-n", type=int, default=8, help="servers per round")
    parser.add_argument("--microversion", default="2.95", help="of the evacuations")
    parser.add_argument("--rounds", default="single,sequential,concurrent")
    parser.add_argument("--py-spy", dest="py_spy", help="directory for py-spy recordings")
    args = parser.parse_args(argv)
    with _cloud(args.cloud) as cloud:
        nova = connect(cloud, args.microversion)
        spy = Spy(args.py_spy, getattr(cloud, "pid", None))
        for name in args.rounds.split(","):
            count = 1 if name == "single" else args.n
            row = evacuate_round(cloud, nova, count, name == "concurrent", spy, name)
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
