"""Nova's servers: list, detail, show, create, delete, and the server view per microversion."""

from __future__ import annotations

import copy
import re
from typing import Any

from .model import (
    _JOINED_TABLE_KEYS,
    _PROGRESS_STATUSES,
    _SERVER_QUERY_KEYS,
    _STATE_MAP,
    _STD_IMAGE_PROPS,
    ACTIVE,
    DELETED,
    ERROR,
    RUNNING,
    SPAWNING,
    _additional_query_error,
    _Bad,
    _bool_from_string,
    _dbtime,
    _generate_password,
    _hostid,
    _isotime,
    _now,
    _parse_isotime,
    _Request,
    _Response,
)


class ServersApi:
    """``/servers``."""

    def _host_status(self, host: str | None) -> str:
        """compute.api.API.get_instance_host_status."""
        if not host or host not in self._hosts:
            return ""
        svc = self._compute_service(host)
        if svc.forced_down:
            return "DOWN"
        if svc.disabled:
            return "MAINTENANCE"
        return "UP" if self._service_is_up(svc) else "UNKNOWN"

    def _server_view(self, req: _Request, s: dict[str, Any], show: bool = False) -> dict[str, Any]:
        base = req.base
        sid = s["id"]
        status = self._status(s)
        flavor = s["flavor"]
        if req.ge("2.47"):
            flavor_view: dict[str, Any] = {
                "vcpus": flavor["vcpus"],
                "ram": flavor["memory_mb"],
                "disk": flavor["root_gb"],
                "ephemeral": flavor["ephemeral_gb"],
                "swap": flavor["swap"],
                "original_name": flavor["name"],
                "extra_specs": dict(flavor["extra_specs"]),
            }
        else:
            flavor_view = {
                "id": flavor["flavorid"],
                "links": [
                    {"rel": "bookmark", "href": f"{base}/compute/flavors/{flavor['flavorid']}"}
                ],
            }
        image = self._images.get(s["image_id"], {})
        image_view: dict[str, Any] = {
            "id": s["image_id"],
            "links": [{"rel": "bookmark", "href": f"{base}/compute/images/{s['image_id']}"}],
        }
        if req.ge("2.98"):
            image_view["properties"] = {
                k: v
                for k, v in image.get("properties", {}).items()
                if k in _STD_IMAGE_PROPS and v is not None
            }
        view: dict[str, Any] = {
            "accessIPv4": "",
            "accessIPv6": "",
            "addresses": {},
            "created": _isotime(s["created_at"]),
            "flavor": flavor_view,
            "hostId": _hostid(s["host"], s["project_id"]),
            "id": sid,
            "image": image_view,
            "links": [
                {"rel": "self", "href": f"{base}/compute/v2.1/servers/{sid}"},
                {"rel": "bookmark", "href": f"{base}/compute/servers/{sid}"},
            ],
            "metadata": dict(s["metadata"]),
            "name": s["name"],
            "status": status,
            "tenant_id": s["project_id"],
            "user_id": s["user_id"],
            "updated": _isotime(s["updated_at"]),
            "OS-DCF:diskConfig": "MANUAL",
        }
        if status in ("ERROR", "DELETED") and s["fault"]:
            fault = s["fault"]
            view["fault"] = {
                "code": fault["code"],
                "created": _isotime(fault["created"]),
                "message": fault["message"],
            }
            if fault.get("details"):
                view["fault"]["details"] = fault["details"]
        if status in _PROGRESS_STATUSES:
            view["progress"] = 0
        view["OS-EXT-AZ:availability_zone"] = s["availability_zone"] or ""
        view["config_drive"] = ""
        view["key_name"] = None
        view["OS-SRV-USG:launched_at"] = _dbtime(s["launched_at"])
        view["OS-SRV-USG:terminated_at"] = None
        view["security_groups"] = [{"name": "default"}]
        view["OS-EXT-SRV-ATTR:host"] = s["host"]
        view["OS-EXT-SRV-ATTR:instance_name"] = f"instance-{s['db_id']:08x}"
        view["OS-EXT-SRV-ATTR:hypervisor_hostname"] = s["node"]
        if req.ge("2.3"):
            view.update(
                {
                    "OS-EXT-SRV-ATTR:hostname": s["hostname"],
                    "OS-EXT-SRV-ATTR:kernel_id": "",
                    "OS-EXT-SRV-ATTR:launch_index": 0,
                    "OS-EXT-SRV-ATTR:ramdisk_id": "",
                    "OS-EXT-SRV-ATTR:reservation_id": s["reservation_id"],
                    "OS-EXT-SRV-ATTR:root_device_name": "/dev/vda",
                    "OS-EXT-SRV-ATTR:user_data": None,
                }
            )
        view["OS-EXT-STS:task_state"] = s["task_state"]
        view["OS-EXT-STS:vm_state"] = s["vm_state"]
        view["OS-EXT-STS:power_state"] = s["power_state"]
        view["os-extended-volumes:volumes_attached"] = []
        if req.ge("2.9"):
            view["locked"] = False
        if req.ge("2.16"):
            view["host_status"] = self._host_status(s["host"])
        if req.ge("2.19"):
            view["description"] = s["description"]
        if req.ge("2.26"):
            view["tags"] = list(s["tags"])
        if req.ge("2.63"):
            view["trusted_image_certificates"] = None
        if show and req.ge("2.71"):
            view["server_groups"] = []
        if req.ge("2.73"):
            view["locked_reason"] = None
        if req.ge("2.96"):
            view["pinned_availability_zone"] = s["pinned_availability_zone"]
        if req.ge("2.100"):
            view["scheduler_hints"] = {}
        return view

    def _list_servers(self, req: _Request) -> tuple[list[dict[str, Any]], int]:
        """ServersController._get_servers (admin context)."""
        if req.ge("2.75"):
            extra = set(req.query) - _SERVER_QUERY_KEYS
            if extra:
                raise _Bad(_additional_query_error(extra))
        for key in req.query:
            if key in _JOINED_TABLE_KEYS or key.startswith("_"):
                raise _Bad(f"Invalid filter field: {key}.")
        limit, marker = self._limit_marker(req)
        vm_states: list[str] | None = None
        task_states: list[Any] | None = None
        if "status" in req.query:
            wanted = [v.lower() for v in req.query["status"]]
            vms, tasks = set(), set()
            for vm, task_map in _STATE_MAP.items():
                for task, label in task_map.items():
                    if label.lower() in wanted:
                        vms.add(vm)
                        tasks.add(task)
            if not vms and not tasks:
                if req.ge("2.38"):
                    raise _Bad("Invalid status value")
                return [], limit
            vm_states = sorted(vms)
            if "default" not in tasks:
                task_states = list(tasks)
        all_tenants = False
        if "all_tenants" in req.query:
            raw = req.q("all_tenants") or ""
            if raw:
                try:
                    all_tenants = _bool_from_string(raw, strict=True)
                except ValueError as exc:
                    raise _Bad(str(exc)) from exc
            else:
                all_tenants = True
        project = None
        if all_tenants:
            project = req.q("project_id") or req.q("tenant_id")
        else:
            project = self.project_id
        host = req.q("host")
        node = req.q("node")
        name_re = req.q("name") or req.q("display_name")
        uuid_f = req.q("uuid")
        vm_f = req.query.get("vm_state")
        task_f = req.query.get("task_state")
        since = req.q("changes-since")
        since_ts = _parse_isotime(since) if since else None
        deleted = _bool_from_string(req.q("deleted")) if "deleted" in req.query else None
        with self._lock:
            items = []
            for s in self._servers.values():
                if deleted is None:
                    if s["deleted"] and since_ts is None:
                        continue
                elif s["deleted"] != deleted:
                    continue
                if project is not None and s["project_id"] != project:
                    continue
                if host is not None and s["host"] != host:
                    continue
                if node is not None and s["node"] != node:
                    continue
                if name_re is not None and not re.search(name_re, s["name"]):
                    continue
                if uuid_f is not None and s["id"] != uuid_f:
                    continue
                if vm_states is not None and s["vm_state"] not in vm_states:
                    continue
                if task_states is not None and s["task_state"] not in task_states:
                    continue
                if vm_f and s["vm_state"] not in vm_f:
                    continue
                if task_f and str(s["task_state"]) not in task_f:
                    continue
                if since_ts is not None and s["updated_at"] < since_ts:
                    continue
                items.append(s)
            sort_key = req.q("sort_key") or "created_at"
            reverse = (req.q("sort_dir") or "desc").lower() != "asc"
            key_map = {
                "display_name": "name",
                "uuid": "id",
                "created_at": "created_at",
                "updated_at": "updated_at",
                "host": "host",
                "node": "node",
                "vm_state": "vm_state",
                "task_state": "task_state",
            }
            attr = key_map.get(sort_key, "created_at")

            def sort_value(srv: dict[str, Any]) -> tuple[Any, int]:
                value = srv.get(attr)
                if attr in ("created_at", "updated_at"):
                    value = int(value or 0)  # DB second precision, then id
                return (value if value is not None else "", srv["db_id"])

            items.sort(key=sort_value, reverse=reverse)
            if marker is not None:
                index = next((i for i, s in enumerate(items) if s["id"] == marker), None)
                if index is None:
                    raise _Bad(f"marker [{marker}] not found")
                items = items[index + 1 :]
            items = items[:limit] if limit else []
            return [copy.deepcopy(s) for s in items], limit

    def _servers_index(self, req: _Request) -> _Response:
        items, limit = self._list_servers(req)
        servers = [
            {
                "id": s["id"],
                "name": s["name"],
                "links": [
                    {"rel": "self", "href": f"{req.base}/compute/v2.1/servers/{s['id']}"},
                    {"rel": "bookmark", "href": f"{req.base}/compute/servers/{s['id']}"},
                ],
            }
            for s in items
        ]
        payload: dict[str, Any] = {"servers": servers}
        if limit and len(items) == limit:
            payload["servers_links"] = self._next_link(req, "servers", items[-1]["id"])
        return self._ok(req, payload)

    def _servers_detail(self, req: _Request) -> _Response:
        items, limit = self._list_servers(req)
        with self._lock:
            servers = [self._server_view(req, s) for s in items]
        payload: dict[str, Any] = {"servers": servers}
        if limit and len(items) == limit:
            payload["servers_links"] = self._next_link(req, "servers/detail", items[-1]["id"])
        return self._ok(req, payload)

    def _server_show(self, req: _Request, sid: str) -> _Response:
        self._no_query_params(req)
        with self._lock:
            return self._ok(
                req, {"server": self._server_view(req, self._get_server(sid), show=True)}
            )

    def _server_delete(self, req: _Request, sid: str) -> _Response:
        """Simplified: the server is deleted at once (nova's local delete)."""
        with self._lock:
            server = self._get_server(sid)
            self._touch(server, deleted=True, vm_state=DELETED, task_state=None)
            for allocs in self._alloc.values():
                allocs.discard(sid)
            for h in self._hosts.values():
                h.guests.discard(sid)
        return self._ok(req, None, status=204)

    def _servers_create(self, req: _Request) -> _Response:
        """POST /servers, simplified: no networking; ``nova:HOST`` forces a host."""
        body = req.json()
        server_schema: dict[str, Any] = {
            "type": "object",
            "properties": {
                "server": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "minLength": 1, "maxLength": 255},
                        "imageRef": {"type": "string"},
                        "flavorRef": {"type": ["string", "integer"], "minLength": 1},
                        "availability_zone": {"type": "string", "minLength": 1, "maxLength": 255},
                        "metadata": {"type": "object"},
                    },
                    "required": ["name", "flavorRef"],
                }
            },
            "required": ["server"],
            "additionalProperties": False,
        }
        if req.ge("2.37"):
            server_schema["properties"]["server"]["required"].append("networks")
        self._validate_body(server_schema, body)
        spec = body["server"]
        with self._lock:
            flavor_id = str(spec["flavorRef"]).rsplit("/", 1)[-1]
            if flavor_id not in self._flavors:
                raise _Bad("Invalid flavorRef provided.")
            image_id = str(spec.get("imageRef") or self.default_image_id).rsplit("/", 1)[-1]
            if image_id not in self._images:
                raise _Bad("Can not find requested image")
            az = spec.get("availability_zone")
            forced_host = None
            pinned = None
            if az:
                zone, _, forced = az.partition(":")
                pinned = zone or None
                if forced:
                    forced_host = forced.split(":")[0]
                    if forced_host not in self._hosts:
                        raise _Bad(
                            f"No valid host was found. Compute host {forced_host} "
                            "could not be found."
                        )
            metadata = {str(k): str(v) for k, v in (spec.get("metadata") or {}).items()}
            server = self._new_server(
                spec["name"], flavor_id, image_id, metadata, self.project_id, pinned
            )
            sid = server["id"]
            self._schedule_at(_now(), lambda: self._build(sid, forced_host))
        payload = {
            "server": {
                "id": sid,
                "links": [
                    {"rel": "self", "href": f"{req.base}/compute/v2.1/servers/{sid}"},
                    {"rel": "bookmark", "href": f"{req.base}/compute/servers/{sid}"},
                ],
                "OS-DCF:diskConfig": "MANUAL",
                "security_groups": [{"name": "default"}],
                "adminPass": _generate_password(),
            }
        }
        return self._ok(
            req,
            payload,
            status=202,
            headers=[("Location", f"{req.base}/compute/v2.1/servers/{sid}")],
        )

    def _build(self, sid: str, forced_host: str | None) -> None:
        server = self._servers.get(sid)
        if server is None or server["deleted"]:
            return
        if forced_host is not None:
            host: str | None = forced_host if self._has_room(forced_host) else None
            reason = ""
        else:
            host, reason = self._select_host(None, None)
        if host is None:
            self._touch(server, vm_state=ERROR, task_state=None)
            self._fault(server, f"No valid host was found. {reason}")
            return
        self._alloc[host].add(sid)
        self._touch(server, task_state=SPAWNING, host=host, node=host)

        def spawned() -> None:
            if server["deleted"]:
                return
            self._hosts[host].guests.add(sid)
            self._touch(
                server,
                vm_state=ACTIVE,
                task_state=None,
                power_state=RUNNING,
                launched_at=_now(),
                availability_zone="nova",
            )

        self._on_compute(host, _now() + self.build_delay, spawned)
