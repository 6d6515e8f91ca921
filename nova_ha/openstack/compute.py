"""Nova's compute API: only the calls instance HA needs, returning typed views.

The writes that change a failed host in Nova (forcing its service down, evacuating or
resetting its servers) take a ``PowerOffConfirmed`` of that host (nova_ha.lib.proof): code
that has no proof cannot make the call, and a proof of another host is refused (WrongHost)
before anything is sent. Reads need no proof, and neither do the writes of a host that is
up (enabling a service, lifting a force-down when the host rejoins, starting a server
Nova landed elsewhere).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Literal

from nova_ha.lib import clock, log
from nova_ha.openstack import placement
from nova_ha.openstack.exceptions import Conflict, NotFound, NovaError, Unavailable, WrongHost
from nova_ha.openstack.transport import (
    Deadline,
    Transport,
    excerpt,
    parse_version,
    printable,
    quote_id,
    reply_field,
    reply_records,
    version_text,
)
from nova_ha.openstack.views import Hypervisor, Migration, Server, Service

if TYPE_CHECKING:
    from nova_ha.lib import params
    from nova_ha.lib.proof import PowerOffConfirmed

LOG = log.get("nova")

# The image proxy (GET /images) exists only up to 2.35; it is how image properties are read.
IMAGE_PROXY_MICROVERSION = "2.35"
# From 2.95 Nova lands an evacuated server SHUTOFF (a guard against a source that may still
# run it) and it must be started again: a second action. nova-ha's source is confirmed off,
# so evacuations are asked at the newest microversion below it: servers land as they were.
EVACUATE_BELOW = (2, 95)
COMPUTE_BINARY = "nova-compute"
MAX_PAGES = 1000  # pages of one server listing
MAX_LISTED = 200_000  # servers of one listing


def _require(proof: PowerOffConfirmed, host: str | None, what: str) -> None:
    """The proof covers `host`, or the write is refused before it is sent."""
    if host != proof.host:
        raise WrongHost(
            f"{what}: refused: the power-off confirmed is that of {proof.host}, "
            f"not of {excerpt(host, 80)}"
        )


class Nova:
    """Nova's compute API at the newest microversion both sides support."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.timeout = transport.timeout
        self.request = transport.request
        self.authenticate = transport.authenticate
        self.microversion = transport.microversion
        self.at_least = transport.at_least
        self.server_time = transport.server_time
        self._placement: Transport | None = None

    @classmethod
    def from_params(cls, parsed: params.Parsed) -> Nova:
        """The client of the os_* parameters. Any problem making it is a NovaError."""
        from nova_ha.openstack import auth

        openstack = parsed.settings.openstack
        settings = auth.auth_settings(openstack)
        # Connections for every evacuation in flight, and a few for the reads beside them.
        settings["pool_size"] = parsed.settings.evacuation.max_parallel + 4
        session = auth.make_session(settings)
        nova = cls(
            Transport(
                session,
                interface=settings["os_interface"],
                region=settings.get("os_region_name"),
                timeout=float(settings.get("os_api_timeout") or 10),
                cap=str(settings.get("os_compute_api_version") or "auto"),
            )
        )
        if openstack.token_cache:
            from nova_ha.openstack.token_cache import TokenCache

            nova.transport.use_token_cache(TokenCache(session.auth))
        return nova

    # -- services --

    def services(self, deadline: Deadline, host: str | None = None) -> list[Service]:
        query = f"/os-services?binary={COMPUTE_BINARY}" + (
            f"&host={quote_id(host)}" if host else ""
        )
        what = printable(f"GET {query}")
        return [
            Service.from_api(s, what)
            for s in reply_field(
                self.request("GET", query, deadline), "services", (list,), what, required=True
            )
        ]

    def service(self, deadline: Deadline, host: str) -> Service:
        found = [s for s in self.services(deadline, host) if s.host == host]
        if not found:
            raise NotFound(f"Nova has no {COMPUTE_BINARY} service on host {host!r}", 404)
        return found[0]

    def force_down(self, deadline: Deadline, svc: Service, proof: PowerOffConfirmed) -> None:
        """Force a powered-off host's compute service down: what evacuation needs."""
        _require(proof, svc.host, f"forcing down {COMPUTE_BINARY} on {svc.host}")
        self._update_service(deadline, svc, forced_down=True)

    def update_service(
        self,
        deadline: Deadline,
        svc: Service,
        *,
        forced_down: Literal[False] | None = None,
        disabled_reason: str | None = None,
        enable: bool | None = None,
    ) -> None:
        """A change of a service that needs no proof: lift a force-down (the host rejoins),
        enable, disable with a reason. Forcing down is force_down's."""
        self._update_service(
            deadline, svc, forced_down=forced_down, disabled_reason=disabled_reason, enable=enable
        )

    def _update_service(
        self,
        deadline: Deadline,
        svc: Service,
        *,
        forced_down: bool | None = None,
        disabled_reason: str | None = None,
        enable: bool | None = None,
    ) -> None:
        """One change to a compute service, by UUID at >= 2.53, by host on older clouds."""
        if self.at_least(deadline, (2, 53)):
            body = _service_update(forced_down, disabled_reason, enable)
            self.request(
                "PUT", f"/os-services/{quote_id(svc.id)}", deadline, body=body, parse=False
            )
            return
        target = {"host": svc.host, "binary": COMPUTE_BINARY}
        calls: list[tuple[str, dict[str, Any]]] = []
        if forced_down is not None:
            calls.append(("force-down", dict(target, forced_down=forced_down)))
        if enable is True:
            calls.append(("enable", target))
        elif disabled_reason is not None:
            calls.append(("disable-log-reason", dict(target, disabled_reason=disabled_reason)))
        for call, body in calls:
            self.request("PUT", f"/os-services/{call}", deadline, body=body, parse=False)

    def hypervisors(self, deadline: Deadline) -> list[Hypervisor]:
        what = "GET /os-hypervisors/detail"
        return [
            Hypervisor.from_api(h, what)
            for h in reply_records(
                self.request("GET", "/os-hypervisors/detail", deadline), "hypervisors", what, {}
            )
        ]

    def placement_rooms(
        self, deadline: Deadline, vcpus: int, ram_mb: int
    ) -> dict[str, placement.Room]:
        """Placement's resource providers (by UUID: the hypervisors' ids from 2.53) with room
        for a server of that size, through the same Keystone session."""
        if self._placement is None:
            self._placement = self.transport.beside(placement.SERVICE_TYPE)
        return placement.rooms(self._placement, deadline, vcpus, ram_mb)

    # -- servers --

    def list_servers(self, deadline: Deadline, query: str, retries: int = 4) -> list[Server]:
        """All pages of a servers listing: Nova's page size is its own (api.max_limit),
        so follow its 'next' links until there is none. Bounded: the deadline is checked
        before each page, a marker seen before (a 'next' link that loops) and more than
        MAX_PAGES pages or MAX_LISTED servers are NovaErrors."""
        servers: list[Server] = []
        seen: set[str] = set()
        marker = None
        pages = 0  # pages received
        while True:
            if pages == MAX_PAGES:
                raise NovaError(
                    f"listing servers ({query}): Nova still had a next page after {MAX_PAGES} pages"
                )
            if pages and deadline.expired():
                raise Unavailable(f"listing servers ({query}): out of time after {pages} pages")
            page, more = self._servers_page(deadline, query, marker, pages, retries)
            pages += 1
            servers += page
            if len(servers) > MAX_LISTED:
                raise NovaError(f"listing servers ({query}): more than {MAX_LISTED} servers")
            if not page or not more:
                return servers
            marker = page[-1].id
            if marker in seen:
                raise NovaError(
                    f"listing servers ({query}): Nova's page {pages} ends with "
                    f"server {excerpt(marker, 80)} again: its pagination loops"
                )
            seen.add(marker)

    def _servers_page(
        self, deadline: Deadline, query: str, marker: str | None, pages: int, retries: int
    ) -> tuple[list[Server], bool]:
        """One page of a servers listing, and whether Nova links a next one."""
        what = printable(f"GET /servers/detail?{query}") + (f" (page {pages + 1})" if pages else "")
        page_query = query + (f"&marker={quote_id(marker)}" if marker else "")
        body = self.request("GET", f"/servers/detail?{page_query}", deadline, retries=retries)
        page = [Server.from_api(s, what) for s in reply_records(body, "servers", what, {})]
        links = (
            reply_records(body, "servers_links", what, {"rel": ((str,), False)})
            if body.get("servers_links") is not None
            else []
        )
        return page, any(link.get("rel") == "next" for link in links)

    def all_servers(self, deadline: Deadline) -> list[Server]:
        """Every server of every tenant (1000 a page, Nova's usual cap)."""
        return self.list_servers(deadline, "all_tenants=1&limit=1000")

    def servers_on(self, deadline: Deadline, host: str) -> list[Server]:
        """Every server of a host, all tenants, with flavor extra_specs embedded (>= 2.47)."""
        return self.list_servers(deadline, f"all_tenants=1&host={quote_id(host)}")

    def servers_changed_since(self, deadline: Deadline, since: str) -> list[Server]:
        """Servers of all tenants changed since an ISO 8601 time, deleted ones included."""
        return self.list_servers(deadline, f"all_tenants=1&changes-since={since}", retries=1)

    def server(self, deadline: Deadline, server_id: str) -> Server:
        path = f"/servers/{quote_id(server_id)}"
        body = self.request("GET", path, deadline)
        what = printable(f"GET {path}")
        return Server.from_api(reply_field(body, "server", (dict,), what, required=True), what)

    def image_properties(self, deadline: Deadline, image_id: str) -> dict[str, Any]:
        path = f"/images/{quote_id(image_id)}"
        what = printable(f"GET {path}")
        try:
            body = self.request("GET", path, deadline, microversion=IMAGE_PROXY_MICROVERSION)
        except NotFound:
            return {}
        image = reply_field(body, "image", (dict,), what, required=True)
        return reply_field(image, "metadata", (dict,), what) or {}

    def evacuate(
        self,
        deadline: Deadline,
        server: Server,
        proof: PowerOffConfirmed,
        target: str | None = None,
    ) -> bool:
        """Ask Nova to evacuate a server of the powered-off host, exactly once (to `target`,
        or where its scheduler chooses). False if Nova refused it with 409.

        Never retried blindly: Nova accepts a second evacuation of a server being rebuilt and
        the two rebuilds break it. When the answer is lost (timeout, connection reset, 5xx),
        Nova itself says whether the request was applied: the server's task and its
        evacuation migrations. Raises Unavailable only when it was not applied.
        """
        _require(proof, server.host, f"evacuating server {server.id}")
        microversion = self.evacuate_microversion(deadline)
        asked_at = time.time()
        try:
            # parse=False: the status is the answer. The body (adminPass below 2.14) is
            # neither needed nor logged unredacted; a malformed one is no failure.
            self.request(
                "POST",
                f"/servers/{quote_id(server.id)}/action",
                deadline,
                body={"evacuate": _evacuate_spec(target, microversion)},
                microversion=microversion,
                ok=(200, 202),
                retries=0,
                parse=False,
            )
        except Unavailable:
            if self._evacuation_applied(deadline, server.id, asked_at):
                LOG.info("server %s: the evacuation answer was lost but Nova applied it", server.id)
                return True
            raise
        except Conflict:
            return False
        return True

    def evacuate_microversion(self, deadline: Deadline) -> str:
        """The newest microversion below EVACUATE_BELOW that Nova has: one action per server."""
        newest = parse_version(self.microversion(deadline))
        below = (EVACUATE_BELOW[0], EVACUATE_BELOW[1] - 1)
        return version_text(min(newest, below))

    def _evacuation_applied(self, deadline: Deadline, server_id: str, since: float) -> bool:
        if self.server(deadline, server_id).rebuilding:
            return True
        start = clock.iso_utc(since - 60)[:19]  # without the Z
        return any(
            (m.created_at or "")[:19] >= start and not m.failed
            for m in self.evacuation_migrations(deadline, server_id=server_id)
        )

    def instance_actions(self, deadline: Deadline, server_id: str) -> list[str]:
        """The names of the server's recorded actions, newest first."""
        return [action.get("action") or "" for action in self._actions(deadline, server_id)]

    def _actions(self, deadline: Deadline, server_id: str) -> list[dict[str, Any]]:
        path = f"/servers/{quote_id(server_id)}/os-instance-actions"
        return reply_records(
            self.request("GET", path, deadline),
            "instanceActions",
            printable(f"GET {path}"),
            {"action": ((str,), False), "request_id": ((str,), False)},
        )

    def rebuild_taken_up_at(self, deadline: Deadline, server_id: str, host: str) -> float | None:
        """When `host`'s nova-compute took up the server's newest evacuation (epoch, by
        Nova's clock, to the second), or None if it has not: its compute_rebuild_instance
        event is recorded the moment it does. Not taken up, the request waits in the host's
        message queue and runs when the host comes back."""
        newest = next(
            (a for a in self._actions(deadline, server_id) if a.get("action") == "evacuate"),
            None,
        )
        if newest is None or not newest.get("request_id"):
            return None
        path = (
            f"/servers/{quote_id(server_id)}/os-instance-actions/{quote_id(newest['request_id'])}"
        )
        what = printable(f"GET {path}")
        action = reply_field(
            self.request("GET", path, deadline), "instanceAction", (dict,), what, required=True
        )
        events = reply_records(
            action, "events", what, {"event": ((str,), False), "start_time": ((str,), False)}
        )
        times = [
            clock.epoch((e.get("start_time") or "")[:19] + "Z") or 0.0
            for e in events
            if e.get("event") == "compute_rebuild_instance" and e.get("host") in (None, host)
        ]
        return max(times) if times else None

    def start_server(self, deadline: Deadline, server_id: str) -> None:
        """Start a stopped server: one Nova landed stopped on its new host (from 2.95), or
        one the instance monitor stopped after its guest failed."""
        self._power_action(deadline, server_id, "os-start")

    def stop_server(self, deadline: Deadline, server_id: str) -> None:
        """Stop a server whose guest failed on a healthy host (instance HA): Nova powers
        off what is left of the guest and shows it SHUTOFF."""
        self._power_action(deadline, server_id, "os-stop")

    def _power_action(self, deadline: Deadline, server_id: str, action: str) -> None:
        self.request(
            "POST",
            f"/servers/{quote_id(server_id)}/action",
            deadline,
            body={action: None},
            parse=False,
        )

    def reset_state(
        self, deadline: Deadline, server: Server, state: str, proof: PowerOffConfirmed
    ) -> None:
        """Reset a server of the powered-off host (its state lived in the host's memory)."""
        _require(proof, server.host, f"resetting server {server.id}")
        self.request(
            "POST",
            f"/servers/{quote_id(server.id)}/action",
            deadline,
            body={"os-resetState": {"state": state}},
            parse=False,
        )

    def evacuation_migrations(
        self, deadline: Deadline, source_host: str | None = None, server_id: str | None = None
    ) -> list[Migration]:
        query = "/os-migrations?migration_type=evacuation"
        if source_host:
            query += f"&source_compute={quote_id(source_host)}"
        if server_id:
            query += f"&instance_uuid={quote_id(server_id)}"
        what = printable(f"GET {query}")
        return [
            Migration.from_api(m, what)
            for m in reply_records(self.request("GET", query, deadline), "migrations", what, {})
        ]


def _service_update(
    forced_down: bool | None, disabled_reason: str | None, enable: bool | None
) -> dict[str, Any]:
    """The body of PUT /os-services/{id} (2.53) for one change to a compute service."""
    body: dict[str, Any] = {}
    if forced_down is not None:
        body["forced_down"] = forced_down
    if enable is True:
        body["status"] = "enabled"
    elif disabled_reason is not None:
        body.update(status="disabled", disabled_reason=disabled_reason)
    return body


def _evacuate_spec(target: str | None, microversion: str) -> dict[str, Any]:
    """The body of an evacuate action: the target (none: the scheduler chooses); below 2.14
    Nova also wants to be told the storage is not shared."""
    spec: dict[str, Any] = {"host": target} if target else {}
    if parse_version(microversion) < (2, 14):
        spec["onSharedStorage"] = False
    return spec
