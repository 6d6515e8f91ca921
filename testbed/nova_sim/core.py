"""The simulator's core: its state, the HTTP server, the engine thread that runs background work,
and the routing of each request to Keystone, Nova or the control API."""

from __future__ import annotations

import heapq
import itertools
import json
import random
import socket
import threading
import uuid
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

from .model import (
    _FAULT_NAMES,
    _KS_TITLES,
    _MAX_LIMIT,
    _UNEXPECTED_API_ERROR,
    NOVA_MAX_VERSION,
    NOVA_MIN_VERSION,
    _Host,
    _HTTPError,
    _now,
    _parse_version,
    _Request,
    _Response,
    _Rule,
    _Service,
    _Token,
    _vstr,
)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], sim: SimCore) -> None:
        self.sim = sim
        super().__init__(addr, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "NovaSim/1.0"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        return

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _dispatch(self) -> None:
        self.server.sim._handle(self)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _dispatch


class SimCore:
    """The simulated world's state and the request routing (the API mixins add the handlers)."""

    username = "admin"
    password = "secret"  # noqa: S105 - a test credential
    project_name = "admin"
    user_domain_name = "Default"
    project_domain_name = "Default"
    app_cred_id = "appcred-id"
    app_cred_secret = "appcred-secret"  # noqa: S105 - a test credential
    app_cred_name = "nova-ha"
    region = "RegionOne"
    controller_host = "controller"

    def __init__(
        self,
        hosts: Sequence[str] = ("host1", "host2", "host3"),
        bind: str | Sequence[str] = "127.0.0.1",
        port: int = 0,
        max_version: str = NOVA_MAX_VERSION,
        min_version: str = NOVA_MIN_VERSION,
        *,
        service_down_time: float = 3.0,
        report_interval: float = 1.0,
        evacuate_delay: float | Callable[[dict[str, Any]], float] = 0.3,
        host_capacity: int | dict[str, int] | None = 1000,
        seed: int | None = None,
    ) -> None:
        max_v = _parse_version(max_version)
        min_v = _parse_version(min_version)
        if max_v is None or min_v is None or min_v > max_v:
            raise ValueError("bad microversion range")
        self.max_version: tuple[int, int] = max_v
        self.min_version: tuple[int, int] = min_v
        self._binds = [bind] if isinstance(bind, str) else list(bind)
        if not self._binds:
            raise ValueError("bind needs at least one address")
        self._port = port
        self.port = port

        # tunables
        self.latency: float = 0.0
        self.service_down_time = service_down_time
        self.report_interval = report_interval
        self.evacuate_delay: float | Callable[[dict[str, Any]], float] = evacuate_delay
        self.evacuate_finish_window: float = 0.0
        self.build_delay: float = 0.05
        self.action_delay: float = 0.05
        self.host_capacity: int | dict[str, int] | None = host_capacity
        self.shared_storage: bool = False
        self.token_ttl: float = 3600.0

        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._stop_event = threading.Event()
        self._rand = random.Random(seed)
        self._events: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._engine: threading.Thread | None = None
        self._servers_http: list[_Server] = []
        self._threads: list[threading.Thread] = []
        self._started = False

        # identity
        self.user_id = uuid.uuid4().hex
        self.project_id = uuid.uuid4().hex
        self._role_ids = {name: uuid.uuid4().hex for name in ("admin", "member", "reader")}
        self._catalog_ids = {name: uuid.uuid4().hex for name in ("compute", "identity")}
        self._endpoint_ids = {
            (svc, iface): uuid.uuid4().hex
            for svc in ("compute", "identity")
            for iface in ("public", "internal", "admin")
        }
        self._tokens: dict[str, _Token] = {}

        # world
        now = _now()
        self._hosts: dict[str, _Host] = {}
        self._services: list[_Service] = []
        svc_id = itertools.count(1)
        for binary in ("nova-conductor", "nova-scheduler"):
            self._services.append(
                _Service(
                    next(svc_id), str(uuid.uuid4()), binary, self.controller_host, "internal", now
                )
            )
        for name in hosts:
            self._hosts[name] = _Host(name, boot=now)
            self._services.append(
                _Service(next(svc_id), str(uuid.uuid4()), "nova-compute", name, "nova", now)
            )
        self._hypervisor_ids = {
            name: (i + 1, str(uuid.uuid4())) for i, name in enumerate(self._hosts)
        }
        self._servers: dict[str, dict[str, Any]] = {}
        self._server_seq = itertools.count(1)
        self._name_counters: dict[str, int] = {}
        self._alloc: dict[str, set[str]] = {name: set() for name in self._hosts}
        self._migrations: list[dict[str, Any]] = []
        self._mig_seq = itertools.count(1)
        self._flavors: dict[str, dict[str, Any]] = {}
        self._flavor_seq = itertools.count(1)
        self._images: dict[str, dict[str, Any]] = {}
        self.default_flavor_id = self._add_flavor("m1.small", {})
        self.default_image_id = self._add_image("cirros", {})

        # faults
        self._api_down = False
        self._fail_rules: list[_Rule] = []
        self._timeout_rules: list[_Rule] = []
        self._conflict_evacuates = 0
        self._evac_fail_ids: set[str] = set()
        self._evac_fail_pred: Callable[[dict[str, Any]], bool] | None = None
        self._evac_fail_prob: float = 0.0
        self._log: list[dict[str, Any]] = []
        self.compute_starts: list[tuple[float, str, int]] = []  # (time, host, racing evacs)
        self.max_limit = _MAX_LIMIT  # nova.conf [api] max_limit: the largest page
        self._actions: dict[str, list[dict[str, Any]]] = {}  # server -> instance actions
        self._start_knobs()  # per-compute work and the scheduler (workload.py)

    @property
    def address(self) -> str:
        return self._binds[0]

    @property
    def base_url(self) -> str:
        return f"http://{self._fmt_host(self.address)}:{self.port}"

    @property
    def auth_url(self) -> str:
        return f"{self.base_url}/identity/v3"

    @property
    def compute_url(self) -> str:
        return f"{self.base_url}/compute/v2.1"

    @property
    def testbed_url(self) -> str:
        return f"{self.base_url}/_testbed"

    def urls_for(self, address: str) -> dict[str, str]:
        """auth/compute URLs through another bound address (e.g. a veth address)."""
        base = f"http://{self._fmt_host(address)}:{self.port}"
        return {"auth_url": f"{base}/identity/v3", "compute_url": f"{base}/compute/v2.1"}

    @staticmethod
    def _fmt_host(address: str) -> str:
        return f"[{address}]" if ":" in address else address

    def start(self, host: str | None = None) -> Self:
        """Without ``host``: start serving HTTP. With ``host``: start that compute.

        Starting a compute (nova-compute's init_host): its heartbeats resume; every
        evacuation migration from it in ``accepted``/``pre-migrating``/``done`` becomes
        ``completed`` and the local copies of those servers are destroyed; work that
        was waiting for this host runs. ``forced_down`` is left as it is (nova does
        not clear it on start).
        """
        if host is not None:
            self._start_compute(host)
            return self
        if self._started:
            return self
        port = self._port
        for addr in self._binds:
            srv = _Server((addr, port), self)
            port = srv.server_address[1]
            self._servers_http.append(srv)
        self.port = port
        for srv in self._servers_http:
            thread = threading.Thread(
                target=srv.serve_forever,
                kwargs={"poll_interval": 0.1},
                name=f"novasim-http-{srv.server_address[0]}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
        self._engine = threading.Thread(
            target=self._engine_loop, name="novasim-engine", daemon=True
        )
        self._engine.start()
        self._started = True
        return self

    def stop(self) -> None:
        """Stop serving; hanging requests are released."""
        self._stop_event.set()
        with self._cond:
            self._cond.notify_all()
        for srv in self._servers_http:
            srv.shutdown()
            srv.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        if self._engine is not None:
            self._engine.join(timeout=5)
        self._servers_http.clear()
        self._threads.clear()
        self._started = False

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _schedule_at(self, when: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` (under the lock) at wall time ``when``."""
        with self._cond:
            heapq.heappush(self._events, (when, next(self._seq), fn))
            self._cond.notify_all()

    def _engine_loop(self) -> None:
        with self._cond:
            while not self._stop_event.is_set():
                if not self._events:
                    self._cond.wait(0.5)
                    continue
                when, _, fn = self._events[0]
                delay = when - _now()
                if delay > 0:
                    self._cond.wait(min(delay, 0.5))
                    continue
                heapq.heappop(self._events)
                try:
                    fn()
                except Exception:  # pragma: no cover - a bug in a step must not kill us
                    import traceback

                    traceback.print_exc()

    def _on_compute(self, host: str, when: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` on compute ``host`` at ``when``; wait for the host if it is down."""

        def run() -> None:
            h = self._hosts.get(host)
            if h is None:
                return
            if not h.running:
                h.pending.append(fn)
                return
            fn()

        self._schedule_at(when, run)

    def _handle(self, handler: _Handler) -> None:
        received = _now()
        split = urlsplit(handler.path)
        path = split.path
        method = handler.command
        try:
            length = int(handler.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        body = handler.rfile.read(length) if length > 0 else b""
        host_header = handler.headers.get("Host") or (
            f"{self._fmt_host(handler.server.server_address[0])}:{self.port}"
        )
        req = _Request(
            method,
            path,
            split.query,
            parse_qs(split.query, keep_blank_values=True),
            handler.headers,
            body,
            f"http://{host_header}",
        )
        if path.startswith("/_testbed"):
            try:
                resp = self._testbed(req)
            except _HTTPError as exc:
                resp = self._json_response(exc.status, {"error": exc.message})
            except Exception as exc:  # pragma: no cover - shown to the test
                resp = self._json_response(500, {"error": repr(exc)})
            self._send(handler, method, resp)
            return

        entry: dict[str, Any] = {
            "t": received,
            "method": method,
            "path": path,
            "query": split.query,
            "action": None,
            "status": None,
            "microversion": None,
        }
        if method == "POST" and path.endswith("/action") and body:
            try:
                parsed = json.loads(body)
                if isinstance(parsed, dict) and parsed:
                    entry["action"] = next(iter(parsed))
            except ValueError:
                pass
        req.entry = entry
        with self._lock:
            self._log.append(entry)
            latency = self.latency
            hang = self._take_rule(self._timeout_rules, method, path)
            fail = self._take_rule(self._fail_rules, method, path)
        if latency > 0:
            self._stop_event.wait(latency)
        if hang is not None:
            self._stop_event.wait(hang.seconds)
            if not hang.respond:
                handler.close_connection = True
                return
        if fail is not None and not fail.apply:
            resp = self._injected_failure(req, fail)
        else:
            resp = self._route(req)
            if fail is not None:
                resp = self._injected_failure(req, fail)
        entry["status"] = resp[0]
        self._send(handler, method, resp)

    def _send(self, handler: _Handler, method: str, resp: _Response) -> None:
        status, headers, body = resp
        try:
            handler.send_response(status)
            for key, value in headers:
                handler.send_header(key, value)
            handler.send_header("Content-Length", str(len(body)))
            # one write for head and body (no Nagle / delayed-ACK stalls)
            handler._headers_buffer.append(b"\r\n")
            if body and method != "HEAD":
                handler._headers_buffer.append(body)
            handler.flush_headers()
            handler.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError):
            handler.close_connection = True

    def _route(self, req: _Request) -> _Response:
        try:
            if req.path == "/identity" or req.path.startswith("/identity/"):
                return self._identity(req)
            if req.path == "/compute" or req.path.startswith("/compute/"):
                return self._compute(req)
            return self._json_response(
                404, {"error": {"code": 404, "message": "Not Found", "title": "Not Found"}}
            )
        except _HTTPError as exc:
            if req.path.startswith("/identity"):
                return self._ks_error(exc.status, exc.message, exc.headers)
            return self._nova_fault(exc.status, exc.message, req, exc.headers)
        except Exception:  # pragma: no cover - a simulator bug shows as nova's 500
            import traceback

            traceback.print_exc()
            return self._nova_fault(500, _UNEXPECTED_API_ERROR, req)

    @staticmethod
    def _json_response(
        status: int, payload: Any, headers: list[tuple[str, str]] | None = None
    ) -> _Response:
        body = b"" if payload is None else json.dumps(payload).encode()
        hdrs = [("Content-Type", "application/json")]
        hdrs.extend(headers or [])
        return status, hdrs, body

    @staticmethod
    def _request_id_headers() -> list[tuple[str, str]]:
        rid = f"req-{uuid.uuid4()}"
        return [("x-openstack-request-id", rid), ("x-compute-request-id", rid)]

    def _version_headers(self, version: tuple[int, int]) -> list[tuple[str, str]]:
        vs = _vstr(version)
        return [
            ("OpenStack-API-Version", f"compute {vs}"),
            ("X-OpenStack-Nova-API-Version", vs),
            ("Vary", "OpenStack-API-Version"),
            ("Vary", "X-OpenStack-Nova-API-Version"),
        ]

    def _nova_fault(
        self,
        status: int,
        message: str,
        req: _Request | None = None,
        headers: list[tuple[str, str]] | None = None,
        with_version: bool = True,
    ) -> _Response:
        name = _FAULT_NAMES.get(status, "computeFault")
        hdrs = list(headers or []) + self._request_id_headers()
        if (
            req is not None
            and with_version
            and req.entry is not None
            and req.entry.get("microversion")
        ):
            hdrs += self._version_headers(req.version)
        return self._json_response(status, {name: {"code": status, "message": message}}, hdrs)

    def _ks_error(
        self, status: int, message: str, headers: list[tuple[str, str]] | None = None
    ) -> _Response:
        payload = {
            "error": {"code": status, "message": message, "title": _KS_TITLES.get(status, "Error")}
        }
        hdrs = list(headers or []) + [
            ("Vary", "X-Auth-Token"),
            ("x-openstack-request-id", f"req-{uuid.uuid4()}"),
        ]
        return self._json_response(status, payload, hdrs)
