"""Instance-level HA's figures on the real bed: libvirt + QEMU (testbed/libvirt_bed), the
Nova box with host1 on libvirt, the instance monitor process (as in
tests/test_instance_e2e.py, with the default heartbeat: every 10 s, 2 s, 3 missed).

* crash (kill -9 of QEMU) -> libvirt's event -> Nova asked to recover (the monitor's first
  stop or start request, as the box's request log stamps its arrival); goal <= 2 s after
  the event;
* crash -> ACTIVE again, in phases: event, stop accepted, start accepted (the monitor saw
  SHUTOFF just before), ACTIVE (the monitor's instance_recovered event);
* the monitor at rest beside 50 bare domains: RSS (goal <= 50 MB) and CPU over 60 s (~0);
* the heartbeat: one round (list the domains, one guest-ping each through libvirtd) for a
  few tiny guests, wall time and CPU of the monitor's side and of libvirtd's.

Reported, not asserted (root; run alone: flock /tmp/nha-bench.lock python -m
benchmarks.instance_ha [--runs N] [--domains N] [--rest S] [--guests N]).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import statistics
import tempfile
import time
from pathlib import Path

from testbed.instance_ha import MonitorProcess, box_params
from testbed.libvirt_bed import faults
from testbed.libvirt_bed.bed import LibvirtBed
from testbed.libvirt_bed.events import EventRecorder
from testbed.libvirt_bed.guest import GuestSpec, start_guest
from testbed.nova_box import NovaBox
from testbed.util import wait_for

HOST = "host1"


def _stats(samples: list[float]) -> str:
    return (
        f"median {statistics.median(samples):.2f} s "
        f"(min {min(samples):.2f}, max {max(samples):.2f}, n={len(samples)})"
    )


def _first_request(box: NovaBox, server: str, after: float) -> dict:
    """The first stop or start action of `server` that reached the box after `after`."""

    def found() -> dict | None:
        for request in box.request_log():
            path, action = request["path"], request.get("action")
            if server in path and action in ("os-stop", "os-start") and request["t"] > after:
                return request
        return None

    return wait_for(found, 60, what=f"a stop or start of {server}")


def _crash_phases(bed, box, monitor, events, conn, server: str) -> dict[str, float]:
    """kill -9 of the server's QEMU; seconds from the kill to each phase."""
    killed_at = faults.kill_qemu(bed.qemu_pid(conn.lookupByUUIDString(server).name()))
    event = events.wait_for(server, "STOPPED", after=killed_at, timeout=20)
    recovered = monitor.wait_event("instance_recovered", server, killed_at, 120)
    log = [r for r in box.request_log() if server in r["path"] and r["t"] > killed_at]
    accepted = {r["action"]: r["t"] for r in log if r.get("status") == 202}
    asked = _first_request(box, server, killed_at)["t"]
    phases = {"event": event.t, "nova asked": asked}
    if "os-stop" in accepted:  # Nova may have stopped it itself first
        phases["stop accepted"] = accepted["os-stop"]
    phases["start accepted"] = accepted["os-start"]
    phases["ACTIVE"] = recovered["epoch"]
    print(f"  {recovered['detail']}")
    return {name: t - killed_at for name, t in phases.items()}


def crash_figures(bed, box, monitor, events, conn, runs: int) -> None:
    # A server each: a 4th crash of one server within the hour is a crash loop (capped).
    servers = box.create_servers(HOST, runs, "bench")
    samples: list[dict[str, float]] = []
    for run, server in enumerate(servers):
        time.sleep(3)  # Nova's events of the last recovery delivered
        phases = _crash_phases(bed, box, monitor, events, conn, server)
        print(f"  run {run + 1}: " + ", ".join(f"{k} {v:.2f}s" for k, v in phases.items()))
        samples.append(phases)
    event_to_nova = [p["nova asked"] - p["event"] for p in samples]
    print(f"libvirt's event -> Nova asked to recover: {_stats(event_to_nova)}")
    for name in ("event", "stop accepted", "start accepted", "ACTIVE"):
        values = [p[name] for p in samples if name in p]
        if values:
            print(f"kill -9 -> {name}: {_stats(values)}")


