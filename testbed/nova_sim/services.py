"""``os-services``: list, and update (enable, disable, forced_down), before and from
microversion 2.53."""

from __future__ import annotations

from typing import Any

from .model import (
    _BOOLEAN,
    _FQDN,
    _REASON,
    _additional_query_error,
    _Bad,
    _bool_from_string,
    _dbtime,
    _HTTPError,
    _is_uuid_like,
    _now,
    _Request,
    _Response,
    _Service,
)


class ServicesApi:
    """``/os-services``."""

    def _service_view(self, req: _Request, svc: _Service) -> dict[str, Any]:
        view: dict[str, Any] = {
            "binary": svc.binary,
            "host": svc.host,
            "id": svc.uuid if req.ge("2.53") else svc.id,
            "zone": svc.zone,
            "status": "disabled" if svc.disabled else "enabled",
            "state": "up" if self._service_is_up(svc) else "down",
            "updated_at": _dbtime(self._service_updated_at(svc)),
            "disabled_reason": svc.disabled_reason,
        }
        if req.ge("2.11"):
            view["forced_down"] = svc.forced_down
        return view

    def _services_index(self, req: _Request) -> _Response:
        if req.ge("2.75"):
            extra = set(req.query) - {"host", "binary"}
            if extra:
                raise _Bad(_additional_query_error(extra))
        host = req.q("host") or ""
        binary = req.q("binary") or ""
        with self._lock:
            services = [
                self._service_view(req, s)
                for s in self._services
                if (not host or s.host == host) and (not binary or s.binary == binary)
            ]
        return self._ok(req, {"services": services})

    def _done_evacuations_block(self, host: str) -> None:
        """ServiceController._check_for_evacuations."""
        if any(
            m["source_compute"] == host
            and m["status"] == "done"
            and m["migration_type"] == "evacuation"
            for m in self._migrations
        ):
            raise _Bad(
                f"Unable to force up host {host} as `done` evacuation migration records "
                "remain associated with the host. Ensure the compute service has been "
                "restarted, allowing these records to move to `completed` before "
                "retrying this request."
            )

    def _services_update(self, req: _Request, sid: str) -> _Response:
        body = req.json()
        if req.ge("2.53"):
            return self._services_update_v253(req, sid, body)
        schema: dict[str, Any] = {
            "type": "object",
            "properties": {
                "host": _FQDN,
                "binary": {"type": "string", "minLength": 1, "maxLength": 255},
                "disabled_reason": _REASON,
            },
            "required": ["host", "binary"],
            "additionalProperties": False,
        }
        if req.ge("2.11"):
            schema["properties"]["forced_down"] = _BOOLEAN
        self._validate_body(schema, body)
        actions = ["enable", "disable", "disable-log-reason"]
        if req.ge("2.11"):
            actions.append("force-down")
        if sid not in actions:
            raise _HTTPError(404, "Unknown action")
        host, binary = body["host"], body["binary"]
        with self._lock:
            if sid == "force-down":
                if "forced_down" not in body:
                    raise _Bad("Missing forced_down field")
                forced = _bool_from_string(body["forced_down"])
                if binary == "nova-compute" and forced is False:
                    self._done_evacuations_block(host)
                result: dict[str, Any] = {"host": host, "binary": binary, "forced_down": forced}
                updates: dict[str, Any] = {"forced_down": forced}
            else:
                reason = None
                if sid == "disable-log-reason":
                    if "disabled_reason" not in body:
                        raise _Bad("Missing disabled reason field")
                    reason = body["disabled_reason"]
                enable = sid == "enable"
                result = {
                    "host": host,
                    "binary": binary,
                    "status": "enabled" if enable else "disabled",
                }
                if reason:
                    result["disabled_reason"] = reason
                updates = {"disabled": not enable, "disabled_reason": reason}
            if binary != "nova-compute":
                raise _Bad(
                    f"Updating a {binary} service is not supported. Only nova-compute "
                    "services can be updated."
                )
            if host not in self._hosts:
                raise _HTTPError(404, f"Host '{host}' is not mapped to any cell")
            svc = self._compute_service(host)
            for key, value in updates.items():
                setattr(svc, key, value)
            svc.admin_updated = _now()
        return self._ok(req, {"service": result})

    def _services_update_v253(self, req: _Request, sid: str, body: Any) -> _Response:
        schema = {
            "type": "object",
            "properties": {
                "status": {"type": "string", "enum": ["enabled", "disabled"]},
                "disabled_reason": _REASON,
                "forced_down": _BOOLEAN,
            },
            "additionalProperties": False,
        }
        self._validate_body(schema, body)
        if not _is_uuid_like(sid):
            raise _Bad(f"Invalid uuid {sid}")
        with self._lock:
            svc = next((s for s in self._services if s.uuid == sid), None)
            if svc is None:
                raise _HTTPError(404, f"Service {sid} could not be found.")
        if svc.binary != "nova-compute":
            raise _Bad(
                f"Updating a {svc.binary} service is not supported. Only nova-compute "
                "services can be updated."
            )
        changes: dict[str, Any] = {}
        if "status" in body:
            if body["status"] == "enabled":
                if body.get("disabled_reason"):
                    raise _Bad("Specifying 'disabled_reason' with status 'enabled' is invalid.")
                changes.update(disabled=False, disabled_reason=None)
            else:
                changes.update(disabled=True, disabled_reason=body.get("disabled_reason"))
        with self._lock:
            if "forced_down" in body:
                forced = _bool_from_string(body["forced_down"], strict=True)
                changes["forced_down"] = forced
                if forced is False:
                    self._done_evacuations_block(svc.host)
            if not changes:
                raise _Bad(
                    "No updates were requested. Fields 'status' or 'forced_down' "
                    "should be specified."
                )
            for key, value in changes.items():
                setattr(svc, key, value)
            svc.admin_updated = _now()
            view = self._service_view(req, svc)
        return self._ok(req, {"service": view})
