"""Nova's compute API plumbing: version documents, microversion negotiation, authentication, the
route table, and the helpers every handler uses."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from .model import (
    _additional_query_error,
    _Bad,
    _HTTPError,
    _parse_version,
    _Request,
    _Response,
    _schema_error,
    _vstr,
)


class ComputeApi:
    """The compute API's entry, routes and shared helpers."""

    def _versions_data(self) -> dict[str, dict[str, Any]]:
        return {
            "v2.0": {
                "id": "v2.0",
                "status": "DEPRECATED",
                "version": "",
                "min_version": "",
                "updated": "2025-07-04T12:00:00Z",
                "links": [
                    {
                        "rel": "describedby",
                        "type": "text/html",
                        "href": "http://docs.openstack.org/",
                    }
                ],
                "media-types": [
                    {
                        "base": "application/json",
                        "type": "application/vnd.openstack.compute+json;version=2",
                    }
                ],
            },
            "v2.1": {
                "id": "v2.1",
                "status": "CURRENT",
                "version": _vstr(self.max_version),
                "min_version": _vstr(self.min_version),
                "updated": "2013-07-23T11:33:21Z",
                "links": [
                    {
                        "rel": "describedby",
                        "type": "text/html",
                        "href": "http://docs.openstack.org/",
                    }
                ],
                "media-types": [
                    {
                        "base": "application/json",
                        "type": "application/vnd.openstack.compute+json;version=2.1",
                    }
                ],
            },
        }

    def _negotiate(self, req: _Request) -> None:
        """nova.api.openstack.wsgi.Request.set_api_version_request (microversion_parse)."""
        text: str | None = None
        header = req.headers.get_all("OpenStack-API-Version") or []
        for item in ",".join(header).split(","):
            parts = item.strip().split()
            if len(parts) == 2 and parts[0].lower() == "compute":
                text = parts[1]
        if text is None:
            legacy = req.headers.get_all("X-OpenStack-Nova-API-Version") or []
            if legacy:
                text = ",".join(legacy).strip()
        if text is None:
            req.version = self.min_version
        elif text == "latest":
            req.version = self.max_version
        else:
            parsed = _parse_version(text)
            if parsed is None:
                raise _Bad(
                    f"API Version String {text} is of invalid format. Must be of "
                    "format MajorNum.MinorNum."
                )
            req.version = parsed
            if req.entry is not None:
                req.entry["microversion"] = _vstr(parsed)
            if not (self.min_version <= parsed <= self.max_version):
                raise _HTTPError(
                    406,
                    f"Version {_vstr(parsed)} is not supported by the API. "
                    f"Minimum is {_vstr(self.min_version)} and maximum is "
                    f"{_vstr(self.max_version)}.",
                )
        if req.entry is not None:
            req.entry["microversion"] = _vstr(req.version)

    def _compute(self, req: _Request) -> _Response:
        with self._lock:
            down = self._api_down
        if down:
            return self._nova_fault(
                503, "The server is currently unavailable. Please try again at a later time.", None
            )
        sub = req.path[len("/compute") :]
        base = f"{req.base}/compute"
        if sub in ("", "/"):
            # Versions.index: not under microversion control
            versions = []
            for key in sorted(self._versions_data()):
                ver = self._versions_data()[key]
                number = "v2.1" if key == "v2.1" else "v2"
                versions.append(
                    {k: ver[k] for k in ("id", "status", "version", "min_version", "updated")}
                    | {"links": [{"rel": "self", "href": f"{base}/{number}/"}]}
                )
            return self._json_response(200, {"versions": versions})
        match = re.match(r"^/v2\.1(/.*)?$", sub)
        if not match:
            # Versions.multi: 300 multiple choices
            choices = []
            for key in sorted(self._versions_data()):
                ver = self._versions_data()[key]
                number = "v2.1" if key == "v2.1" else "v2"
                choices.append(
                    {
                        "id": ver["id"],
                        "status": ver["status"],
                        "links": [{"rel": "self", "href": f"{base}/{number}{sub}"}],
                        "media-types": ver["media-types"],
                    }
                )
            return self._json_response(300, {"choices": choices})
        rest = match.group(1) or ""
        if rest in ("", "/"):
            # VersionsV2: unauthenticated, but under microversion control
            self._negotiate(req)
            doc = copy.deepcopy(self._versions_data()["v2.1"])
            doc["links"].insert(0, {"rel": "self", "href": f"{base}/v2.1/"})
            return self._ok(req, {"version": doc})
        # keystonemiddleware auth_token runs before nova's app
        if self._valid_token(req.headers.get("X-Auth-Token")) is None:
            return self._json_response(
                401,
                {
                    "error": {
                        "code": 401,
                        "title": "Unauthorized",
                        "message": "The request you have made requires authentication.",
                    }
                },
                [("WWW-Authenticate", f'Keystone uri="{self._identity_url(req)}"')],
            )
        self._negotiate(req)
        pid = re.match(r"^/([0-9a-f]{32})(/.*)$", rest)
        if pid:
            if pid.group(1) != self.project_id:
                raise _Bad(
                    f"Malformed request URL: URL's project_id '{pid.group(1)}' doesn't "
                    f"match Context's project_id '{self.project_id}'"
                )
            rest = pid.group(2)
        for method, pattern, handler in self._routes():
            m = re.fullmatch(pattern, rest)
            if m and method == req.method:
                return handler(req, **m.groupdict())
        raise _HTTPError(404, "The resource could not be found.")

    def _routes(self) -> list[tuple[str, str, Callable[..., _Response]]]:
        return [
            ("GET", r"/servers", self._servers_index),
            ("POST", r"/servers", self._servers_create),
            ("GET", r"/servers/detail", self._servers_detail),
            ("GET", r"/servers/(?P<sid>[^/]+)", self._server_show),
            ("DELETE", r"/servers/(?P<sid>[^/]+)", self._server_delete),
            ("POST", r"/servers/(?P<sid>[^/]+)/action", self._server_action),
            ("GET", r"/servers/(?P<sid>[^/]+)/migrations", self._server_migrations),
            ("GET", r"/servers/(?P<sid>[^/]+)/os-instance-actions", self._instance_actions),
            (
                "GET",
                r"/servers/(?P<sid>[^/]+)/os-instance-actions/(?P<rid>[^/]+)",
                self._instance_action,
            ),
            ("GET", r"/os-services", self._services_index),
            ("PUT", r"/os-services/(?P<sid>[^/]+)", self._services_update),
            ("GET", r"/os-migrations", self._migrations_index),
            ("GET", r"/images/(?P<iid>[^/]+)", self._image_show),
            ("GET", r"/flavors", self._flavors_index),
            ("GET", r"/flavors/detail", self._flavors_detail),
            ("GET", r"/flavors/(?P<fid>[^/]+)", self._flavor_show),
            ("GET", r"/flavors/(?P<fid>[^/]+)/os-extra_specs", self._flavor_extra_specs),
            ("GET", r"/os-hypervisors", self._hypervisors_index),
            ("GET", r"/os-hypervisors/detail", self._hypervisors_detail),
        ]

    def _ok(
        self,
        req: _Request,
        payload: Any,
        status: int = 200,
        headers: list[tuple[str, str]] | None = None,
    ) -> _Response:
        hdrs = list(headers or []) + self._request_id_headers() + self._version_headers(req.version)
        return self._json_response(status, payload, hdrs)

    def _validate_body(self, schema: dict[str, Any], body: Any) -> None:
        err = _schema_error(schema, body)
        if err is None:
            return
        path, instance, message = err
        if path:
            raise _Bad(
                f"Invalid input for field/attribute {path[-1]}. Value: {instance}. {message}"
            )
        raise _Bad(message)

    def _no_query_params(self, req: _Request, since: str = "2.102") -> None:
        """show_query_v2102: no query string parameters allowed from 2.102."""
        if req.ge(since) and req.query:
            raise _Bad(_additional_query_error(req.query))

    def _limit_marker(self, req: _Request) -> tuple[int, str | None]:
        """common.get_limit_and_marker + the pagination query schema."""
        limit = self.max_limit
        raw = req.q("limit")
        if raw is not None:
            if raw == "":
                raise _Bad(
                    f"Invalid input for query parameters limit. Value: {raw}. "
                    f"{raw!r} should be non-empty"
                )
            if not re.fullmatch(r"[0-9]*", raw):
                raise _Bad(
                    f"Invalid input for query parameters limit. Value: {raw}. "
                    f"{raw!r} does not match '^[0-9]*$'"
                )
            limit = min(self.max_limit, int(raw))
        return limit, req.q("marker")

    def _next_link(self, req: _Request, collection: str, marker: str) -> list[dict[str, str]]:
        params = {k: v[-1] for k, v in sorted(req.query.items())}
        params["marker"] = marker
        return [
            {"rel": "next", "href": f"{req.base}/compute/v2.1/{collection}?{urlencode(params)}"}
        ]

    def _get_server(self, sid: str) -> dict[str, Any]:
        server = self._servers.get(sid)
        if server is None or server["deleted"]:
            raise _HTTPError(404, f"Instance {sid} could not be found.")
        return server
