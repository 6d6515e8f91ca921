"""A small, typed Nova client on keystoneauth1: only what instance HA needs.

We talk REST through keystoneauth1's Adapter rather than python-novaclient: novaclient caps
microversions at its own release's maximum and hides status codes we act on (409 = already
under way, 400 = service still up). Every call has a timeout; connection errors and 5xx are
retried with backoff inside the caller's deadline; keystoneauth1 re-authenticates once on 401.
keystoneauth1 is imported only when a client is built, never on the metadata path.
"""

from __future__ import annotations

import datetime
import os
import random
import time
from dataclasses import dataclass
from typing import Any

from nova_ha.lib import log, params

LOG = log.get("nova")

# Newest microversion nova-ha knows the behaviour of (Nova 34.0.0's maximum).
MAX_MICROVERSION = (2, 104)
MIN_MICROVERSION = (2, 1)
# The image proxy (GET /images) exists only up to 2.35; it is how image properties are read.
IMAGE_PROXY_MICROVERSION = "2.35"
COMPUTE_BINARY = "nova-compute"
RETRY_STATUSES = frozenset({500, 502, 503, 504})


class Deadline:
    """An overall time budget shared by the calls of one action."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        return max(self.end - time.monotonic(), 0.0)

    def expired(self) -> bool:
        return self.remaining() <= 0


class NovaError(RuntimeError):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class NovaUnavailable(NovaError):
    """Keystone or Nova could not be reached (or kept failing) within the budget."""


def _parse_version(text: str) -> tuple[int, int]:
    major, _, minor = text.strip().partition(".")
    return int(major), int(minor or 0)


def version_text(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"


# ---- authentication -------------------------------------------------------------------------

def _clouds_yaml_paths() -> list[str]:
    explicit = os.environ.get("OS_CLIENT_CONFIG_FILE")
    home = os.path.expanduser("~")
    paths = [explicit] if explicit else []
    return paths + [os.path.join(os.getcwd(), "clouds.yaml"),
                    os.path.join(home, ".config", "openstack", "clouds.yaml"),
                    "/etc/openstack/clouds.yaml"]


def cloud_settings(name: str) -> dict[str, Any]:
    """The named cloud of clouds.yaml (merged with secure.yaml beside it), flattened."""
    import yaml  # noqa: PLC0415  (only when os_cloud is used)

    for path in _clouds_yaml_paths():
        if not os.path.isfile(path):
            continue
        with open(path) as stream:
            clouds = (yaml.safe_load(stream) or {}).get("clouds", {})
        if name not in clouds:
            continue
        cloud = dict(clouds[name] or {})
        secure = os.path.join(os.path.dirname(path), "secure.yaml")
        if os.path.isfile(secure):
            with open(secure) as stream:
                extra = ((yaml.safe_load(stream) or {}).get("clouds", {}) or {}).get(name, {})
            cloud = _merge(cloud, extra or {})
        flat = {f"os_{k}": v for k, v in (cloud.get("auth") or {}).items()}
        for key in ("region_name", "interface", "cacert", "cert", "key"):
            if key in cloud:
                flat[f"os_{key}"] = cloud[key]
        if "verify" in cloud:
            flat["os_insecure"] = not cloud["verify"]
        return flat
    raise NovaError(f"parameter 'os_cloud': cloud {name!r} not found in "
                    f"{', '.join(p for p in _clouds_yaml_paths())}")


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def auth_settings(parsed: params.Parsed) -> dict[str, Any]:
    """os_* settings: clouds.yaml first, then parameters given here, then scripts."""
    settings: dict[str, Any] = {}
    if parsed.get("os_cloud"):
        settings.update(cloud_settings(parsed["os_cloud"]))
    for name in parsed.given:
        if name.startswith("os_") and parsed.get(name) not in (None, ""):
            settings[name] = parsed[name]
    for name in ("os_user_domain_name", "os_project_domain_name", "os_interface",
                 "os_api_timeout", "os_compute_api_version"):
        settings.setdefault(name, parsed.get(name))
    if parsed.get("os_password_script") and not parsed.get("os_password"):
        settings["os_password"] = params.run_secret_script("os_password_script",
                                                           parsed["os_password_script"])
    interface = str(settings.get("os_interface") or "internal").lower()
    settings["os_interface"] = interface[:-3] if interface.endswith("url") else interface
    log.REDACTOR.add(*(str(settings[k]) for k in ("os_password",
                                                  "os_application_credential_secret")
                       if settings.get(k)))
    return settings


def make_session(settings: dict[str, Any]) -> Any:
    from keystoneauth1 import session as ks_session  # noqa: PLC0415
    from keystoneauth1.identity import v3  # noqa: PLC0415

    if settings.get("os_application_credential_id"):
        auth = v3.ApplicationCredential(
            auth_url=settings["os_auth_url"],
            application_credential_id=settings["os_application_credential_id"],
            application_credential_secret=settings.get("os_application_credential_secret"))
    else:
        auth = v3.Password(
            auth_url=settings.get("os_auth_url"), username=settings.get("os_username"),
            password=settings.get("os_password"), project_name=settings.get("os_project_name"),
            user_domain_name=settings.get("os_user_domain_name"),
            project_domain_name=settings.get("os_project_domain_name"))
    verify: bool | str = True
    if settings.get("os_insecure") in (True, "1", "true", "True"):
        verify = False
    elif settings.get("os_cacert"):
        verify = settings["os_cacert"]
    cert = None
    if settings.get("os_cert"):
        cert = (settings["os_cert"], settings["os_key"]) if settings.get("os_key") else \
            settings["os_cert"]
    # One HTTP connection per concurrent request (requests keeps 10 per host by default:
    # with max_parallel=16 six of them would be opened and thrown away each round).
    import requests  # noqa: PLC0415

    http = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=4,
                                            pool_maxsize=int(settings.get("pool_size") or 10))
    http.mount("https://", adapter)
    http.mount("http://", adapter)
    return ks_session.Session(auth=auth, verify=verify, cert=cert, session=http,
                              timeout=float(settings.get("os_api_timeout") or 10))


# ---- the client -------------------------------------------------------------------------------

@dataclass
class Service:
    id: str
    host: str
    status: str  # enabled | disabled
    state: str  # up | down
    forced_down: bool
    disabled_reason: str | None
    updated_at: str | None = None  # the last heartbeat (or change), by Nova's clock

    @classmethod
    def from_api(cls, body: dict[str, Any]) -> Service:
        return cls(id=str(body["id"]), host=body["host"], status=body.get("status", ""),
                   state=body.get("state", ""), forced_down=bool(body.get("forced_down")),
                   disabled_reason=body.get("disabled_reason"),
                   updated_at=body.get("updated_at"))


class Nova:
    """Nova's compute API at the newest microversion both sides support."""

    def __init__(self, session: Any, interface: str = "internal", region: str | None = None,
                 timeout: float = 10.0, cap: str = "auto",
                 endpoint_override: str | None = None) -> None:
        from keystoneauth1 import adapter  # noqa: PLC0415

        self.timeout = timeout
        self._adapter = adapter.Adapter(session, service_type="compute", interface=interface,
                                        region_name=region, endpoint_override=endpoint_override)
        self._cap = MAX_MICROVERSION if cap in ("", "auto", None) else _parse_version(cap)
        self._microversion: str | None = None
        self.token_cache: Any = None  # tokens.TokenCache, set by from_params
        self._token_remembered = False

    @classmethod
    def from_params(cls, parsed: params.Parsed) -> Nova:
        settings = auth_settings(parsed)
        settings["pool_size"] = int(parsed.get("max_parallel") or 10) + 4
        session = make_session(settings)
        nova = cls(session, interface=settings["os_interface"],
                   region=settings.get("os_region_name"),
                   timeout=float(settings.get("os_api_timeout") or 10),
                   cap=str(settings.get("os_compute_api_version") or "auto"))
        if parsed.get("os_token_cache", True):
            from nova_ha.lib.tokens import TokenCache

            nova.token_cache = TokenCache(session.auth)
            nova.token_cache.load()
        return nova

    def _remember_token(self) -> None:
        """Keep the token for the next run (once per client, after Keystone answered)."""
        if self.token_cache is not None and not self._token_remembered:
            self._token_remembered = True
            self.token_cache.save()

    # -- plumbing --

    def request(self, method: str, path: str, deadline: Deadline, body: Any = None,
                microversion: str | None = None, ok: tuple[int, ...] = (200, 202, 204),
                retries: int = 4) -> Any:
        """One API call: bounded by the deadline, 5xx/connection errors retried."""
        from keystoneauth1 import exceptions as ks_exc  # noqa: PLC0415

        optimistic = False
        if microversion is None:
            if self._microversion is None and method == "GET":
                # Optimistic negotiation: ask at our newest; a 2xx proves Nova supports it
                # (one round trip less on every fence), a 406 sends us to discovery.
                microversion, optimistic = version_text(self._cap), True
            else:
                microversion = self.microversion(deadline)
        attempt = 0
        while True:
            attempt += 1
            timeout = min(self.timeout, max(deadline.remaining(), 0.5))
            try:
                resp = self._adapter.request(path, method, json=body, raise_exc=False,
                                             microversion=microversion, timeout=timeout,
                                             connect_retries=0)
            except (ks_exc.ConnectFailure, ks_exc.ConnectionError, ks_exc.ConnectTimeout,
                    ks_exc.UnknownConnectionError) as err:
                problem: str = f"cannot reach Nova ({type(err).__name__})"
                status = None
            except ks_exc.http.Unauthorized:
                raise NovaError("Keystone refused the credentials (HTTP 401)", 401) from None
            except (ks_exc.DiscoveryFailure, ks_exc.EndpointNotFound, ks_exc.CatalogException
                    ) as err:
                raise NovaUnavailable(f"Keystone: {err}") from None
            except ks_exc.ClientException as err:
                problem, status = f"{type(err).__name__}: {err}", None
            else:
                if resp.status_code in ok:
                    self._remember_token()
                    if optimistic:
                        self._microversion = microversion
                    return resp.json() if resp.content else {}
                if optimistic and resp.status_code == 406:
                    microversion, optimistic = self.microversion(deadline), False
                    continue
                problem, status = _error_text(resp), resp.status_code
                if status not in RETRY_STATUSES:
                    raise NovaError(f"{method} {path}: HTTP {status}: {problem}", status)
            if attempt > retries or deadline.remaining() < 0.5:
                raise NovaUnavailable(f"{method} {path}: {problem}", status)
            pause = min(0.25 * 2 ** (attempt - 1) * (1 + random.random() / 4),
                        deadline.remaining() / 2)
            LOG.debug("%s %s failed (%s); retrying in %.2fs", method, path, problem, pause)
            time.sleep(pause)

    def authenticate(self) -> None:
        """Get the token now, so that calls started together do not each ask Keystone."""
        from keystoneauth1 import exceptions as ks_exc  # noqa: PLC0415

        try:
            self._adapter.get_token()
            self._remember_token()
        except ks_exc.http.Unauthorized:
            raise NovaError("Keystone refused the credentials (HTTP 401)", 401) from None
        except ks_exc.ClientException as err:
            raise NovaUnavailable(f"Keystone: {type(err).__name__}: {err}") from None

    def microversion(self, deadline: Deadline) -> str:
        """Newest microversion both Nova and nova-ha support (asked once per client)."""
        if self._microversion is None:
            doc = self.request("GET", "/", deadline, microversion="2.1", ok=(200,))
            version = doc.get("version") or {}
            server_max = _parse_version(version.get("version") or "2.1")
            chosen = min(server_max, self._cap)
            if chosen < MIN_MICROVERSION:
                raise NovaError("Nova does not support microversions")
            self._microversion = version_text(chosen)
            LOG.debug("Nova %s supports up to %s; using %s", version.get("id"),
                      version.get("version"), self._microversion)
        return self._microversion

    def at_least(self, deadline: Deadline, version: tuple[int, int]) -> bool:
        return _parse_version(self.microversion(deadline)) >= version

    # -- services --

    def services(self, deadline: Deadline, host: str | None = None) -> list[Service]:
        query = f"/os-services?binary={COMPUTE_BINARY}" + (f"&host={host}" if host else "")
        return [Service.from_api(s) for s in self.request("GET", query, deadline)["services"]]

    def service(self, deadline: Deadline, host: str) -> Service:
        found = [s for s in self.services(deadline, host) if s.host == host]
        if not found:
            raise NovaError(f"Nova has no {COMPUTE_BINARY} service on host {host!r}", 404)
        return found[0]

    def update_service(self, deadline: Deadline, svc: Service, *, forced_down: bool | None = None,
                       disabled_reason: str | None = None, enable: bool | None = None) -> None:
        """One change to a compute service, by UUID at >= 2.53, by host on older clouds."""
        if self.at_least(deadline, (2, 53)):
            body: dict[str, Any] = {}
            if forced_down is not None:
                body["forced_down"] = forced_down
            if enable is True:
                body["status"] = "enabled"
            elif disabled_reason is not None:
                body.update(status="disabled", disabled_reason=disabled_reason)
            self.request("PUT", f"/os-services/{svc.id}", deadline, body=body)
            return
        target = {"host": svc.host, "binary": COMPUTE_BINARY}
        if forced_down is not None:
            self.request("PUT", "/os-services/force-down", deadline,
                         body=dict(target, forced_down=forced_down))
        if enable is True:
            self.request("PUT", "/os-services/enable", deadline, body=target)
        elif disabled_reason is not None:
            self.request("PUT", "/os-services/disable-log-reason", deadline,
                         body=dict(target, disabled_reason=disabled_reason))

    # -- servers --

    def _servers_detail(self, deadline: Deadline, query: str,
                        retries: int = 4) -> list[dict[str, Any]]:
        """All pages of a servers listing: Nova's page size is its own (api.max_limit),
        so follow its 'next' links until there is none."""
        servers: list[dict[str, Any]] = []
        marker = None
        while True:
            page_query = query + (f"&marker={marker}" if marker else "")
            body = self.request("GET", f"/servers/detail?{page_query}", deadline,
                                retries=retries)
            page = body["servers"]
            servers += page
            links = body.get("servers_links") or []
            if not page or not any(link.get("rel") == "next" for link in links):
                return servers
            marker = page[-1]["id"]

    def servers_on(self, deadline: Deadline, host: str) -> list[dict[str, Any]]:
        """Every server of a host, all tenants, with flavor extra_specs embedded (>= 2.47)."""
        return self._servers_detail(deadline, f"all_tenants=1&host={host}")

    def servers_changed_since(self, deadline: Deadline, since: str) -> list[dict[str, Any]]:
        """Servers of all tenants changed since an ISO 8601 time, deleted ones included."""
        return self._servers_detail(deadline, f"all_tenants=1&changes-since={since}",
                                    retries=1)

    def server(self, deadline: Deadline, server_id: str) -> dict[str, Any]:
        return self.request("GET", f"/servers/{server_id}", deadline)["server"]

    def image_properties(self, deadline: Deadline, image_id: str) -> dict[str, Any]:
        try:
            image = self.request("GET", f"/images/{image_id}", deadline,
                                 microversion=IMAGE_PROXY_MICROVERSION)["image"]
        except NovaError as err:
            if err.status == 404:
                return {}
            raise
        return image.get("metadata") or {}

    def evacuate(self, deadline: Deadline, server_id: str, host: str | None = None) -> bool:
        """Ask Nova to evacuate, exactly once. False if Nova refused it with 409.

        Never retried blindly: Nova accepts a second evacuation of a server being rebuilt and
        the two rebuilds break it. When the answer is lost (timeout, connection reset, 5xx),
        Nova itself says whether the request was applied: the server's task and its
        evacuation migrations. Raises NovaUnavailable only when it was not applied.
        """
        spec: dict[str, Any] = {}
        if host:
            spec["host"] = host
        if not self.at_least(deadline, (2, 14)):
            spec["onSharedStorage"] = False
        asked_at = time.time()
        try:
            self.request("POST", f"/servers/{server_id}/action", deadline,
                         body={"evacuate": spec}, ok=(200, 202), retries=0)
        except NovaUnavailable:
            if self._evacuation_applied(deadline, server_id, asked_at):
                LOG.info("server %s: the evacuation answer was lost but Nova applied it",
                         server_id)
                return True
            raise
        except NovaError as err:
            if err.status == 409:
                return False
            raise
        return True

    def _evacuation_applied(self, deadline: Deadline, server_id: str, since: float) -> bool:
        server = self.server(deadline, server_id)
        if server.get("OS-EXT-STS:task_state") in ("rebuilding", "rebuild_block_device_mapping",
                                                   "rebuild_spawning"):
            return True
        start = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(since - 60))
        return any(str(m.get("created_at") or "")[:19] >= start
                   and m.get("status") not in ("error", "failed", "cancelled")
                   for m in self.evacuation_migrations(deadline, server_id=server_id))

    def instance_actions(self, deadline: Deadline, server_id: str) -> list[dict[str, Any]]:
        """The server's recorded actions, newest first."""
        return self.request("GET", f"/servers/{server_id}/os-instance-actions",
                            deadline)["instanceActions"]

    def start_server(self, deadline: Deadline, server_id: str) -> None:
        self.request("POST", f"/servers/{server_id}/action", deadline, body={"os-start": None})

    def reset_state(self, deadline: Deadline, server_id: str, state: str) -> None:
        self.request("POST", f"/servers/{server_id}/action", deadline,
                     body={"os-resetState": {"state": state}})

    def evacuation_migrations(self, deadline: Deadline, source_host: str | None = None,
                              server_id: str | None = None) -> list[dict[str, Any]]:
        query = "/os-migrations?migration_type=evacuation"
        if source_host:
            query += f"&source_compute={source_host}"
        if server_id:
            query += f"&instance_uuid={server_id}"
        return self.request("GET", query, deadline)["migrations"]


def _error_text(resp: Any) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:200]
    if isinstance(body, dict) and body:
        inner = next(iter(body.values()))
        if isinstance(inner, dict) and "message" in inner:
            return str(inner["message"])
    return str(body)[:200]


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
