"""What the cloud offers: the image proxy, flavors and their extra specs, hypervisors."""

from __future__ import annotations

import copy
from typing import Any

from .model import _MAX_PROXY_API_VERSION, _HTTPError, _isotime, _Request, _Response


class InventoryApi:
    """Images, flavors and hypervisors."""

    def _image_show(self, req: _Request, iid: str) -> _Response:
        """The image proxy: only below 2.36 (MAX_PROXY_API_SUPPORT_VERSION 2.35)."""
        if req.version > _MAX_PROXY_API_VERSION:
            raise _HTTPError(404, "The resource could not be found.")
        with self._lock:
            image = self._images.get(iid)
            if image is None:
                raise _HTTPError(404, "Image not found.")
            image = copy.deepcopy(image)
        base = req.base
        view = {
            "id": iid,
            "name": image["name"],
            "minRam": 0,
            "minDisk": 0,
            "metadata": image["properties"],
            "created": _isotime(image["created_at"]),
            "updated": _isotime(image["updated_at"]),
            "status": "ACTIVE",
            "progress": 100,
            "OS-EXT-IMG-SIZE:size": image["size"],
            "links": [
                {"rel": "self", "href": f"{base}/compute/v2.1/images/{iid}"},
                {"rel": "bookmark", "href": f"{base}/compute/images/{iid}"},
                {
                    "rel": "alternate",
                    "type": "application/vnd.openstack.image",
                    "href": f"{base}/image/images/{iid}",
                },
            ],
        }
        return self._ok(req, {"image": view})

    def _flavor_view(self, req: _Request, flavor: dict[str, Any], detail: bool) -> dict[str, Any]:
        fid = flavor["flavorid"]
        view: dict[str, Any] = {
            "id": fid,
            "name": flavor["name"],
            "links": [
                {"rel": "self", "href": f"{req.base}/compute/v2.1/flavors/{fid}"},
                {"rel": "bookmark", "href": f"{req.base}/compute/flavors/{fid}"},
            ],
        }
        if detail:
            view.update(
                {
                    "ram": flavor["memory_mb"],
                    "disk": flavor["root_gb"],
                    "swap": (flavor["swap"] or 0) if req.ge("2.75") else (flavor["swap"] or ""),
                    "OS-FLV-EXT-DATA:ephemeral": flavor["ephemeral_gb"],
                    "vcpus": flavor["vcpus"],
                    "os-flavor-access:is_public": flavor["is_public"],
                }
            )
            if not req.ge("2.102"):
                view["OS-FLV-DISABLED:disabled"] = False
                view["rxtx_factor"] = 1.0
            if req.ge("2.61"):
                view["extra_specs"] = dict(flavor["extra_specs"])
        if req.ge("2.55"):
            view["description"] = flavor["description"]
        return view

    def _flavors_index(self, req: _Request) -> _Response:
        with self._lock:
            flavors = [self._flavor_view(req, f, False) for f in self._flavors.values()]
        return self._ok(req, {"flavors": flavors})

    def _flavors_detail(self, req: _Request) -> _Response:
        with self._lock:
            flavors = [self._flavor_view(req, f, True) for f in self._flavors.values()]
        return self._ok(req, {"flavors": flavors})

    def _flavor_show(self, req: _Request, fid: str) -> _Response:
        self._no_query_params(req)
        with self._lock:
            flavor = self._flavors.get(fid)
            if flavor is None:
                raise _HTTPError(404, f"Flavor {fid} could not be found.")
            return self._ok(req, {"flavor": self._flavor_view(req, flavor, True)})

    def _flavor_extra_specs(self, req: _Request, fid: str) -> _Response:
        self._no_query_params(req)
        with self._lock:
            flavor = self._flavors.get(fid)
            if flavor is None:
                raise _HTTPError(404, f"Flavor {fid} could not be found.")
            return self._ok(req, {"extra_specs": dict(flavor["extra_specs"])})

    def _hypervisor_view(self, req: _Request, host: str, detail: bool) -> dict[str, Any]:
        num, hid = self._hypervisor_ids[host]
        svc = self._compute_service(host)
        view: dict[str, Any] = {
            "id": hid if req.ge("2.53") else num,
            "hypervisor_hostname": host,
            "state": "up" if self._service_is_up(svc) else "down",
            "status": "disabled" if svc.disabled else "enabled",
        }
        if detail:
            view.update(
                {
                    "host_ip": "127.0.0.1",
                    "hypervisor_type": "fake",
                    "hypervisor_version": 1000,
                    "service": {
                        "host": host,
                        "id": svc.uuid if req.ge("2.53") else svc.id,
                        "disabled_reason": svc.disabled_reason,
                    },
                }
            )
            if not req.ge("2.88"):
                used = len(self._alloc[host])
                view.update({"vcpus": 1000, "vcpus_used": used, "running_vms": used})
        return view

    def _hypervisors_index(self, req: _Request) -> _Response:
        with self._lock:
            views = [self._hypervisor_view(req, h, False) for h in self._hosts]
        return self._ok(req, {"hypervisors": views})

    def _hypervisors_detail(self, req: _Request) -> _Response:
        with self._lock:
            views = [self._hypervisor_view(req, h, True) for h in self._hosts]
        return self._ok(req, {"hypervisors": views})
