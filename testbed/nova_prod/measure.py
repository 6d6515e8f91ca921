"""Hand measurements of the production-shaped bed (README.md): boot time, memory, and one
evacuation of 20 servers off host1 of 4 hosts, requests sequential vs 16 in parallel.

``flock /tmp/nha-bench.lock env PYTHONPATH=$PWD .venv/bin/python -m testbed.nova_prod.measure``

Not a benchmark of nova-ha: raw evacuate requests at 2.94 (servers land ACTIVE), the
scheduler picks the target. "all running" is from the first request to the last server
ACTIVE off host1 (polled every 0.25 s).
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from concurrent import futures

from testbed.nova_prod import NovaProd
from testbed.nova_prod.client import ComputeApi
from testbed.observe import back_in_service

HOSTS = ("host1", "host2", "host3", "host4")


def evacuate_all(cloud: NovaProd, ids: list[str], parallel: int) -> dict:
    api = ComputeApi(cloud)
    cloud.crash("host1")
    assert api.force_down("host1") == 200
    t0 = time.monotonic()
    with futures.ThreadPoolExecutor(parallel) as pool:
        answers = list(pool.map(lambda i: api.evacuate(i, "2.94")[0], ids))
    accepted = time.monotonic() - t0
    landed: dict[str, dict] = {}
    while len(landed) < len(ids) and time.monotonic() - t0 < 600:
        for server_id in set(ids) - set(landed):
            server = api.landed(server_id, "host1")
            if server is not None and server["status"] == "ACTIVE":
                landed[server_id] = server
        time.sleep(0.25)
    spread = collections.Counter(s["OS-EXT-SRV-ATTR:host"] for s in landed.values())
    return {
        "parallel": parallel,
        "answers": dict(collections.Counter(answers)),
        "all_accepted_s": round(accepted, 2),
        "all_running_s": round(time.monotonic() - t0, 2),
        "running": len(landed),
        "spread": dict(sorted(spread.items())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--servers", type=int, default=20)
    parser.add_argument("--parallel", type=int, nargs="+", default=[1, 16])
    args = parser.parse_args()
    t0 = time.monotonic()
    with NovaProd(hosts=HOSTS) as cloud:
        figures = {
            "boot_s": round(time.monotonic() - t0, 1),
            "phases": cloud.phases,
            "rss_mb_idle": cloud.rss_kb() // 1024,
            "runs": [],
        }
        for parallel in args.parallel:
            ids = cloud.create_servers("host1", args.servers, name_prefix=f"p{parallel}")
            figures["runs"].append(evacuate_all(cloud, ids, parallel))
            figures["rss_mb_after"] = cloud.rss_kb() // 1024
            ComputeApi(cloud).delete_all(ids)
            back_in_service(cloud, "host1")
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
