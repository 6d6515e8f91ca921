"""Raw compute API calls against a bed (the box or the production-shaped one), stdlib only:
what the contract tests and the hand measurements use to ask Nova exactly one thing at
an exact microversion."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any


def http(method: str, url: str, body: Any, headers: dict) -> tuple[int, Any, str | None]:
    """(status, decoded body, answered compute microversion) of one request."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            status, raw, answered = resp.status, resp.read(), resp.headers
    except urllib.error.HTTPError as e:
        status, raw, answered = e.code, e.read(), e.headers
    version = (answered.get("OpenStack-API-Version") or "").split()[-1:] or [None]
    return status, json.loads(raw) if raw else None, version[0]


def token(cloud: Any) -> str:
    """A project-scoped token of the bed's Keystone (password of its admin)."""
    user = {"name": cloud.username, "domain": {"name": "Default"}, "password": cloud.password}
    auth = {
        "identity": {"methods": ["password"], "password": {"user": user}},
        "scope": {"project": {"name": cloud.project_name, "domain": {"name": "Default"}}},
    }
    request = urllib.request.Request(
        cloud.auth_url + "/auth/tokens",
        data=json.dumps({"auth": auth}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        return resp.headers["X-Subject-Token"]


class ComputeApi:
    def __init__(self, cloud: Any) -> None:
        self.cloud = cloud
        self.token = token(cloud)

    def call(self, method: str, path: str, body: Any = None, microversion: str = "latest"):
        headers = {"X-Auth-Token": self.token, "Content-Type": "application/json"}
        if microversion:
            headers["OpenStack-API-Version"] = f"compute {microversion}"
        return http(method, self.cloud.compute_url + path, body, headers)

    def service_id(self, host: str) -> str:
        _, body, _ = self.call("GET", f"/os-services?binary=nova-compute&host={host}")
        return body["services"][0]["id"]

    def force_down(self, host: str, down: bool = True) -> int:
        path = f"/os-services/{self.service_id(host)}"
        return self.call("PUT", path, {"forced_down": down}, "2.53")[0]

    def evacuate(self, server_id: str, microversion: str, **options: Any):
        body = {"evacuate": options}
        return self.call("POST", f"/servers/{server_id}/action", body, microversion)

    def server(self, server_id: str) -> dict:
        return self.call("GET", f"/servers/{server_id}")[1]["server"]

    def landed(self, server_id: str, away_from: str) -> dict | None:
        """The server if it is off ``away_from`` with no task under way, else None."""
        server = self.server(server_id)
        moved = server["OS-EXT-SRV-ATTR:host"] != away_from
        return server if moved and server["OS-EXT-STS:task_state"] is None else None

    def migrations(self, server_id: str) -> list[dict]:
        return self.call("GET", f"/os-migrations?instance_uuid={server_id}")[1]["migrations"]

    def delete_all(self, ids: list[str], timeout: float = 120) -> None:
        for server_id in ids:
            self.call("DELETE", f"/servers/{server_id}")
        deadline = time.monotonic() + timeout
        while any(self.call("GET", f"/servers/{i}")[0] != 404 for i in ids):
            if time.monotonic() > deadline:
                raise TimeoutError("servers not deleted")
            time.sleep(0.5)
