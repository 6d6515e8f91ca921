"""A Nova deployed as in production, for nova-ha's tests and benchmarks: the control process.

Run with the Nova venv's interpreter from the repository root::

    .venv-nova/bin/python -m testbed.nova_prod.bed --hosts host1,host2,host3 --state-dir DIR

It starts, as separate processes, each stopped by PID at the end (or on failure):

* MariaDB and RabbitMQ from Debian (backends.py), on 127.0.0.1, free ports, files in DIR;
* placement and nova-api, each under gunicorn with ``--workers`` processes; nova-api
  checks tokens with keystonemiddleware's ``authtoken`` against the Keystone below;
* nova-conductor and nova-scheduler (``--service-workers`` each), one nova-compute per
  host (fake driver, per-host delays: fakes.py);

after setting up the databases as an operator would: ``nova-manage api_db sync``,
``cell_v2 map_cell0``, ``cell_v2 create_cell --name cell1``, ``db sync``, ``placement-manage
db sync``, and ``cell_v2 discover_hosts`` once the computes have registered.

This process serves, on one port: the box's minimal Keystone v3 (``/identity``), its
read-only Glance v2 (``/image``) and a control API (``/_testbed``, see README.md). It
prints one JSON line when ready and stops everything on SIGTERM or EOF on stdin.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socketserver
import subprocess
import sys
import threading
import time
from concurrent import futures
from wsgiref import simple_server

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO_ROOT)

from testbed.nova_box import server as box_server  # noqa: E402
from testbed.nova_prod import backends, confs  # noqa: E402
from testbed.nova_prod.control import Control, NovaClient  # noqa: E402
from testbed.nova_prod.procs import Child, free_port, port_open, wait_for  # noqa: E402

BIN = os.path.dirname(sys.executable)
DATABASES = ["nova_api", "nova_cell0", "nova", "placement"]


class _Quiet(simple_server.WSGIRequestHandler):
    def log_message(self, fmt, *args):
        pass


class _Server(socketserver.ThreadingMixIn, simple_server.WSGIServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


class Bed:
    """Every process of the bed, and what Keystone and the control API need to know."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.hosts = list(args.hosts)
        self.state_dir = os.path.abspath(args.state_dir)
        self.mariadb = backends.MariaDB(self.state_dir)
        self.rabbit = backends.RabbitMQ(self.state_dir)
        self.api_port = free_port()
        self.placement_port = free_port()
        self.keystone = box_server.Keystone(self)
        self.glance = None
        self.glance_api = None
        self.services: dict[str, Child] = {}  # name -> running process
        self.phases: dict[str, float] = {}
        self.lock = threading.Lock()
        self.http: _Server | None = None
        self.nova: NovaClient | None = None

    # -- what Keystone's catalog and the clients see ------------------------
    @property
    def public_base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def port(self) -> int:
        assert self.http is not None
        return self.http.server_address[1]

    @property
    def compute_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}/v2.1"

    @property
    def auth_url(self) -> str:
        return self.public_base + "/identity/v3"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "VIRTUAL_ENV")}
        env.update(PYTHONPATH=REPO_ROOT, OS_NOVA_DISABLE_EVENTLET_PATCHING="1", HOME=self.state_dir)
        env.update(extra)
        return env

    # -- boot ---------------------------------------------------------------
    def boot(self) -> None:
        t0 = time.monotonic()
        self._listen()
        self.rabbit.start()  # boots while the databases are set up
        self.mariadb.start(DATABASES)
        self._phase("mariadb", t0)
        self.conf = confs.write_all(self)
        self._sync_databases()
        self._phase("db_sync", t0)
        self.rabbit.wait()
        self._phase("rabbitmq", t0)
        self._start_services()
        self._phase("services", t0)
        self.nova = NovaClient(self)
        self._wait_computes()
        self._phase("computes", t0)
        self.nova.make_flavors()
        self._phase("ready", t0)

    def _phase(self, name: str, t0: float) -> None:
        self.phases[name] = round(time.monotonic() - t0, 2)

    def _listen(self) -> None:
        self.http = _Server(("127.0.0.1", self.args.port), _Quiet)
        self.control = Control(self)
        self.http.set_app(self.dispatch)
        threading.Thread(target=self.http.serve_forever, daemon=True, name="http").start()

    def dispatch(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        for prefix, app in (
            ("/identity", self.keystone),
            ("/image", self.glance_api),
            ("/_testbed", self.control),
        ):
            if app is not None and (path == prefix or path.startswith(prefix + "/")):
                environ["SCRIPT_NAME"] = prefix
                environ["PATH_INFO"] = path[len(prefix) :]
                return app(environ, start_response)
        return box_server._json_response(start_response, 404, {"error": f"not found: {path}"})

    def manage(self, *args: str, placement: bool = False) -> str:
        """One nova-manage (or placement-manage) command, as an operator runs it."""
        if placement:
            cmd = [os.path.join(BIN, "placement-manage"), "--config-file", self.conf["placement"]]
        else:
            cmd = [os.path.join(BIN, "nova-manage"), "--config-file", self.conf["nova"]]
        done = subprocess.run(
            cmd + list(args), capture_output=True, text=True, timeout=300, env=self.env()
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:1] + list(args))}: {done.stderr[-3000:]}")
        return done.stdout

    def _sync_databases(self) -> None:
        with futures.ThreadPoolExecutor(2) as pool:
            placement = pool.submit(self.manage, "db", "sync", placement=True)
            self.manage("api_db", "sync")
            self.manage(
                "cell_v2", "map_cell0", "--database_connection", self.mariadb.url("nova_cell0")
            )
            self.manage("cell_v2", "create_cell", "--name", "cell1")
            self.manage("db", "sync")
            placement.result()

    def _start_services(self) -> None:
        from testbed.nova_prod import fakes

        etc = os.path.join(self.state_dir, "etc")
        self.spawn(
            "placement",
            confs.placement_command(self),
            OS_PLACEMENT_CONFIG_DIR=os.path.join(etc, "placement"),
        )
        self.spawn("nova-conductor", confs.service_command(self, "nova-conductor"))
        self.spawn("nova-scheduler", confs.service_command(self, "nova-scheduler"))
        for host in self.hosts:
            self.start_compute(host, wait=False)
        self.spawn(
            "nova-api",
            confs.api_command(self),
            OS_NOVA_CONFIG_DIR=os.path.join(etc, "nova"),
            OS_NOVA_CONFIG_FILES="api-paste.ini;nova.conf;nova-api.conf",
        )
        # The Glance this process serves: the same fake images as every Nova process.
        self.glance = fakes.install_fakes()
        self.glance_api = box_server.GlanceV2(self)
        for name, port in (("placement", self.placement_port), ("nova-api", self.api_port)):
            wait_for(name, lambda port=port: port_open(port), 180, self.services[name])

    def spawn(self, name: str, cmd: list[str], **env: str) -> Child:
        child = Child(name, cmd, self.state_dir, self.env(**env))
        with self.lock:
            self.services[name] = child
        return child

    def _wait_computes(self) -> None:
        """Every compute up, then mapped to cell1 as an operator would (discover_hosts)."""
        assert self.nova is not None
        for host in self.hosts:
            self.nova.wait_compute_up(host, since=0.0)

        def mapped() -> bool:
            self.manage("cell_v2", "discover_hosts")
            return self.nova.hypervisor_count() >= len(self.hosts)

        wait_for("compute nodes mapped", mapped, 180)

    # -- hosts ----------------------------------------------------------------
    def start_compute(self, host: str, wait: bool = True) -> None:
        """A fresh nova-compute for ``host`` (nothing if one runs)."""
        name = f"nova-compute-{host}"
        with self.lock:
            child = self.services.get(name)
            if child is not None and child.running:
                return
        started = time.time()
        self.spawn(name, confs.compute_command(self, host))
        if wait:
            assert self.nova is not None
            self.nova.wait_compute_up(host, since=started)

    def crash(self, host: str) -> None:
        """kill -9 of the host's nova-compute: no goodbye to anyone (power loss)."""
        with self.lock:
            child = self.services.pop(f"nova-compute-{host}", None)
        if child is not None:
            child.kill()

    def hosts_state(self) -> dict:
        with self.lock:
            children = {h: self.services.get(f"nova-compute-{h}") for h in self.hosts}
        return {
            host: {"running": bool(c and c.running), "pid": c.pid if c and c.running else None}
            for host, c in children.items()
        }

    def info(self) -> dict:
        with self.lock:
            pids = {name: c.pid for name, c in self.services.items()}
        for name, child in (
            ("mariadb", self.mariadb.child),
            ("rabbitmq", self.rabbit.child),
            ("epmd", self.rabbit.epmd),
        ):
            if child is not None:
                pids[name] = child.pid
        return {
            "port": self.port,
            "auth_url": self.auth_url,
            "compute_url": self.compute_url,
            "pid": os.getpid(),
            "pids": pids,
            "phases": self.phases,
            "boot_seconds": self.phases.get("ready"),
            "mariadb_port": self.mariadb.port,
            "rabbitmq_port": self.rabbit.port,
            "placement_url": f"http://127.0.0.1:{self.placement_port}",
            "state_dir": self.state_dir,
        }

    # -- shutdown -------------------------------------------------------------
    def shutdown(self) -> None:
        """Stop every process by PID: Nova first, then the broker and the database."""
        with self.lock:
            children = list(self.services.values())
            self.services.clear()
        with futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda c: c.stop(timeout=10), reversed(children)))
        self.rabbit.stop()
        self.mariadb.stop()
        if self.http is not None:
            self.http.shutdown()
            self.http.server_close()


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", default="host1,host2,host3")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--port", type=int, default=0, help="control port (0: a free one)")
    parser.add_argument("--api-workers", type=int, default=2)
    parser.add_argument("--placement-workers", type=int, default=2)
    parser.add_argument("--service-workers", type=int, default=2)
    parser.add_argument("--report-interval", type=int, default=1)
    parser.add_argument("--service-down-time", type=int, default=6)
    parser.add_argument("--debug", action="store_true")
    parser.add_argument("--exit-on-stdin-eof", action="store_true")
    args = parser.parse_args(argv)
    args.hosts = [h for h in args.hosts.split(",") if h]
    return args


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    stop = threading.Event()
    booted = threading.Event()

    def on_signal(signum, frame) -> None:
        stop.set()
        if not booted.is_set():
            raise KeyboardInterrupt  # abort the boot: everything started so far is stopped

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.exit_on_stdin_eof:
        threading.Thread(target=_watch_stdin, daemon=True, name="stdin").start()
    bed = Bed(args)
    try:
        bed.boot()
    except BaseException as exc:
        print(f"nova prod bed: boot failed: {exc!r}", file=sys.stderr, flush=True)
        bed.shutdown()
        sys.exit(1)
    booted.set()
    print(json.dumps(bed.info()), flush=True)
    stop.wait()
    bed.shutdown()


def _watch_stdin() -> None:
    """EOF on stdin: the parent died; SIGTERM ourselves (handled in the main thread)."""
    while sys.stdin.buffer.read(4096):
        pass
    os.kill(os.getpid(), signal.SIGTERM)


if __name__ == "__main__":
    main()
