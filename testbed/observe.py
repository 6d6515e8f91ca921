"""What an operator would look at in Nova, through python-novaclient (an independent client,
not nova-ha's own code)."""

from __future__ import annotations

from typing import Any


class Observer:
    def __init__(self, cloud: Any, microversion: str = "2.60") -> None:
        from keystoneauth1 import session
        from keystoneauth1.identity import v3
        from novaclient import client

        auth = v3.Password(
            auth_url=cloud.auth_url,
            username=cloud.username,
            password=cloud.password,
            project_name=cloud.project_name,
            user_domain_name="Default",
            project_domain_name="Default",
        )
        self.nova = client.Client(
            microversion, session=session.Session(auth=auth, timeout=30), endpoint_type="public"
        )

    def server(self, server_id: str) -> dict[str, Any]:
        server = self.nova.servers.get(server_id)
        return {
            "id": server.id,
            "host": getattr(server, "OS-EXT-SRV-ATTR:host"),
            "status": server.status,
            "task": getattr(server, "OS-EXT-STS:task_state"),
            "name": server.name,
        }

    def servers(self, host: str | None = None) -> list[dict[str, Any]]:
        opts: dict[str, Any] = {"all_tenants": 1}
        if host:
            opts["host"] = host
        return [
            {
                "id": s.id,
                "host": getattr(s, "OS-EXT-SRV-ATTR:host"),
                "status": s.status,
                "task": getattr(s, "OS-EXT-STS:task_state"),
            }
            for s in self.nova.servers.list(search_opts=opts)
        ]

    def service(self, host: str) -> Any:
        return self.nova.services.list(host=host, binary="nova-compute")[0]

    def actions(self, server_id: str) -> list[str]:
        """The server's instance actions, newest first (evacuate, start, create...)."""
        return [a.action for a in self.nova.instance_action.list(server_id)]

    def evacuations(self, source: str) -> list[Any]:
        return [
            m for m in self.nova.migrations.list(migration_type="evacuation", source_compute=source)
        ]


IN_FLIGHT = ("accepted", "pre-migrating", "running", "migrating", "queued", "preparing")


def back_in_service(cloud: Any, host: str, timeout: float = 180.0) -> None:
    """Put a host back in service between tests, the safe way NovaCompute does: wait for its
    evacuations to finish, start its compute, lift forced_down, enable it. A compute started
    while an evacuation still ran leaves that migration 'done' for good (Nova 34): a second
    start (crash, start) completes it."""
    import time

    observer = Observer(cloud)
    end = time.monotonic() + timeout
    # A server broken on purpose (two evacuations at once) keeps its migration in flight
    # for good: wait a while, not forever.
    patience = time.monotonic() + min(60.0, timeout / 3)
    while (
        any(m.status in IN_FLIGHT for m in observer.evacuations(host))
        and time.monotonic() < patience
    ):
        time.sleep(0.5)
    cloud.start(host)
    restarted_at = time.monotonic()
    while True:
        svc = observer.service(host)
        try:
            if svc.forced_down:
                observer.nova.services.force_down(svc.id, False)
            elif svc.state == "up" and svc.status == "disabled":
                # Only once it is up: Nova lifts the host's COMPUTE_STATUS_DISABLED trait
                # through the running compute; enabled while down, the host would stay
                # unschedulable until the compute's next periodic sync.
                observer.nova.services.enable(svc.id)
            elif svc.state == "up":
                return
        except Exception:  # noqa: BLE001 - 'done' evacuations remain: the compute is starting
            if time.monotonic() - restarted_at > 20:
                cloud.crash(host)
                cloud.start(host)
                restarted_at = time.monotonic()
        if time.monotonic() > end:
            raise AssertionError(f"{host} did not come back in service")
        time.sleep(1)
