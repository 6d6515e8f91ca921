"""The control API of the production-shaped bed (``/_testbed``), and the bed's own client
of the compute API (flavors at boot, servers on a given host, compute services up)."""

from __future__ import annotations

import hashlib
import json
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from typing import Any

from testbed.nova_box import server as box_server
from testbed.nova_prod import fakes


class BedError(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class NovaClient:
    """The compute API through nova-api (gunicorn), as the bed's admin."""

    def __init__(self, bed: Any) -> None:
        self.bed = bed
        self.token, _ = bed.keystone.issue(["password"], internal=True)

    def call(self, method: str, path: str, body: Any = None, microversion: str = "latest"):
        """(status, decoded body) of one compute API request."""
        request = urllib.request.Request(
            self.bed.compute_url + path,
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={
                "X-Auth-Token": self.token,
                "OpenStack-API-Version": f"compute {microversion}",
                "Content-Type": "application/json",
                "Accept": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, data = self.call(method, path, body)
        if not 200 <= status < 300:
            raise BedError(f"{method} {path}: {status} {data}", 500)
        return data

    def hypervisor_count(self) -> int:
        status, data = self.call("GET", "/os-hypervisors")
        return len(data["hypervisors"]) if status == 200 else 0

    def wait_compute_up(self, host: str, since: float, timeout: float = 100) -> None:
        """Until the API shows a heartbeat of ``host``'s nova-compute after ``since`` (and
        the service up, unless it is forced down: then the API says down whatever it does)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, data = self.call("GET", f"/os-services?binary=nova-compute&host={host}")
            for svc in (data or {}).get("services", []) if status == 200 else []:
                beat = svc.get("updated_at")
                beat_t = beat and datetime.fromisoformat(beat).replace(tzinfo=UTC).timestamp()
                alive = svc["state"] == "up" or svc.get("forced_down")
                if alive and beat_t and beat_t >= since - 1:
                    return
            time.sleep(0.3)
        raise BedError(f"nova-compute on {host} not up after {timeout:.0f}s", 500)

    def make_flavors(self) -> None:
        for flavorid, name, vcpus, ram, disk, specs in box_server.FLAVORS:
            self._flavor(flavorid, name, vcpus, ram, disk, specs)

    def _flavor(self, flavorid: str, name: str, vcpus: int, ram: int, disk: int, specs: dict):
        if self.call("GET", f"/flavors/{flavorid}")[0] == 200:
            return
        body = {"name": name, "id": flavorid, "vcpus": vcpus, "ram": ram, "disk": disk}
        self.ok("POST", "/flavors", {"flavor": body})
        if specs:
            self.ok("POST", f"/flavors/{flavorid}/os-extra_specs", {"extra_specs": specs})

    def flavor_with_specs(self, specs: dict) -> str:
        """A tiny flavor with these extra specs (made once); returns its id."""
        specs = {str(k): str(v) for k, v in specs.items()}
        digest = hashlib.sha1(json.dumps(specs, sort_keys=True).encode()).hexdigest()[:10]
        flavorid = "tb-" + digest
        self._flavor(flavorid, flavorid, 1, 512, 1, specs)
        return flavorid

    def create_servers(self, host: str, count: int = 1, **options: Any) -> list[str]:
        """``count`` servers on ``host`` (multi-create, ``nova:<host>``); with ``wait``
        (default) returns once all are ACTIVE. Options as the box's control API."""
        if host not in self.bed.hosts:
            raise BedError(f"unknown host {host}", 404)
        if int(count) < 1:
            raise BedError("count must be >= 1")
        specs = options.get("flavor_extra_specs")
        flavor = self.flavor_with_specs(specs) if specs else str(options.get("flavor") or "1")
        image = options.get("image")
        images = {None: box_server.IMAGE_DEFAULT, "default": box_server.IMAGE_DEFAULT}
        server = {
            "name": options.get("name_prefix", "vm"),
            "imageRef": images.get(
                image, box_server.IMAGE_EVACUABLE if image == "evacuable" else image
            ),
            "flavorRef": flavor,
            "networks": "none",
            "availability_zone": f"nova:{host}",
            "min_count": int(count),
            "max_count": int(count),
            "return_reservation_id": True,
        }
        if options.get("metadata"):
            server["metadata"] = {str(k): str(v) for k, v in options["metadata"].items()}
        reservation = self.ok("POST", "/servers", {"server": server})["reservation_id"]
        wait, timeout = options.get("wait", True), float(options.get("timeout", 300))
        return self._wait_reservation(reservation, int(count), wait, timeout)

    def _wait_reservation(self, reservation: str, count: int, wait: bool, timeout: float):
        deadline = time.monotonic() + timeout
        while True:
            servers = self.ok("GET", f"/servers/detail?reservation_id={reservation}&all_tenants=1")[
                "servers"
            ]
            errors = [s["id"] for s in servers if s["status"] == "ERROR"]
            if errors:
                raise BedError(f"servers went to ERROR: {errors}", 500)
            done = [
                s for s in servers if s["status"] == "ACTIVE" and not s["OS-EXT-STS:task_state"]
            ]
            if len(servers) == count and (not wait or len(done) == count):
                ordered = sorted(servers, key=lambda s: s.get("OS-EXT-SRV-ATTR:launch_index") or 0)
                return [s["id"] for s in ordered]
            if time.monotonic() > deadline:
                raise BedError(f"timeout waiting for {count} servers ({len(done)} ACTIVE)", 500)
            time.sleep(min(2.0, max(0.25, 0.02 * count)))


class Control:
    """``/_testbed``: hosts (crash, start), servers, delays, tokens, info."""

    def __init__(self, bed: Any) -> None:
        self.bed = bed

    def __call__(self, environ, start_response):
        method = environ["REQUEST_METHOD"]
        parts = [p for p in environ.get("PATH_INFO", "").split("/") if p]
        try:
            body = box_server._read_body(environ)
            data = json.loads(body) if body.strip() else {}
            status, answer = self.route(method, parts, data)
        except ValueError:
            status, answer = 400, {"error": "bad JSON"}
        except BedError as e:
            status, answer = e.status, {"error": str(e)}
        return box_server._json_response(start_response, status, answer)

    def route(self, method: str, parts: list[str], data: dict) -> tuple[int, Any]:
        bed = self.bed
        if parts == ["hosts"] and method == "GET":
            return 200, bed.hosts_state()
        if len(parts) == 3 and parts[0] == "hosts" and method == "POST":
            return 200, self.host_action(parts[1], parts[2])
        if parts == ["servers"] and method == "POST":
            if bed.nova is None:
                raise BedError("booting", 503)
            return 200, {"ids": bed.nova.create_servers(**data)}
        if len(parts) == 1 and parts[0] in ("rebuild_delay", "power_on_delay"):
            kind = "spawn" if parts[0] == "rebuild_delay" else "power_on"
            return 200, self.delay(kind, method, data)
        if parts == ["tokens", "revoke"] and method == "POST":
            return 200, {"revoked": bed.keystone.revoke_all()}
        if parts == ["info"] and method == "GET":
            return 200, bed.info()
        raise BedError("not found", 404)

    def host_action(self, host: str, action: str) -> dict:
        if host not in self.bed.hosts:
            raise BedError(f"unknown host {host}", 404)
        if action == "crash":
            self.bed.crash(host)
        elif action == "start":
            self.bed.start_compute(host)
        else:
            raise BedError(f"unknown action {action}", 404)
        return self.bed.hosts_state()[host]

    def delay(self, kind: str, method: str, data: dict) -> dict:
        """GET: ``{"seconds": the delay of data's host or of all}``; POST ``{"seconds": S,
        "host": H?}`` sets it for one host or for all."""
        host = data.get("host")
        if host is not None and host not in self.bed.hosts:
            raise BedError(f"unknown host {host}", 404)
        if method == "POST":
            try:
                seconds = float(data.get("seconds", 0))
            except (TypeError, ValueError):
                seconds = -1.0
            if not 0 <= seconds <= 3600:
                raise BedError("seconds must be a number in [0, 3600]")
            table = fakes.write_delay(self.bed.state_dir, kind, seconds, host)
            return {"seconds": seconds, "host": host, "table": table[kind]}
        return {"seconds": fakes.read_delay(self.bed.state_dir, kind, host or "*"), "host": host}
