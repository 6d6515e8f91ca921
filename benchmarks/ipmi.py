"""IPMI power-off confirmation: nova-ha's pyghmi client against the test bed's BMC simulator.

Each run is a fresh process (as a fence is): import, log in over lanplus, Get Chassis
Status (the BMC already reports off), log out. Two variants, alternated:

* `nova-ha`: nova_ha.lib.power as shipped (pyghmi's reply wait taken in slices, see
  power._bound_pyghmi_stalls);
* `pyghmi as is`: the same code with that bound switched off.

Reported, not asserted:

    python -m benchmarks.ipmi [--runs 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STALL = 0.5  # a confirmation slower than this waited for a retry timer

_CHILD = """
import sys, time
sys.path.insert(0, {root!r})
from nova_ha.lib import power
if {unbounded!r}:
    power._bound_pyghmi_stalls = lambda: None
bmc = power.Bmc(power.BmcConfig(address="127.0.0.1", port={port}, username={user!r},
                                password={password!r}, timeout=20))
with bmc:
    print(bmc.off_and_confirm())
"""


def _one(port: int, user: str, password: str, unbounded: bool) -> float:
    code = _CHILD.format(root=ROOT, port=port, user=user, password=password, unbounded=unbounded)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-500:])
    return float(done.stdout.split()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args(argv)
    sys.path.insert(0, ROOT)
    from testbed.bmc import BmcSim

    results: dict[str, list[float]] = {"nova-ha": [], "pyghmi as is": []}
    with_sim = BmcSim("bench", power_state="off")
    with_sim.start()
    try:
        for _ in range(args.runs):
            for name in results:
                results[name].append(
                    _one(with_sim.port, with_sim.username, with_sim.password, name != "nova-ha")
                )
    finally:
        with_sim.stop()
    print(f"off-and-confirm, BMC already off, {args.runs} fresh processes each (seconds)")
    print(f"{'variant':<16}{'median':>8}{'p90':>8}{'max':>8}  runs > {STALL} s")
    for name, values in results.items():
        ordered = sorted(values)
        p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
        stalled = sum(1 for v in values if v > STALL)
        print(
            f"{name:<16}{statistics.median(values):>8.3f}{p90:>8.3f}{max(values):>8.3f}"
            f"  {stalled}/{len(values)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
