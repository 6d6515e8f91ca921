"""``os-migrations`` and a server's migrations."""

from __future__ import annotations

from typing import Any

from .model import (
    _additional_query_error,
    _Bad,
    _bool_from_string,
    _dbtime,
    _HTTPError,
    _parse_isotime,
    _Request,
    _Response,
)


class MigrationsApi:
    """``/os-migrations`` and ``/servers/{id}/migrations``."""

    def _migration_view(self, req: _Request, m: dict[str, Any]) -> dict[str, Any]:
        view = {
            k: m[k]
            for k in (
                "dest_compute",
                "dest_host",
                "dest_node",
                "id",
                "instance_uuid",
                "new_instance_type_id",
                "old_instance_type_id",
                "source_compute",
                "source_node",
                "status",
            )
        }
        view["created_at"] = _dbtime(m["created_at"])
        view["updated_at"] = _dbtime(m["updated_at"])
        if req.ge("2.23"):
            view["migration_type"] = m["migration_type"]
        if req.ge("2.59"):
            view["uuid"] = m["uuid"]
        if req.ge("2.80"):
            view["user_id"] = m["user_id"]
            view["project_id"] = m["project_id"]
        return view

    def _migrations_index(self, req: _Request) -> _Response:
        """MigrationsController.index."""
        allowed = {"hidden", "host", "instance_uuid", "source_compute", "status", "migration_type"}
        if req.ge("2.59"):
            allowed |= {"limit", "marker", "changes-since"}
            if req.ge("2.66"):
                allowed.add("changes-before")
            if req.ge("2.80"):
                allowed |= {"user_id", "project_id"}
            extra = set(req.query) - allowed
            if extra:
                raise _Bad(_additional_query_error(extra))
        f = {k: req.q(k) for k in req.query}
        since = f.get("changes-since") if req.ge("2.59") else None
        before = f.get("changes-before") if req.ge("2.66") else None
        since_ts = _parse_isotime(since) if since else None
        before_ts = _parse_isotime(before) if before else None
        if since_ts is not None and before_ts is not None and before_ts < since_ts:
            raise _Bad("The value of changes-since must be less than or equal to changes-before.")
        with self._lock:
            items = []
            for m in self._migrations:
                if "status" in f and m["status"] != f["status"]:
                    continue
                if "host" in f:
                    if f["host"] not in (m["source_compute"], m["dest_compute"]):
                        continue
                elif "source_compute" in f and m["source_compute"] != f["source_compute"]:
                    continue
                if "migration_type" in f and m["migration_type"] != f["migration_type"]:
                    continue
                if "hidden" in f and m["hidden"] != _bool_from_string(f["hidden"]):
                    continue
                if "instance_uuid" in f and m["instance_uuid"] != f["instance_uuid"]:
                    continue
                if req.ge("2.80"):
                    if "user_id" in f and m["user_id"] != f["user_id"]:
                        continue
                    if "project_id" in f and m["project_id"] != f["project_id"]:
                        continue
                stamp = m["updated_at"] or m["created_at"]
                if since_ts is not None and stamp < since_ts:
                    continue
                if before_ts is not None and stamp > before_ts:
                    continue
                items.append(m)
            links = None
            if req.ge("2.59"):
                items.sort(key=lambda m: (int(m["created_at"]), m["id"]), reverse=True)
                limit, marker = self._limit_marker(req)
                if marker is not None:
                    index = next((i for i, m in enumerate(items) if m["uuid"] == marker), None)
                    if index is None:
                        raise _Bad(f"Marker {marker} could not be found.")
                    items = items[index + 1 :]
                items = items[:limit] if limit else []
                if limit and len(items) == limit:
                    links = self._next_link(req, "os-migrations", items[-1]["uuid"])
            views = [self._migration_view(req, m) for m in items if not m["hidden"]]
        payload: dict[str, Any] = {"migrations": views}
        if links:
            payload["migrations_links"] = links
        return self._ok(req, payload)

    def _server_migrations(self, req: _Request, sid: str) -> _Response:
        """GET /servers/{id}/migrations (>= 2.23): in-progress live migrations only."""
        if not req.ge("2.23"):
            raise _HTTPError(404, "The resource could not be found.")
        self._no_query_params(req)
        with self._lock:
            self._get_server(sid)
        return self._ok(req, {"migrations": []})
