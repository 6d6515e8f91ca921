"""nova-compute of one host of a test cloud (simulator or real Nova box) as a service that
NovaCompute's start_command / stop_command / status_command drive:

    cloud_service.py BASE_URL HOST start|stop|status

start starts the host's compute in the cloud (as a booting nova-compute would), stop crashes
it, status exits 0 while it runs, 3 otherwise. Uses the cloud's /_testbed control API.
"""

from __future__ import annotations

import json
import sys
import urllib.request


def _call(base: str, path: str, method: str = "GET") -> dict:
    request = urllib.request.Request(
        f"{base.rstrip('/')}/_testbed{path}",
        method=method,
        data=b"{}" if method == "POST" else None,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        body = response.read()
    return json.loads(body) if body else {}


def main(argv: list[str]) -> int:
    base, host, action = argv[1:4]
    if action == "start":
        _call(base, f"/hosts/{host}/start", "POST")
    elif action == "stop":
        _call(base, f"/hosts/{host}/crash", "POST")
    elif action == "status":
        return 0 if _call(base, "/hosts").get(host, {}).get("running") else 3
    else:
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
