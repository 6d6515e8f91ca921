"""`make demo`: fence host1 of a simulated cloud with the real fence_nova_evacuate.

A Nova+Keystone simulator with 3 hosts and 30 servers, a BMC simulator per host (its
power-off crashes the host's compute in the cloud), an offline CIB file for the record. The
agent is run exactly as Pacemaker's fencer runs it: parameters on stdin, no argv.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time

from testbed.bmc import BmcSim
from testbed.cib import write_cib
from testbed.nova_sim import NovaSim

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AGENT = os.path.join(ROOT, "agents", "fence", "fence_nova_evacuate")
HOSTS = ["host1", "host2", "host3"]
LAYOUT = {"host1": 16, "host2": 7, "host3": 7}
TTY = sys.stdout.isatty()
MILESTONES = (("power-off of", "power-off confirmed by the BMC"),
              ("forced down", "nova-compute forced down"),
              ("disabled", "nova-compute disabled"),
              ("evacuation of", "evacuation summary"))


def _bar(done: int, total: int, width: int = 32) -> str:
    filled = int(width * done / total) if total else width
    return "[" + "#" * filled + "." * (width - filled) + f"] {done}/{total}"


def main() -> int:
    start = time.monotonic()

    def stamp() -> str:
        return f"{time.monotonic() - start:6.2f}s"

    with tempfile.TemporaryDirectory() as tmp, NovaSim(hosts=HOSTS) as cloud:
        cloud.evacuate_delay = 1.5  # a rebuild takes a moment, as on a real cloud
        cloud.latency = 0.02
        bmcs = {h: BmcSim(h, on_power_off=lambda h=h: cloud.crash(h),
                          on_power_on=lambda h=h: cloud.start(h)) for h in HOSTS}
        try:
            for bmc in bmcs.values():
                bmc.start()
            servers = {h: cloud.create_servers(h, n, name_prefix=f"{h}-vm")
                       for h, n in LAYOUT.items()}
            victims = servers["host1"]
            print(f"cloud: {len(HOSTS)} hosts, {sum(LAYOUT.values())} servers "
                  f"({len(victims)} on host1); a BMC per host on 127.0.0.1")
            print("Pacemaker fences host1: fence_nova_evacuate action=off port=host1\n")
            params = {"action": "off", "port": "host1", "os_auth_url": cloud.auth_url,
                      "os_username": cloud.username, "os_password": cloud.password,
                      "os_project_name": cloud.project_name, "os_interface": "public",
                      "ip": "127.0.0.1", "ipport": bmcs["host1"].port,
                      "username": bmcs["host1"].username, "password": bmcs["host1"].password,
                      "evacuate_timeout": 60}
            env = dict(os.environ, CIB_file=write_cib(os.path.join(tmp, "cib.xml"), HOSTS))
            start = time.monotonic()
            agent = subprocess.Popen([sys.executable, AGENT], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=env)
            agent.stdin.write("".join(f"{k}={v}\n" for k, v in params.items()))
            agent.stdin.close()
            lines: list[str] = []
            reader = threading.Thread(target=lambda: lines.extend(agent.stderr), daemon=True)
            reader.start()
            shown, moved = 0, -1
            while True:
                finished = agent.poll() is not None
                while shown < len(lines):
                    for needle, label in MILESTONES:
                        if needle in lines[shown]:
                            print(("\r" if TTY else "") + f"{stamp()}  {label}" +
                                  (" " * 30 if TTY else ""))
                            if needle == "evacuation of":
                                print(f"          {lines[shown].split('INFO: ')[-1].strip()}")
                    shown += 1
                now_moved = sum(1 for i in victims
                                if cloud.server(i)["host"] != "host1"
                                and cloud.server(i)["status"] == "ACTIVE")
                if now_moved != moved:
                    moved = now_moved
                    text = f"{stamp()}  servers running elsewhere {_bar(moved, len(victims))}"
                    print(("\r" + text) if TTY else text, end="" if TTY else "\n", flush=True)
                if finished and shown >= len(lines):
                    reader.join(timeout=2)
                    if shown >= len(lines):
                        break
                time.sleep(0.1)
            total = time.monotonic() - start
            print("\n")
            print(f"{'server':<16} {'from':<7} {'to':<7} {'status':<8}")
            for server_id in victims:
                server = cloud.server(server_id)
                print(f"{server['name']:<16} {'host1':<7} "
                      f"{server['host']:<7} {server['status']:<8}")
            print(f"\nexit code {agent.returncode}; host1 power: {bmcs['host1'].power_state}; "
                  f"{total:.1f}s from the fence request to the agent's exit")
            return agent.returncode
        finally:
            for bmc in bmcs.values():
                bmc.stop()


if __name__ == "__main__":
    sys.exit(main())
