"""A notify_command that keeps nova-ha's events: ``event_sink.py FILE`` appends the event it
gets on stdin (one JSON object, see nova_ha/lib/notify.py) to FILE as one JSON line.

Run by nova-ha's notification child with a cleaned environment and cwd /, so it is a script
(no package import) using the standard library only.
"""

from __future__ import annotations

import fcntl
import json
import sys


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: event_sink.py FILE (the event as JSON on stdin)", file=sys.stderr)
        return 2
    event = json.loads(sys.stdin.read())
    line = json.dumps(event, sort_keys=True) + "\n"
    with open(argv[1], "a") as out:
        # Events of the fence action and of the evacuation service may come at once.
        fcntl.flock(out, fcntl.LOCK_EX)
        out.write(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
