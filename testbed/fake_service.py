"""A stand-in for nova-compute's service manager in OCF tests: start / stop / status of a
long-running process tracked by a pid file (what start_command & co. drive)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time


def _pid(pidfile: str) -> int | None:
    try:
        pid = int(open(pidfile).read().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def main(argv: list[str]) -> int:
    action, pidfile = argv[1], argv[2]
    if action == "start":
        if _pid(pidfile):
            return 0
        proc = subprocess.Popen(
            ["sleep", "86400"],
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        with open(pidfile, "w") as out:
            out.write(str(proc.pid))
        return 0
    if action == "stop":
        pid = _pid(pidfile)
        if pid:
            force = os.environ.get("NOVA_HA_STOP_FORCE") == "1"
            os.kill(pid, signal.SIGKILL if force else signal.SIGTERM)
            for _ in range(50):
                if not _pid(pidfile):
                    break
                time.sleep(0.1)
        return 0
    if action == "status":
        return 0 if _pid(pidfile) else 3
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
