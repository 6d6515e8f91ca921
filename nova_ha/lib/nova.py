"""A small, typed Nova client on keystoneauth1: only what instance HA needs.

We talk REST through keystoneauth1's Adapter rather than python-novaclient: novaclient caps
microversions at its own release's maximum and hides status codes we act on (409 = already
under way, 400 = service still up). Every call has a timeout; connection errors and 5xx are
retried with backoff inside the caller's deadline; keystoneauth1 re-authenticates once on 401.
keystoneauth1 is imported only when a client is built, never on the metadata path.

Every reply is read defensively: at most MAX_BODY bytes within the call's time, decoded as a
JSON object and checked for the shape nova-ha relies on; anything else is a NovaError with a
short, printable excerpt, never a raw ValueError/KeyError/TypeError. A Keystone token and
catalog reused from the cache (tokens.py) that do not work (the endpoint moved: connection
refused or 404; a damaged state) are dropped, and the call is retried once with a new token.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import random
import re
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from nova_ha.lib import log, params

LOG = log.get("nova")

# Newest microversion nova-ha knows the behaviour of (Nova 34.0.0's maximum).
MAX_MICROVERSION = (2, 104)
MIN_MICROVERSION = (2, 1)
# The image proxy (GET /images) exists only up to 2.35; it is how image properties are read.
IMAGE_PROXY_MICROVERSION = "2.35"
COMPUTE_BINARY = "nova-compute"
RETRY_STATUSES = frozenset({500, 502, 503, 504})
# Methods that may be sent again after an answer was lost (never POST: a second evacuation).
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE"})
MAX_BODY = 16 << 20  # bytes of one reply (decoded); a larger one is a NovaError
MAX_PAGES = 1000  # pages of one server listing
MAX_LISTED = 200_000  # servers of one listing
EXCERPT = 200  # characters of a reply quoted in an error message
DEBUG_EXCERPT = 2000  # characters of a reply body logged in verbose mode


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


# ---- replies ----------------------------------------------------------------------------------

REDACTED = "******"
# A password-like key and its value, in JSON or in free text: adminPass (Nova's evacuate
# reply below 2.14), password, secret, token, credential. Key length bounded: no backtracking
# storm on a long word.
_SECRET_PAIR = re.compile(
    r"""(?i)((?<![\w-])["']?[\w-]{0,40}(?:pass|secret|token|credential)[\w-]{0,40}["']?"""
    r"""\s*[:=]\s*)("(?:[^"\\]|\\.)*"?|'[^']*'?|[^\s,;&}\]]+)""")
_SPACES = re.compile(r"\s+")


def redact_text(text: str) -> str:
    """The text without the values of password-like keys (JSON or key=value)."""
    return _SECRET_PAIR.sub(lambda m: m.group(1) + (
        f'"{REDACTED}"' if m.group(2).startswith('"') else REDACTED), text)


def _q(value: Any) -> str:
    """A value from Nova or the parameters, quoted into a URL path or query: an id such as
    '../os-services' or 'a&host=b' names nothing else."""
    return quote(str(value), safe="")


def _printable(text: str) -> str:
    """Control and separator characters escaped: a reply is data, never a line of its own."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
                   for ch in text)


def excerpt(data: bytes | str | Any, limit: int = EXCERPT) -> str:
    """At most `limit` printable characters of a reply (or of a decoded value), redacted."""
    if isinstance(data, bytes | bytearray):
        text = bytes(data[:limit * 4]).decode("utf-8", "replace")
    elif isinstance(data, str):
        text = data[:limit * 2]
    else:
        try:
            text = json.dumps(data, default=str)[:limit * 2]
        except (ValueError, TypeError, RecursionError):
            text = f"<{type(data).__name__}>"
    text = _printable(redact_text(_SPACES.sub(" ", text[:limit * 2]).strip()))
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _kind(value: Any) -> str:
    return "null" if value is None else {dict: "an object", list: "a list", str: "a string",
                                         bool: "a boolean", int: "a number",
                                         float: "a number"}.get(type(value), type(value).__name__)


def _decode(data: bytes, what: str) -> dict[str, Any]:
    """A reply body as a JSON object ({} when empty)."""
    if not data:
        return {}
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):
        raise NovaError(f"{what}: Nova's reply is not JSON: {excerpt(data)}") from None
    if not isinstance(body, dict):
        raise NovaError(f"{what}: Nova's reply is {_kind(body)}, not a JSON object: "
                        f"{excerpt(data)}")
    return body


def _field(obj: dict[str, Any], key: str, kinds: tuple[type, ...], what: str,
           required: bool = False) -> Any:
    """obj[key], of one of `kinds` (or absent/null unless required): else a NovaError."""
    value = obj.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        wanted = " or ".join(_kind(k()) for k in kinds)
        found = f"{_kind(value)}, not {wanted}" if key in obj else f"missing ({wanted})"
        raise NovaError(f"{what}: malformed reply from Nova: {key!r} is {found}: "
                        f"{excerpt(obj)}")
    return value


def _records(body: dict[str, Any], key: str, what: str,
             fields: dict[str, tuple[tuple[type, ...], bool]]) -> list[dict[str, Any]]:
    """body[key]: a list of objects whose `fields` have the expected types."""
    items = _field(body, key, (list,), what, required=True)
    for item in items:
        if not isinstance(item, dict):
            raise NovaError(f"{what}: malformed reply from Nova: an item of {key!r} is "
                            f"{_kind(item)}: {excerpt(item)}")
        for name, (kinds, required) in fields.items():
            _field(item, name, kinds, what, required)
    return items


# What nova-ha reads of Nova's records (callers use .get on the others).
_SERVER_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "id": ((str,), True), "name": ((str,), False), "status": ((str,), False),
    "OS-EXT-SRV-ATTR:host": ((str,), False), "OS-EXT-STS:task_state": ((str,), False),
    "OS-EXT-STS:vm_state": ((str,), False), "flavor": ((dict,), False),
    "metadata": ((dict,), False), "image": ((dict, str), False), "fault": ((dict,), False)}
_MIGRATION_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "instance_uuid": ((str,), True), "status": ((str,), False),
    "created_at": ((str,), False), "id": ((int,), False)}
_ACTION_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {"action": ((str,), False)}
_LINK_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {"rel": ((str,), False)}


def _check_server(server: dict[str, Any], what: str) -> dict[str, Any]:
    for name, (kinds, required) in _SERVER_FIELDS.items():
        _field(server, name, kinds, what, required)
    _field(server.get("flavor") or {}, "extra_specs", (dict,), what)
    _field(server.get("fault") or {}, "message", (str,), what)
    image = server.get("image")
    if isinstance(image, dict):
        _field(image, "id", (str,), what)
    return server


# ---- authentication -------------------------------------------------------------------------

def _clouds_yaml_paths() -> list[str]:
    """Where clouds.yaml is read: the file OS_CLIENT_CONFIG_FILE names, the user's
    ~/.config/openstack/ and /etc/openstack/. Never the working directory (openstacksdk's
    first choice): a clouds.yaml planted there would be sent the operator's password."""
    explicit = os.environ.get("OS_CLIENT_CONFIG_FILE")
    home = os.path.expanduser("~")
    paths = [explicit] if explicit else []
    if os.path.isabs(home):  # a relative HOME would be the working directory again
        paths.append(os.path.join(home, ".config", "openstack", "clouds.yaml"))
    return paths + ["/etc/openstack/clouds.yaml"]


def _read_yaml(path: str) -> dict[str, Any]:
    """The `clouds` mapping of a clouds.yaml/secure.yaml ({} when it has none)."""
    import yaml  # noqa: PLC0415  (only when os_cloud is used)

    try:
        with open(path) as stream:
            doc = yaml.safe_load(stream)
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise NovaError(f"parameter 'os_cloud': cannot read {path}: "
                        f"{getattr(err, 'strerror', None) or type(err).__name__}") from None
    clouds = doc.get("clouds") if isinstance(doc, dict) else None
    return clouds if isinstance(clouds, dict) else {}


def cloud_settings(name: str) -> dict[str, Any]:
    """The named cloud of clouds.yaml (merged with secure.yaml beside it), flattened."""
    for path in _clouds_yaml_paths():
        if not os.path.isfile(path):
            continue
        clouds = _read_yaml(path)
        if name not in clouds:
            continue
        cloud = clouds[name] or {}
        secure = os.path.join(os.path.dirname(path), "secure.yaml")
        if os.path.isfile(secure):
            extra = _read_yaml(secure).get(name) or {}
            cloud = _merge(cloud, extra) if isinstance(cloud, dict) and isinstance(
                extra, dict) else cloud
        if not isinstance(cloud, dict) or not isinstance(cloud.get("auth") or {}, dict):
            raise NovaError(f"parameter 'os_cloud': cloud {name!r} in {path} is not a "
                            "mapping with an 'auth' mapping")
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
    adapter = _bounded_adapter(pool_connections=4,
                               pool_maxsize=int(settings.get("pool_size") or 10))
    http.mount("https://", adapter)
    http.mount("http://", adapter)
    return ks_session.Session(auth=auth, verify=verify, cert=cert, session=http,
                              timeout=float(settings.get("os_api_timeout") or 10))


def _bounded_adapter(**kwargs: Any) -> Any:
    """A requests transport that reads every reply its caller does not stream (Keystone's:
    the token and catalog, version discovery) with the bounds of Nova's: MAX_BODY bytes,
    the call's timeout. Nova's replies are streamed and bounded by Nova.request."""
    import requests  # noqa: PLC0415

    class BoundedAdapter(requests.adapters.HTTPAdapter):
        def send(self, request: Any, stream: bool = False, timeout: Any = None,
                 **rest: Any) -> Any:
            resp = super().send(request, stream=True, timeout=timeout, **rest)
            if stream:
                return resp
            limit = timeout[-1] if isinstance(timeout, tuple) else timeout
            _, problem, _ = _read_body(resp, time.monotonic() + float(limit or 30) + 1.0)
            if problem:
                from urllib.parse import urlsplit  # noqa: PLC0415

                where = urlsplit(request.url)
                raise NovaUnavailable(_printable(
                    f"{request.method} {where.netloc}{where.path}: {problem}"[:300]))
            return resp

    return BoundedAdapter(**kwargs)


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
    def from_api(cls, body: dict[str, Any], what: str = "Nova's service list") -> Service:
        """A service of Nova's reply; a malformed one is a NovaError (never a KeyError)."""
        if not isinstance(body, dict):
            raise NovaError(f"{what}: malformed reply from Nova: a service is "
                            f"{_kind(body)}: {excerpt(body)}")
        service_id = _field(body, "id", (int, str), what, required=True)
        host = _field(body, "host", (str,), what, required=True)
        return cls(id=str(service_id), host=host,
                   status=_field(body, "status", (str,), what) or "",
                   state=_field(body, "state", (str,), what) or "",
                   forced_down=bool(_field(body, "forced_down", (bool,), what)),
                   disabled_reason=_field(body, "disabled_reason", (str,), what),
                   updated_at=_field(body, "updated_at", (str,), what))


class Nova:
    """Nova's compute API at the newest microversion both sides support."""

    def __init__(self, session: Any, interface: str = "internal", region: str | None = None,
                 timeout: float = 10.0, cap: str = "auto",
                 endpoint_override: str | None = None) -> None:
        from keystoneauth1 import adapter  # noqa: PLC0415

        self.timeout = timeout
        self._adapter = adapter.Adapter(session, service_type="compute", interface=interface,
                                        region_name=region, endpoint_override=endpoint_override)
        try:
            self._cap = MAX_MICROVERSION if cap in ("", "auto", None) else _parse_version(cap)
        except ValueError:
            raise NovaError(f"parameter 'os_compute_api_version': {excerpt(cap, 40)!r} is "
                            "not a microversion such as 2.95") from None
        self._endpoint_override = endpoint_override
        self._microversion: str | None = None
        self.token_cache: Any = None  # tokens.TokenCache, set by from_params
        self._token_remembered = False
        # The token and catalog came from the cache and no call has succeeded with them yet:
        # a failure that a moved endpoint or a damaged state explains drops them (once).
        self._cache_suspect = False
        self._auth_generation = 0  # bumped when the cached state is dropped
        self._auth_lock = threading.Lock()

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
            nova._cache_suspect = nova.token_cache.load(check=nova._check_cached_state)
        return nova

    def _check_cached_state(self, access: Any) -> None:
        """Raises unless the cached catalog names a usable compute endpoint for us."""
        if self._endpoint_override:
            return
        url = access.service_catalog.url_for(
            service_type="compute", interface=self._adapter.interface,
            region_name=self._adapter.region_name)
        from urllib.parse import urlsplit  # noqa: PLC0415

        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("compute endpoint is not an http(s) URL")

    def _drop_cached_state(self, generation: int, reason: str) -> bool:
        """The cached token and catalog are suspect: forget them (file and plugin) so that
        keystoneauth1 asks Keystone again. True when the call that saw `generation` should
        be retried at once."""
        with self._auth_lock:
            if self._cache_suspect:
                self._cache_suspect = False
                LOG.info("the cached Keystone catalog did not work (%s): asking Keystone "
                         "again", reason)
                if self.token_cache is not None:
                    self.token_cache.drop()
                try:
                    self._adapter.session.auth.invalidate()
                except Exception:  # noqa: BLE001 - a plugin without state: nothing to forget
                    pass
                self._token_remembered = False  # keep the new one
                self._auth_generation += 1
            return self._auth_generation != generation

    def _remember_token(self) -> None:
        """Keep the token for the next run (once per client, after Keystone answered)."""
        if self.token_cache is not None and not self._token_remembered:
            self._token_remembered = True
            self.token_cache.save()

    # -- plumbing --

    def request(self, method: str, path: str, deadline: Deadline, body: Any = None,
                microversion: str | None = None, ok: tuple[int, ...] = (200, 202, 204),
                retries: int = 4, parse: bool = True) -> Any:
        """One API call: bounded by the deadline, 5xx/connection errors retried. Returns the
        reply, a JSON object ({} when empty, and always {} with parse=False: for calls whose
        answer is the status alone, a malformed body does not undo what Nova accepted)."""
        from keystoneauth1 import exceptions as ks_exc  # noqa: PLC0415

        what = _printable(f"{method} {path}"[:300])
        optimistic = False
        if microversion is None:
            if self._microversion is None and method == "GET":
                # Optimistic negotiation: ask at our newest; a 2xx proves Nova supports it
                # (one round trip less on every fence), a 406 sends us to discovery.
                microversion, optimistic = version_text(self._cap), True
            else:
                microversion = self.microversion(deadline)
        attempt = 0
        refreshed = False  # this call already dropped the cached token and catalog
        while True:
            attempt += 1
            timeout = min(self.timeout, max(deadline.remaining(), 0.5))
            generation = self._auth_generation
            stale: str | None = None  # a failure that a moved endpoint would explain
            status: int | None = None
            if LOG.isEnabledFor(logging.DEBUG):
                LOG.debug("%s (microversion %s)%s", what, microversion,
                          f": {excerpt(json.dumps(body), DEBUG_EXCERPT)}" if body else "")
            started = time.monotonic()
            try:
                # stream: the body is read here, bounded in size and time; log=False: it
                # is logged here too, redacted (keystoneauth1 would log adminPass).
                resp = self._adapter.request(path, method, json=body, raise_exc=False,
                                             microversion=microversion, timeout=timeout,
                                             connect_retries=0, stream=True, log=False)
            except (ks_exc.ConnectFailure, ks_exc.ConnectionError, ks_exc.ConnectTimeout,
                    ks_exc.UnknownConnectionError) as err:
                problem = stale = f"cannot reach Nova ({type(err).__name__})"
            except ks_exc.http.Unauthorized:
                raise NovaError("Keystone refused the credentials (HTTP 401)", 401) from None
            except (ks_exc.DiscoveryFailure, ks_exc.EndpointNotFound, ks_exc.CatalogException
                    ) as err:
                if not refreshed and self._drop_cached_state(generation, type(err).__name__):
                    refreshed, attempt = True, attempt - 1
                    continue
                raise NovaUnavailable(f"Keystone: {excerpt(str(err))}") from None
            except ks_exc.ClientException as err:
                problem = f"{type(err).__name__}: {excerpt(str(err))}"
            except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
                # keystoneauth1 tripped over a damaged token state or a malformed Keystone
                # reply (a JSON list, no X-Subject-Token header...).
                reason = (f"unusable Keystone token or reply ({type(err).__name__}: "
                          f"{excerpt(str(err), 80)})")
                if not refreshed and self._drop_cached_state(generation, reason):
                    refreshed, attempt = True, attempt - 1
                    continue
                raise NovaUnavailable(f"{what}: {reason}") from None
            else:
                status = resp.status_code
                data, cut, too_large = _read_body(resp, started + timeout + 1.0)
                if LOG.isEnabledFor(logging.DEBUG):
                    LOG.debug("%s: HTTP %s, %d bytes%s%s", what, status, len(data),
                              f" ({cut})" if cut else "",
                              f": {excerpt(data, DEBUG_EXCERPT)}" if data else "")
                if status in ok and not (parse and cut):
                    self._proven()
                    if optimistic:
                        self._microversion = microversion
                    return _decode(data, what) if parse else {}
                if status in ok:  # the answer was cut short or is too large
                    if too_large or method not in IDEMPOTENT:
                        raise NovaError(f"{what}: HTTP {status}, but {cut}", status)
                    problem, status = cut, None
                elif optimistic and status == 406:
                    microversion, optimistic = self.microversion(deadline), False
                    continue
                elif status == 404 and not refreshed and \
                        self._drop_cached_state(generation, f"{what}: HTTP 404"):
                    refreshed, attempt = True, attempt - 1
                    continue
                elif status == 401 and not refreshed:
                    # Nova refused the token (revoked, or a cached one gone bad): forget it,
                    # the file included, and ask Keystone for a new one, once.
                    self._cache_suspect = True
                    self._drop_cached_state(generation, f"{what}: HTTP 401")
                    refreshed, attempt = True, attempt - 1
                    continue
                else:
                    problem = _error_text(data) + (f" ({cut})" if cut else "")
                    if status not in RETRY_STATUSES:
                        raise NovaError(f"{what}: HTTP {status}: {problem}", status)
            if stale and not refreshed and self._drop_cached_state(generation, stale) and \
                    method in IDEMPOTENT:
                # Sent again at once with a new catalog; a POST only within its retries.
                refreshed, attempt = True, attempt - 1
                continue
            if attempt > retries or deadline.remaining() < 0.5:
                raise NovaUnavailable(f"{what}: {problem}", status)
            pause = min(0.25 * 2 ** (attempt - 1) * (1 + random.random() / 4),
                        deadline.remaining() / 2)
            LOG.debug("%s failed (%s); retrying in %.2fs", what, problem, pause)
            time.sleep(pause)

    def _proven(self) -> None:
        """Nova answered with this token and catalog: keep them for the next run."""
        self._cache_suspect = False
        self._remember_token()

    def authenticate(self) -> None:
        """Get the token now, so that calls started together do not each ask Keystone."""
        from keystoneauth1 import exceptions as ks_exc  # noqa: PLC0415

        generation = self._auth_generation
        while True:
            try:
                self._adapter.get_token()
                self._remember_token()
                return
            except ks_exc.http.Unauthorized:
                raise NovaError("Keystone refused the credentials (HTTP 401)", 401) from None
            except ks_exc.ClientException as err:
                raise NovaUnavailable(f"Keystone: {type(err).__name__}: "
                                      f"{excerpt(str(err))}") from None
            except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
                reason = (f"unusable Keystone token or reply ({type(err).__name__}: "
                          f"{excerpt(str(err), 80)})")
                if not self._drop_cached_state(generation, reason):
                    raise NovaUnavailable(f"Keystone: {reason}") from None
                generation = self._auth_generation

    def microversion(self, deadline: Deadline) -> str:
        """Newest microversion both Nova and nova-ha support (asked once per client)."""
        if self._microversion is None:
            doc = self.request("GET", "/", deadline, microversion="2.1", ok=(200,))
            what = "GET / (Nova's version)"
            version = _field(doc, "version", (dict,), what) or {}
            text = _field(version, "version", (str,), what) or "2.1"
            try:
                server_max = _parse_version(text)
            except ValueError:
                raise NovaError(f"{what}: malformed reply from Nova: version "
                                f"{excerpt(text, 40)!r}") from None
            chosen = min(server_max, self._cap)
            if chosen < MIN_MICROVERSION:
                raise NovaError("Nova does not support microversions")
            self._microversion = version_text(chosen)
            LOG.debug("Nova %s supports up to %s; using %s", excerpt(version.get("id"), 40),
                      excerpt(text, 40), self._microversion)
        return self._microversion

    def at_least(self, deadline: Deadline, version: tuple[int, int]) -> bool:
        return _parse_version(self.microversion(deadline)) >= version

    # -- services --

    def services(self, deadline: Deadline, host: str | None = None) -> list[Service]:
        query = f"/os-services?binary={COMPUTE_BINARY}" + (f"&host={_q(host)}" if host else "")
        what = _printable(f"GET {query}")
        return [Service.from_api(s, what)
                for s in _field(self.request("GET", query, deadline), "services", (list,),
                                what, required=True)]

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
            self.request("PUT", f"/os-services/{_q(svc.id)}", deadline, body=body, parse=False)
            return
        target = {"host": svc.host, "binary": COMPUTE_BINARY}
        if forced_down is not None:
            self.request("PUT", "/os-services/force-down", deadline,
                         body=dict(target, forced_down=forced_down), parse=False)
        if enable is True:
            self.request("PUT", "/os-services/enable", deadline, body=target, parse=False)
        elif disabled_reason is not None:
            self.request("PUT", "/os-services/disable-log-reason", deadline,
                         body=dict(target, disabled_reason=disabled_reason), parse=False)

    # -- servers --

    def list_servers(self, deadline: Deadline, query: str,
                     retries: int = 4) -> list[dict[str, Any]]:
        """All pages of a servers listing: Nova's page size is its own (api.max_limit),
        so follow its 'next' links until there is none. Bounded: the deadline is checked
        before each page, a marker seen before (a 'next' link that loops) and more than
        MAX_PAGES pages or MAX_LISTED servers are NovaErrors."""
        servers: list[dict[str, Any]] = []
        seen: set[str] = set()
        marker = None
        pages = 0  # pages received
        while True:
            if pages == MAX_PAGES:
                raise NovaError(f"listing servers ({query}): Nova still had a next page "
                                f"after {MAX_PAGES} pages")
            if pages and deadline.expired():
                raise NovaUnavailable(f"listing servers ({query}): out of time after "
                                      f"{pages} pages")
            what = _printable(f"GET /servers/detail?{query}") + (
                f" (page {pages + 1})" if pages else "")
            page_query = query + (f"&marker={_q(marker)}" if marker else "")
            body = self.request("GET", f"/servers/detail?{page_query}", deadline,
                                retries=retries)
            pages += 1
            page = [_check_server(s, what) for s in _records(body, "servers", what, {})]
            servers += page
            if len(servers) > MAX_LISTED:
                raise NovaError(f"listing servers ({query}): more than {MAX_LISTED} servers")
            links = _records(body, "servers_links", what, _LINK_FIELDS) \
                if body.get("servers_links") is not None else []
            if not page or not any(link.get("rel") == "next" for link in links):
                return servers
            marker = page[-1]["id"]
            if marker in seen:
                raise NovaError(f"listing servers ({query}): Nova's page {pages} ends with "
                                f"server {excerpt(marker, 80)} again: its pagination loops")
            seen.add(marker)

    def servers_on(self, deadline: Deadline, host: str) -> list[dict[str, Any]]:
        """Every server of a host, all tenants, with flavor extra_specs embedded (>= 2.47)."""
        return self.list_servers(deadline, f"all_tenants=1&host={_q(host)}")

    def servers_changed_since(self, deadline: Deadline, since: str) -> list[dict[str, Any]]:
        """Servers of all tenants changed since an ISO 8601 time, deleted ones included."""
        return self.list_servers(deadline, f"all_tenants=1&changes-since={since}",
                                 retries=1)

    def server(self, deadline: Deadline, server_id: str) -> dict[str, Any]:
        path = f"/servers/{_q(server_id)}"
        body = self.request("GET", path, deadline)
        what = _printable(f"GET {path}")
        return _check_server(_field(body, "server", (dict,), what, required=True), what)

    def image_properties(self, deadline: Deadline, image_id: str) -> dict[str, Any]:
        path = f"/images/{_q(image_id)}"
        what = _printable(f"GET {path}")
        try:
            body = self.request("GET", path, deadline,
                                microversion=IMAGE_PROXY_MICROVERSION)
        except NovaError as err:
            if err.status == 404:
                return {}
            raise
        image = _field(body, "image", (dict,), what, required=True)
        return _field(image, "metadata", (dict,), what) or {}

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
            # parse=False: the status is the answer. The body (adminPass below 2.14) is
            # neither needed nor logged unredacted; a malformed one is no failure.
            self.request("POST", f"/servers/{_q(server_id)}/action", deadline,
                         body={"evacuate": spec}, ok=(200, 202), retries=0, parse=False)
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
        path = f"/servers/{_q(server_id)}/os-instance-actions"
        return _records(self.request("GET", path, deadline), "instanceActions",
                        _printable(f"GET {path}"), _ACTION_FIELDS)

    def start_server(self, deadline: Deadline, server_id: str) -> None:
        self.request("POST", f"/servers/{_q(server_id)}/action", deadline, body={"os-start": None},
                     parse=False)

    def reset_state(self, deadline: Deadline, server_id: str, state: str) -> None:
        self.request("POST", f"/servers/{_q(server_id)}/action", deadline,
                     body={"os-resetState": {"state": state}}, parse=False)

    def evacuation_migrations(self, deadline: Deadline, source_host: str | None = None,
                              server_id: str | None = None) -> list[dict[str, Any]]:
        query = "/os-migrations?migration_type=evacuation"
        if source_host:
            query += f"&source_compute={_q(source_host)}"
        if server_id:
            query += f"&instance_uuid={_q(server_id)}"
        return _records(self.request("GET", query, deadline), "migrations",
                        _printable(f"GET {query}"), _MIGRATION_FIELDS)


def _read_body(resp: Any, until: float) -> tuple[bytes, str | None, bool]:
    """(body, why it is incomplete or None, whether it was too large) of a streamed reply:
    at most MAX_BODY bytes (decoded), read by `until` (time.monotonic)."""
    import http.client  # noqa: PLC0415

    from urllib3.exceptions import HTTPError as Urllib3Error  # noqa: PLC0415

    length = str(resp.headers.get("Content-Length") or "").strip()
    if length.isdigit() and (len(length) > 12 or int(length) > MAX_BODY):
        resp.close()
        return b"", f"the reply is larger than {MAX_BODY >> 20} MiB ({length[:20]} bytes)", True
    chunks: list[bytes] = []
    size, problem, too_large = 0, None, False
    try:
        while True:
            # read1: one read from the socket, so the time check below runs often even
            # when the body trickles in.
            chunk = resp.raw.read1(65536, decode_content=True)
            if not chunk:
                break
            size += len(chunk)
            if size > MAX_BODY:
                problem, too_large = f"the reply is larger than {MAX_BODY >> 20} MiB", True
                break
            chunks.append(chunk)
            if time.monotonic() > until:
                problem = "the reply did not arrive in time"
                break
    except (Urllib3Error, OSError, http.client.HTTPException, ValueError) as err:
        problem = f"the reply was cut short ({type(err).__name__})"
    data = b"".join(chunks)
    if problem:
        resp.close()
    resp._content, resp._content_consumed = data, True  # for anyone reading resp.content
    return data, problem, too_large


def _error_text(data: bytes) -> str:
    """Nova's (or Keystone's) message of an error reply, or an excerpt of the reply."""
    try:
        body = json.loads(data) if data else None
    except (ValueError, RecursionError):
        return excerpt(data)
    if isinstance(body, dict) and body:
        inner = next(iter(body.values()))
        if isinstance(inner, dict) and "message" in inner:
            return excerpt(str(inner["message"]))
    return excerpt(data)


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
