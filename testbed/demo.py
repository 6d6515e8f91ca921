"""`make demo`: fence host1 of a simulated cloud with the real agents, told by nova-ha's events.

A Nova+Keystone simulator with 3 hosts and 30 servers, a BMC simulator per host (its
power-off crashes the host's compute in the cloud), an offline CIB file for the records.
NovaEvacuate's evacuation service is started first through its OCF agent, as Pacemaker runs
it beside the cluster; then fence_nova_evacuate runs exactly as Pacemaker's fencer runs it
(parameters on stdin, no argv). Both have ``notify_command`` set to testbed/event_sink.py,
which appends each event nova-ha sends (fenced, evacuation_started, evacuation_finished...)
to a file: the timeline and the summary are built from those events and from Nova's view of
the servers, not from log text.

    python -m testbed.demo [--rebuild-seconds S] [--timeout S]

Exit code 0 when the fence action succeeded, the evacuation finished and every server of
host1 is ACTIVE on another host; 1 otherwise (the agents' log tails are shown).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed import util
from testbed.bmc import BmcSim
from testbed.cib import write_cib
from testbed.nova_sim import NovaSim
from testbed.util import FENCE_AGENT, ROOT

EVACUATE_AGENT = ROOT / "agents" / "ocf" / "NovaEvacuate"
SINK = ROOT / "testbed" / "event_sink.py"
HOSTS = ["host1", "host2", "host3"]
FAILED = "host1"
LAYOUT = {"host1": 16, "host2": 7, "host3": 7}
TERMINAL = frozenset({"evacuation_finished", "evacuation_failed", "evacuation_blocked"})
TTY = sys.stdout.isatty()

Event = dict[str, Any]


@dataclass
class Run:
    """What the demo saw: nova-ha's events in order of their time, the fence action's end."""

    started: float  # wall clock of the fence request: events carry wall-clock epochs
    events: list[Event] = field(default_factory=list)
    exit_code: int | None = None
    agent_seconds: float | None = None

    def since(self, event: Event) -> float:
        return float(event["epoch"]) - self.started

    def outcome(self) -> Event | None:
        """The evacuation's last word (finished, failed or blocked), once it came."""
        return next((e for e in self.events if e["event"] in TERMINAL), None)


class EventFile:
    """The sink's file, read as it grows (whole lines only)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        path.touch()

    def new(self) -> list[Event]:
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            chunk = f.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self._offset += len(complete)
        events = [json.loads(line) for line in complete.splitlines() if line.strip()]
        return sorted(events, key=lambda e: e["epoch"])


class Screen:
    """The timeline: one line per event, and a bar of the servers Nova shows moved."""

    def __init__(self, cloud: NovaSim, victims: list[str], started: float) -> None:
        self.cloud, self.victims, self.started = cloud, victims, started
        self.moved = -1

    def event(self, run: Run, event: Event) -> None:
        self.line(f"{run.since(event):6.2f}s  {event['event']:<20} {describe(event)}")

    def line(self, text: str) -> None:
        print(("\r" + text + " " * 20) if TTY else text, flush=True)
        if TTY:
            self.moved = -1  # the bar is drawn again below the line

    def progress(self) -> None:
        moved = sum(1 for i in self.victims if runs_elsewhere(self.cloud.server(i)))
        if moved == self.moved:
            return
        self.moved = moved
        text = (
            f"{time.time() - self.started:6.2f}s  servers running elsewhere "
            f"{_bar(moved, len(self.victims))}"
        )
        print(("\r" + text) if TTY else text, end="" if TTY else "\n", flush=True)


def describe(event: Event) -> str:
    """An event in words, from its own fields."""
    kind = event["event"]
    if kind == "evacuation_started":
        return f"evacuation of {event['node']} {event.get('detail', '')}".rstrip()
    if kind in ("evacuation_finished", "evacuation_failed") and "found" in event:
        return (
            f"{event.get('evacuated', 0)} of {event['found']} servers evacuated, "
            f"{event.get('failed', 0)} failed, in {event.get('seconds', '?')}s"
        )
    return str(event.get("detail", ""))


def runs_elsewhere(server: dict[str, Any]) -> bool:
    return server["host"] != FAILED and server["status"] == "ACTIVE"


def _bar(done: int, total: int, width: int = 32) -> str:
    filled = int(width * done / total) if total else width
    return "[" + "#" * filled + "." * (width - filled) + f"] {done}/{total}"


# ---- the cloud and the agents ------------------------------------------------------------


@contextlib.contextmanager
def bmcs_for(cloud: NovaSim) -> Iterator[dict[str, BmcSim]]:
    """A BMC per host: powering a host off crashes its compute in the cloud."""
    bmcs = {
        h: BmcSim(
            h, on_power_off=lambda h=h: cloud.crash(h), on_power_on=lambda h=h: cloud.start(h)
        )
        for h in HOSTS
    }
    try:
        for bmc in bmcs.values():
            bmc.start()
        yield bmcs
    finally:
        for bmc in bmcs.values():
            bmc.stop()


def openstack_params(cloud: NovaSim, events: Path) -> dict[str, object]:
    """What the fence device and NovaEvacuate share: the cloud, and the event sink."""
    sink = shlex.join([sys.executable, str(SINK), str(events)])
    return {**util.cloud_params(cloud), "notify_command": sink}


def fence_params(common: dict[str, object], bmc: BmcSim) -> dict[str, object]:
    return {
        "action": "off",
        "port": FAILED,
        **common,
        "ip": "127.0.0.1",
        "ipport": bmc.port,
        "username": bmc.username,
        "password": bmc.password,
        "evacuate_timeout": 60,
    }


def environment(tmp: Path) -> dict[str, str]:
    """The agents' environment: the CIB file for the records, private run and log folders."""
    return dict(
        os.environ,
        CIB_file=write_cib(tmp / "cib.xml", HOSTS),
        NOVA_HA_RUN_DIR=str(tmp),
        NOVA_HA_LOG_DIR=str(tmp),
        NOVA_HA_TOKEN_DIR=str(tmp / "tokens"),
        HA_RSCTMP=str(tmp),
    )


