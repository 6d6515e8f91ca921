"""`make demo`, run as the Makefile runs it (`python -m testbed.demo` from the repository's
root, a subprocess), and checked on what its user sees: the story told by nova-ha's own
events, in their order, and every server of the fenced host running elsewhere in Nova."""

from __future__ import annotations

import re
import subprocess
import sys
import time

from tests.helpers import ROOT, need_binary

# The demo's own bound stays below the test's: a stuck demo reports what it saw.
DEMO = [sys.executable, "-m", "testbed.demo", "--timeout", "40"]
SECONDS = r"\((\d+\.\d\d)s\)"


def _run_demo() -> tuple[subprocess.CompletedProcess[str], float]:
    need_binary("cibadmin")  # the records go to an offline CIB file
    started = time.monotonic()
    done = subprocess.run(DEMO, cwd=ROOT, capture_output=True, text=True, timeout=55)
    return done, time.monotonic() - started


def test_make_demo_tells_the_fence_and_the_evacuation_from_the_events() -> None:
    done, took = _run_demo()
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert took < 50, f"the demo took {took:.1f}s"

    # The summary names nova-ha's events in the order they happened, with their times.
    order = re.search(
        rf"^events: fenced {SECONDS} -> evacuation_started {SECONDS} -> "
        rf"evacuation_finished {SECONDS}$",
        out,
        re.MULTILINE,
    )
    assert order, out
    times = [float(t) for t in order.groups()]
    assert times == sorted(times), out

    # The timeline shows each event with its own fields, and the fence action's end.
    assert re.search(r"fenced\s+power-off confirmed by .*nova-compute forced down", out), out
    assert re.search(r"evacuation_finished\s+16 of 16 servers evacuated, 0 failed", out), out
    assert "(the fence action exits with code 0)" in out, out

    # Nova's view: every server of host1 is ACTIVE on another host.
    assert re.search(
        r"^Nova: all 16 servers of host1 run on other hosts \(host2: \d+, "
        r"host3: \d+\), all running [\d.]+s after the fence$",
        out,
        re.MULTILINE,
    ), out
    rows = re.findall(r"^host1-vm-\d+\s+host1\s+(\S+)\s+(\S+)\s*$", out, re.MULTILINE)
    assert len(rows) == 16 and all(
        to in ("host2", "host3") and status == "ACTIVE" for to, status in rows
    ), out
    assert re.search(
        r"^fence action: exit code 0 after [\d.]+s; host1 power: off$", out, re.MULTILINE
    ), out
