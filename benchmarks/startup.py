"""Agent start-up: wall time of `metadata` for our agents beside Debian's fence_compute.

Pacemaker runs agents many times a minute; metadata is the cheapest action and shows the
import cost. Reported, not asserted: python -m benchmarks.startup
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = 15


def _time(cmd: list[str], stdin: str | None) -> float:
    samples = []
    for _ in range(RUNS):
        start = time.perf_counter()
        subprocess.run(cmd, input=stdin, text=True, capture_output=True, check=False)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> int:
    rows = []
    ours = [
        (
            "fence_nova_evacuate metadata",
            [sys.executable, os.path.join(ROOT, "agents/fence/fence_nova_evacuate")],
            "action=metadata\n",
        ),
        (
            "NovaCompute meta-data",
            [sys.executable, os.path.join(ROOT, "agents/ocf/NovaCompute"), "meta-data"],
            None,
        ),
    ]
    for name, cmd, stdin in ours:
        rows.append((name, _time(cmd, stdin)))
    anchor = None
    if shutil.which("fence_compute"):
        anchor = _time(["/usr/sbin/fence_compute"], "action=metadata\n")
        rows.append(("/usr/sbin/fence_compute metadata (anchor)", anchor))
    print(f"{'agent action':<45} {'median wall s':>14} {'vs fence_compute':>17}")
    for name, seconds in rows:
        ratio = f"{anchor / seconds:.1f}x faster" if anchor and "anchor" not in name else ""
        print(f"{name:<45} {seconds:>14.3f} {ratio:>17}")
    print(f"(median of {RUNS} runs; goal: our metadata <= 0.100 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