def rest_figures(bed, conn, monitor, domains: int, rest: float) -> None:
    doms = [start_guest(conn, GuestSpec(f"instance-rest{i:03d}")) for i in range(domains)]
    time.sleep(10)  # the domains' start events handled, a heartbeat round or two done
    cpu0, rss0 = monitor.cpu_seconds(), monitor.rss_kb()
    time.sleep(rest)
    cpu = monitor.cpu_seconds() - cpu0
    print(
        f"monitor at rest beside {len(conn.listAllDomains(1))} running domains: "
        f"RSS {rss0 / 1024:.1f} MB -> {monitor.rss_kb() / 1024:.1f} MB, "
        f"CPU {cpu:.2f} s over {rest:.0f} s ({100 * cpu / rest:.2f} %)"
    )
    for dom in doms:
        dom.destroy()
        dom.undefine()


def _cpu_of(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def heartbeat_figures(bed, conn, guests: int) -> None:
    """One round as the monitor does it (nova_ha.instance.watch), in this process."""
    from nova_ha.instance.monitor import PING_WORKERS
    from nova_ha.instance.watch import LibvirtWatch

    doms = [start_guest(conn, GuestSpec(f"instance-ping{i}", kind="tiny")) for i in range(guests)]
    for dom in doms:
        faults.wait_agent(dom, 240)

    class Quiet:
        def guest_event(self, *args: object) -> None: ...
        def guest_started(self, *args: object) -> None: ...
        def guest_stopped(self, *args: object) -> None: ...
        def wake(self) -> None: ...

    watch = LibvirtWatch(bed.uri, Quiet(), readonly=False)
    watch.start_loop()
    assert watch.ensure()
    libvirtd = bed.procs["libvirtd"].pid
    walls, cpus, daemon_cpus = [], [], []
    with concurrent.futures.ThreadPoolExecutor(PING_WORKERS) as pool:
        for _ in range(10):
            began, cpu0, daemon0 = time.monotonic(), time.process_time(), _cpu_of(libvirtd)
            running = [g.uuid for g in watch.guests() if g.has_agent and g.running]
            answers = list(pool.map(lambda uuid: watch.ping(uuid, 2.0), running))
            walls.append(time.monotonic() - began)
            cpus.append(time.process_time() - cpu0)
            daemon_cpus.append(_cpu_of(libvirtd) - daemon0)
            assert all(answers) and len(answers) == guests
            time.sleep(1)

    def per_guest(samples: list[float]) -> str:
        return f"{1000 * statistics.mean(samples) / guests:.1f} ms"

    print(
        f"heartbeat round, {guests} guests answering: wall {_stats(walls)}; CPU per guest "
        f"per round: monitor {per_guest(cpus)}, libvirtd {per_guest(daemon_cpus)}"
    )
    for dom in doms:
        dom.destroy()
        dom.undefine()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--domains", type=int, default=50)
    parser.add_argument("--rest", type=float, default=60.0)
    parser.add_argument("--guests", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nha-bench-instance-"))
    with LibvirtBed() as bed, EventRecorder(bed.uri) as events:
        conn = bed.connect()
        with NovaBox(hosts=(HOST, "host2"), libvirt_hosts={HOST: bed.uri}) as box:
            params = {**box_params(box), "libvirt_uri": bed.uri, "evacuate": "all"}
            monitor = MonitorProcess(work / "monitor", HOST, params)
            print(f"monitor start -> connected and scanned: {monitor.start():.2f} s")
            try:
                crash_figures(bed, box, monitor, events, conn, args.runs)
                rest_figures(bed, conn, monitor, args.domains, args.rest)
            finally:
                monitor.stop()
        heartbeat_figures(bed, conn, args.guests)
    print(f"(monitor log: {monitor.log_file})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
