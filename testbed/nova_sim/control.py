"""The test-control API: the world driven from Python (crash, start, create servers, read the
log), and the same over HTTP under ``/_testbed``."""

from __future__ import annotations

import copy
import time
from typing import Any

from .model import ACTIVE, ERROR, RUNNING, SHUTDOWN, STOPPED, _HTTPError, _now, _Request, _Response


class Control:
    """Python and ``/_testbed`` control of the simulated world."""

    def crash(self, host: str) -> None:
        """The compute host dies: heartbeats stop (guests keep their DB state)."""
        with self._lock:
            h = self._host(host)
            if not h.running:
                return
            h.last_heartbeat_frozen = self._last_heartbeat(h, _now())
            h.running = False

    def _start_compute(self, host: str) -> None:
        with self._lock:
            h = self._host(host)
            now = _now()
            h.running = True
            h.boot = now
            h.last_heartbeat_frozen = None
            # For tests of the rejoin guard: how many evacuations from this host were still
            # under way when its compute started (nova-compute would destroy their sources).
            racing = sum(
                1
                for m in self._migrations
                if m["source_compute"] == host
                and m["migration_type"] == "evacuation"
                and m["status"] in ("accepted", "pre-migrating")
            )
            self.compute_starts.append((time.time(), host, racing))
            # ComputeManager._destroy_evacuated_instances
            for mig in self._migrations:
                if (
                    mig["source_compute"] == host
                    and mig["migration_type"] == "evacuation"
                    and mig["status"] in ("accepted", "pre-migrating", "done")
                ):
                    h.guests.discard(mig["instance_uuid"])
                    server = self._servers.get(mig["instance_uuid"])
                    if server is None:
                        continue
                    # allocations against the source node are removed
                    if server["host"] != host:
                        self._alloc.get(host, set()).discard(server["id"])
                    mig["status"] = "completed"
                    mig["updated_at"] = now
            pending, h.pending = h.pending, []
            for fn in pending:
                self._schedule_at(now, fn)

    def create_servers(
        self,
        host: str,
        count: int,
        name_prefix: str = "vm",
        flavor_extra_specs: dict[str, str] | None = None,
        metadata: dict[str, str] | None = None,
        image_properties: dict[str, Any] | None = None,
        status: str = "ACTIVE",
        project_id: str | None = None,
    ) -> list[str]:
        """Create ``count`` servers already running on ``host``; returns their ids.

        ``status`` is ACTIVE, SHUTOFF or ERROR. ``project_id`` defaults to the admin
        project (use another to exercise ``all_tenants``). Raises ValueError when
        the host is unknown or would exceed ``host_capacity``.
        """
        vm_state, power = {
            "ACTIVE": (ACTIVE, RUNNING),
            "SHUTOFF": (STOPPED, SHUTDOWN),
            "ERROR": (ERROR, RUNNING),
        }[status.upper()]
        with self._lock:
            self._host(host)
            cap = self._capacity(host)
            if cap is not None and len(self._alloc[host]) + count > cap:
                raise ValueError(f"{host} has room for {cap - len(self._alloc[host])} servers")
            flavor_id = self._flavor_for(flavor_extra_specs or {})
            image_id = (
                self._add_image("image", dict(image_properties))
                if image_properties
                else self.default_image_id
            )
            ids = []
            for _ in range(count):
                num = self._name_counters.get(name_prefix, 0) + 1
                self._name_counters[name_prefix] = num
                server = self._new_server(
                    f"{name_prefix}-{num}",
                    flavor_id,
                    image_id,
                    dict(metadata or {}),
                    project_id or self.project_id,
                    pinned_az=None,
                )
                server.update(
                    host=host,
                    node=host,
                    vm_state=vm_state,
                    task_state=None,
                    power_state=power,
                    launched_at=server["created_at"],
                )
                self._alloc[host].add(server["id"])
                self._hosts[host].guests.add(server["id"])
                ids.append(server["id"])
            return ids

    def server(self, server_id: str) -> dict[str, Any]:
        """A copy of the internal record of a server, plus its API ``status``."""
        with self._lock:
            server = copy.deepcopy(self._servers[server_id])
        server["status"] = self._status(server)
        return server

    def set_server_state(
        self, server_id: str, vm_state: str | None = None, task_state: str | None = None
    ) -> None:
        """Put a server in a state the API cannot (a task stuck on a host that died)."""
        with self._lock:
            server = self._servers[server_id]
            self._touch(server, vm_state=vm_state or server["vm_state"], task_state=task_state)

    def servers(self) -> list[dict[str, Any]]:
        with self._lock:
            ids = [s["id"] for s in self._servers.values() if not s["deleted"]]
        return [self.server(i) for i in ids]

    def migrations(self) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._migrations)

    def hosts(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            out = {}
            for name, h in self._hosts.items():
                svc = self._compute_service(name)
                out[name] = {
                    "running": h.running,
                    "state": "up" if self._service_is_up(svc) else "down",
                    "forced_down": svc.forced_down,
                    "disabled": svc.disabled,
                    "guests": sorted(h.guests),
                    "servers": sorted(
                        s["id"]
                        for s in self._servers.values()
                        if s["host"] == name and not s["deleted"]
                    ),
                }
            return out

    def request_log(self) -> list[dict[str, Any]]:
        """Every identity/compute request: t, method, path, action, status, microversion."""
        with self._lock:
            return [dict(e) for e in self._log]

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()

    def set_api_down(self, down: bool) -> None:
        """While down, every compute API request answers 503."""
        with self._lock:
            self._api_down = bool(down)

    def force_down(self, host: str, forced: bool = True) -> None:
        """Set a nova-compute service's forced_down flag directly (no checks)."""
        with self._lock:
            svc = self._compute_service(host)
            svc.forced_down = forced
            svc.admin_updated = _now()

    def _testbed(self, req: _Request) -> _Response:
        parts = [p for p in req.path.split("/") if p][1:]
        body = req.json() if req.body else {}
        body = body if isinstance(body, dict) else {}
        m, ok = req.method, self._json_response
        if parts == ["hosts"] and m == "GET":
            return ok(200, self.hosts())
        if (
            len(parts) == 3
            and parts[0] == "hosts"
            and m == "POST"
            and parts[2] in ("crash", "start")
        ):
            if parts[1] not in self._hosts:
                raise _HTTPError(404, f"unknown host {parts[1]}")
            if parts[2] == "crash":
                self.crash(parts[1])
            else:
                self.start(parts[1])
            return ok(200, {"host": parts[1], "running": self._hosts[parts[1]].running})
        if len(parts) == 3 and parts[0] == "hosts" and m == "POST" and parts[2] == "force-down":
            self.force_down(parts[1], bool(body.get("forced_down", True)))
            return ok(200, {"host": parts[1]})
        if parts == ["servers"] and m == "POST":
            try:
                ids = self.create_servers(
                    body["host"],
                    int(body.get("count", 1)),
                    body.get("name_prefix", "vm"),
                    body.get("flavor_extra_specs"),
                    body.get("metadata"),
                    body.get("image_properties"),
                    body.get("status", "ACTIVE"),
                    body.get("project_id"),
                )
            except (KeyError, ValueError) as exc:
                raise _HTTPError(400, str(exc)) from exc
            return ok(200, {"ids": ids})
        if parts == ["servers"] and m == "GET":
            return ok(200, {"servers": self.servers()})
        if len(parts) == 2 and parts[0] == "servers" and m == "GET":
            try:
                return ok(200, self.server(parts[1]))
            except KeyError as exc:
                raise _HTTPError(404, f"unknown server {parts[1]}") from exc
        if parts == ["migrations"] and m == "GET":
            return ok(200, {"migrations": self.migrations()})
        if parts == ["log"] and m == "GET":
            return ok(200, {"log": self.request_log()})
        if parts == ["log"] and m == "DELETE":
            self.clear_log()
            return ok(200, {})
        if parts == ["api"] and m == "POST":
            self.set_api_down(bool(body.get("down")))
            return ok(200, {"down": self._api_down})
        if parts == ["config"] and m == "POST":
            for key in (
                "latency",
                "service_down_time",
                "report_interval",
                "evacuate_delay",
                "evacuate_finish_window",
                "build_delay",
                "action_delay",
                "host_capacity",
                "shared_storage",
                "token_ttl",
            ):
                if key in body:
                    setattr(self, key, body[key])
            return ok(200, {})
        if parts == ["fail_next"] and m == "POST":
            self.fail_next(
                body["path_regex"],
                int(body.get("status", 500)),
                int(body.get("count", 1)),
                body.get("method"),
                apply=bool(body.get("apply", False)),
                message=body.get("message"),
            )
            return ok(200, {})
        if parts == ["timeout_next"] and m == "POST":
            self.timeout_next(
                body["path_regex"],
                float(body["seconds"]),
                int(body.get("count", 1)),
                body.get("method"),
                respond=bool(body.get("respond", True)),
            )
            return ok(200, {})
        if parts == ["expire_tokens"] and m == "POST":
            self.expire_tokens()
            return ok(200, {})
        if parts == ["evacuate_fail"] and m == "POST":
            if "probability" in body:
                self.evacuate_fail(float(body["probability"]))
            else:
                self.evacuate_fail(body.get("server_ids"))
            return ok(200, {})
        if parts == ["conflict_next_evacuate"] and m == "POST":
            self.conflict_next_evacuate(int(body.get("count", 1)))
            return ok(200, {})
        if parts == ["reset_faults"] and m == "POST":
            self.reset_faults()
            return ok(200, {})
        raise _HTTPError(404, f"no testbed route {m} {req.path}")
