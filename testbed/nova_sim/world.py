"""The simulated world's lookups and record makers: hosts and their services' liveness, placement,
flavors, images, servers, migrations."""

from __future__ import annotations

import copy
import re
import uuid
from typing import Any

from .model import _STATE_MAP, BUILDING, NOSTATE, SCHEDULING, _Host, _now, _Service


class World:
    """Lookups in the world and constructors of its records."""

    def _host(self, host: str) -> _Host:
        try:
            return self._hosts[host]
        except KeyError:
            raise ValueError(f"unknown host {host!r}") from None

    def _compute_service(self, host: str) -> _Service:
        for svc in self._services:
            if svc.binary == "nova-compute" and svc.host == host:
                return svc
        raise ValueError(f"no nova-compute service on {host!r}")

    def _last_heartbeat(self, h: _Host | None, now: float) -> float:
        if h is None:  # controller services always report
            return now - (now % max(self.report_interval, 1e-3))
        if not h.running and h.last_heartbeat_frozen is not None:
            return h.last_heartbeat_frozen
        interval = max(self.report_interval, 1e-3)
        return h.boot + ((now - h.boot) // interval) * interval

    def _service_is_up(self, svc: _Service) -> bool:
        """nova.servicegroup: forced_down, else last heartbeat within service_down_time."""
        if svc.forced_down:
            return False
        now = _now()
        last = self._last_heartbeat(
            self._hosts.get(svc.host) if svc.binary == "nova-compute" else None, now
        )
        return abs(now - last) <= self.service_down_time

    def _service_updated_at(self, svc: _Service) -> float:
        h = self._hosts.get(svc.host) if svc.binary == "nova-compute" else None
        last = self._last_heartbeat(h, _now())
        return max(last, svc.admin_updated or 0.0, svc.created_at)

    def _capacity(self, host: str) -> int | None:
        cap = self.host_capacity
        if isinstance(cap, dict):
            return cap.get(host)
        return cap

    def _has_room(self, host: str) -> bool:
        cap = self._capacity(host)
        return cap is None or len(self._alloc[host]) < cap

    def _add_flavor(self, name: str, extra_specs: dict[str, str]) -> str:
        num = next(self._flavor_seq)
        flavor_id = str(num)
        self._flavors[flavor_id] = {
            "id": num,
            "flavorid": flavor_id,
            "name": name,
            "vcpus": 1,
            "memory_mb": 512,
            "root_gb": 1,
            "ephemeral_gb": 0,
            "swap": 0,
            "extra_specs": dict(extra_specs),
            "description": None,
            "is_public": True,
        }
        return flavor_id

    def _flavor_for(self, extra_specs: dict[str, str]) -> str:
        for fid, flavor in self._flavors.items():
            if flavor["extra_specs"] == extra_specs:
                return fid
        return self._add_flavor(f"m1.small-{len(self._flavors) + 1}", extra_specs)

    def _add_image(self, name: str, properties: dict[str, Any]) -> str:
        image_id = str(uuid.uuid4())
        now = _now()
        self._images[image_id] = {
            "id": image_id,
            "name": name,
            "status": "active",
            "min_ram": 0,
            "min_disk": 0,
            "size": 16338944,
            "created_at": now,
            "updated_at": now,
            "properties": dict(properties),
        }
        return image_id

    def _new_server(
        self,
        name: str,
        flavor_id: str,
        image_id: str,
        metadata: dict[str, str],
        project_id: str,
        pinned_az: str | None,
    ) -> dict[str, Any]:
        num = next(self._server_seq)
        now = _now()
        flavor = copy.deepcopy(self._flavors[flavor_id])
        hostname = re.sub(r"[^a-zA-Z0-9-]+", "-", name).strip("-")[:63] or "server"
        server = {
            "id": str(uuid.uuid4()),
            "db_id": num,
            "name": name,
            "project_id": project_id,
            "user_id": self.user_id,
            "host": None,
            "node": None,
            "vm_state": BUILDING,
            "task_state": SCHEDULING,
            "power_state": NOSTATE,
            "flavor": flavor,
            "image_id": image_id,
            "metadata": metadata,
            "created_at": now,
            "updated_at": now,
            "launched_at": None,
            "fault": None,
            "deleted": False,
            "availability_zone": None,
            "pinned_availability_zone": pinned_az,
            "reservation_id": f"r-{uuid.uuid4().hex[:8]}",
            "hostname": hostname,
            "description": None,
            "tags": [],
        }
        self._servers[server["id"]] = server
        return server

    def _touch(self, server: dict[str, Any], **changes: Any) -> None:
        server.update(changes)
        server["updated_at"] = _now()

    @staticmethod
    def _status(server: dict[str, Any]) -> str:
        if server.get("deleted"):
            return "DELETED"
        task_map = _STATE_MAP.get(server["vm_state"], {"default": "UNKNOWN"})
        return task_map.get(server["task_state"], task_map["default"])

    def _fault(self, server: dict[str, Any], message: str, details: str = "") -> None:
        server["fault"] = {"code": 500, "message": message, "details": details, "created": _now()}

    def _new_migration(
        self, server: dict[str, Any], mtype: str, status: str, dest: str | None
    ) -> dict[str, Any]:
        mig = {
            "id": next(self._mig_seq),
            "uuid": str(uuid.uuid4()),
            "source_compute": server["host"],
            "source_node": server["node"],
            "dest_compute": dest,
            "dest_node": None,
            "dest_host": None,
            "old_instance_type_id": None,
            "new_instance_type_id": None,
            "instance_uuid": server["id"],
            "status": status,
            "migration_type": mtype,
            "hidden": False,
            "created_at": _now(),
            "updated_at": None,
            "user_id": self.user_id,
            "project_id": self.project_id,
        }
        self._migrations.append(mig)
        return mig

    @staticmethod
    def _mig_status(mig: dict[str, Any], status: str) -> None:
        mig["status"] = status
        mig["updated_at"] = _now()