@contextlib.contextmanager
def evacuation_service(common: dict[str, object], env: dict[str, str]) -> Iterator[None]:
    """NovaEvacuate started before the failure and stopped after, through its OCF agent."""
    params = {**common, "evacuate": "all"}
    ocf_env = dict(
        env, OCF_ROOT="/usr/lib/ocf", **{f"OCF_RESKEY_{k}": str(v) for k, v in params.items()}
    )
    agent = [sys.executable, str(EVACUATE_AGENT)]
    started = subprocess.run(
        agent + ["start"], env=ocf_env, capture_output=True, text=True, timeout=60, cwd="/"
    )
    if started.returncode != 0:
        raise RuntimeError(f"NovaEvacuate start failed: {started.stderr[-500:]}")
    try:
        yield
    finally:
        subprocess.run(agent + ["stop"], env=ocf_env, capture_output=True, timeout=60, cwd="/")


def start_fence(
    params: dict[str, object], env: dict[str, str], log: Path
) -> subprocess.Popen[bytes]:
    """fence_nova_evacuate as Pacemaker's fencer runs it: parameters on stdin, no argv."""
    with open(log, "wb") as out:
        agent = subprocess.Popen(
            [sys.executable, str(FENCE_AGENT)],
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=out,
            env=env,
            cwd="/",
        )
    assert agent.stdin is not None
    agent.stdin.write("".join(f"{k}={v}\n" for k, v in params.items()).encode())
    agent.stdin.close()
    return agent


# ---- the story ---------------------------------------------------------------------------


def follow(
    agent: subprocess.Popen[bytes], events: EventFile, screen: Screen, run: Run, timeout: float
) -> None:
    """Show each event as it comes, until the evacuation's outcome (or the fence failed).

    An event reaches the file a moment after it happened (its delivery is detached): the
    fence action's exit is shown in its place among the events, by time."""
    end, exit_shown = time.monotonic() + timeout, False
    while time.monotonic() < end:
        if run.exit_code is None and agent.poll() is not None:
            run.exit_code, run.agent_seconds = agent.returncode, time.time() - run.started
        for event in events.new():
            if (
                not exit_shown
                and run.agent_seconds is not None
                and run.since(event) > run.agent_seconds
            ):
                exit_shown = show_exit(screen, run)
            run.events.append(event)
            screen.event(run, event)
        screen.progress()
        if run.exit_code is not None and (run.outcome() or run.exit_code != 0):
            break
        time.sleep(0.1)
    if agent.poll() is None:  # out of time: the demo ends what it started
        agent.kill()
        run.exit_code = agent.wait()
    elif not exit_shown:
        show_exit(screen, run)
    print("\n" if TTY else "")


