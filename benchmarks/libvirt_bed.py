"""The libvirt bed's own figures: start, a tiny guest's boot to its first guest-ping answer,
kill -9 of QEMU to libvirt's event, a panic to its events, and memory.

Reported, not asserted (root; run alone: flock /tmp/nha-bench.lock python -m
benchmarks.libvirt_bed [--runs N]).
"""

from __future__ import annotations

import argparse
import statistics
import time

from testbed.libvirt_bed import faults
from testbed.libvirt_bed.bed import LibvirtBed, _rss_kb
from testbed.libvirt_bed.events import EventRecorder
from testbed.libvirt_bed.guest import GuestSpec, start_guest


def _median(samples: list[float]) -> str:
    return f"median {statistics.median(samples):.2f} s (min {min(samples):.2f}, n={len(samples)})"


def _kill_to_event(bed: LibvirtBed, conn, events: EventRecorder, runs: int) -> list[float]:
    dom = start_guest(conn, GuestSpec("bench-bare", kind="bare"))
    delays = []
    for _ in range(runs):
        if not dom.isActive():
            dom.create()
        time.sleep(0.5)
        killed_at = faults.kill_qemu(bed.qemu_pid("bench-bare"))
        delays.append(events.wait_for(dom.UUIDString(), "STOPPED", after=killed_at).t - killed_at)
    return delays


def _tiny_guest(bed: LibvirtBed, conn, events: EventRecorder, runs: int) -> None:
    boots, panics = [], []
    for i in range(runs):
        dom = start_guest(conn, GuestSpec(f"bench-tiny{i}", kind="tiny"))
        boots.append(faults.wait_agent(dom, 180))
        if i == 0:
            rss = _rss_kb(bed.qemu_pid(dom.name())) // 1024
            print(f"one tiny guest ({GuestSpec('x', kind='tiny').virt_type()}): QEMU RSS {rss} MB")
        panicked_at = faults.panic(dom)
        panics.append(events.wait_for(dom.UUIDString(), "CRASHED", after=panicked_at).t)
        panics[-1] -= panicked_at
        dom.undefine()
    print(f"tiny guest start -> first guest-ping answer: {_median(boots)}")
    print(f"panic (guest-exec answered) -> CRASHED/PANICKED: {_median(panics)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with LibvirtBed() as bed, EventRecorder(bed.uri) as events:
        print(f"bed start (holder, virtlogd, libvirtd answering): {bed.timings['start']:.2f} s")
        conn = bed.connect()
        print(f"daemons at rest: RSS kB {bed.rss_kb()}")
        delays = _kill_to_event(bed, conn, events, args.runs)
        print(f"kill -9 of QEMU -> STOPPED/FAILED: {_median(delays)}")
        _tiny_guest(bed, conn, events, args.runs)
        print(f"daemons after: RSS kB {bed.rss_kb()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