def show_exit(screen: Screen, run: Run) -> bool:
    screen.line(f"{run.agent_seconds:6.2f}s  (the fence action exits with code {run.exit_code})")
    return True


def summary(run: Run, cloud: NovaSim, victims: list[str], bmc: BmcSim) -> bool:
    """The servers as Nova shows them, the events in order; True when all went well."""
    print(f"{'server':<16} {'from':<7} {'to':<7} {'status':<8}")
    servers = [cloud.server(i) for i in victims]
    for server in servers:
        print(f"{server['name']:<16} {FAILED:<7} {server['host']:<7} {server['status']:<8}")
    print(
        "\nevents: "
        + (" -> ".join(f"{e['event']} ({run.since(e):.2f}s)" for e in run.events) or "none")
    )
    moved = collections.Counter(s["host"] for s in servers if runs_elsewhere(s))
    spread = ", ".join(f"{host}: {count}" for host, count in sorted(moved.items()))
    outcome = run.outcome()
    # The headline: when every server ran again (the evacuation's end waits for that).
    running = "" if outcome is None else f", all running {run.since(outcome):.1f}s after the fence"
    if moved.total() == len(victims):
        print(
            f"Nova: all {len(victims)} servers of {FAILED} run on other hosts ({spread}){running}"
        )
    else:
        print(
            f"Nova: {moved.total()} of {len(victims)} servers of {FAILED} run on other "
            f"hosts ({spread or 'none'})"
        )
    took = "" if run.agent_seconds is None else f" after {run.agent_seconds:.1f}s"
    print(f"fence action: exit code {run.exit_code}{took}; {FAILED} power: {bmc.power_state}")
    return (
        run.exit_code == 0
        and outcome is not None
        and outcome["event"] == "evacuation_finished"
        and moved.total() == len(victims)
    )


def show_logs(tmp: Path) -> None:
    """When something went wrong: the tails of the agents' logs (they go with the run)."""
    for log in sorted(tmp.glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()[-15:]
        print(f"\n--- {log.name} (last lines)\n" + "\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m testbed.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--rebuild-seconds",
        type=float,
        default=1.5,
        help="how long Nova takes to rebuild a server (default 1.5)",
    )
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="give up after this many seconds (default 60)"
    )
    args = parser.parse_args(argv)
    with (
        tempfile.TemporaryDirectory(prefix="nova-ha-demo-") as folder,
        NovaSim(hosts=HOSTS) as cloud,
        bmcs_for(cloud) as bmcs,
    ):
        cloud.evacuate_delay = args.rebuild_seconds  # a rebuild takes a moment, as on a cloud
        cloud.latency = 0.02
        ok = play(cloud, bmcs, Path(folder), args.timeout)
        if not ok:
            show_logs(Path(folder))
    return 0 if ok else 1


def play(cloud: NovaSim, bmcs: dict[str, BmcSim], tmp: Path, timeout: float) -> bool:
    victims = {h: cloud.create_servers(h, n, name_prefix=f"{h}-vm") for h, n in LAYOUT.items()}[
        FAILED
    ]
    print(
        f"cloud: {len(HOSTS)} hosts, {sum(LAYOUT.values())} servers ({len(victims)} on "
        f"{FAILED}); a BMC per host on 127.0.0.1"
    )
    events = EventFile(tmp / "events.jsonl")
    common, env = openstack_params(cloud, events.path), environment(tmp)
    with evacuation_service(common, env):
        print("NovaEvacuate's evacuation service runs (started as Pacemaker starts it)")
        print(f"Pacemaker fences {FAILED}: fence_nova_evacuate action=off port={FAILED}\n")
        run = Run(started=time.time())
        agent = start_fence(
            fence_params(common, bmcs[FAILED]), env, tmp / "fence_nova_evacuate.log"
        )
        follow(agent, events, Screen(cloud, victims, run.started), run, timeout)
    return summary(run, cloud, victims, bmcs[FAILED])


if __name__ == "__main__":
    sys.exit(main())
