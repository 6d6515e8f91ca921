"""One call to Nova: its deadline, the microversion, retries, a bounded and redacted reply,
and the HTTP status mapped to an exception (exceptions.py).

We talk REST through keystoneauth1's Adapter rather than python-novaclient: novaclient caps
microversions at its own release's maximum and hides status codes we act on (409 = already
under way, 400 = service still up). Every call has a timeout; connection errors and 5xx are
retried with backoff inside the caller's deadline; a 401 re-authenticates once.
keystoneauth1 is imported only when a call is made, never on the metadata path.

Every reply is read defensively: at most MAX_BODY bytes within the call's time, decoded as a
JSON object and checked for the shape nova-ha relies on; anything else is a NovaError with a
short, printable excerpt, never a raw ValueError/KeyError/TypeError. A Keystone token and
catalog reused from the cache (token_cache.py) that do not work (the endpoint moved:
connection refused or 404; a damaged state) are dropped, and the call is retried once with a
new token.
"""

from __future__ import annotations

import json
import logging
import random
import re
import threading
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from nova_ha.lib import log
from nova_ha.openstack.exceptions import (
    AuthError,
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    NovaError,
    Unauthorized,
    Unavailable,
)

if TYPE_CHECKING:
    from nova_ha.openstack.token_cache import TokenCache

LOG = log.get("nova")

# Newest microversion nova-ha knows the behaviour of (Nova 34.0.0's maximum).
MAX_MICROVERSION = (2, 104)
MIN_MICROVERSION = (2, 1)
RETRY_STATUSES = frozenset({500, 502, 503, 504})
# Methods that may be sent again after an answer was lost (never POST: a second evacuation).
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE"})
MAX_BODY = 16 << 20  # bytes of one reply (decoded); a larger one is a NovaError
EXCERPT = 200  # characters of a reply quoted in an error message
DEBUG_EXCERPT = 2000  # characters of a reply body logged in verbose mode
# The answers callers act on, by HTTP status; 5xx that kept failing are Unavailable.
_ERRORS_BY_STATUS: dict[int, type[NovaError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
}


def http_error(message: str, status: int | None) -> NovaError:
    """The exception for a refusal with HTTP `status` (NovaError for one without a class)."""
    if status is not None and status >= 500:
        return Unavailable(message, status)
    return _ERRORS_BY_STATUS.get(status or 0, NovaError)(message, status)


class Deadline:
    """An overall time budget shared by the calls of one action."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        return max(self.end - time.monotonic(), 0.0)

    def expired(self) -> bool:
        return self.remaining() <= 0


def parse_version(text: str) -> tuple[int, int]:
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
    r"""\s*[:=]\s*)("(?:[^"\\]|\\.)*"?|'[^']*'?|[^\s,;&}\]]+)"""
)
_SPACES = re.compile(r"\s+")


def redact_text(text: str) -> str:
    """The text without the values of password-like keys (JSON or key=value)."""
    return _SECRET_PAIR.sub(
        lambda m: m.group(1) + (f'"{REDACTED}"' if m.group(2).startswith('"') else REDACTED), text
    )


def quote_id(value: Any) -> str:
    """A value from Nova or the parameters, quoted into a URL path or query: an id such as
    '../os-services' or 'a&host=b' names nothing else."""
    return quote(str(value), safe="")


def printable(text: str) -> str:
    """Control and separator characters escaped: a reply is data, never a line of its own."""
    return "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text
    )


def excerpt(data: bytes | str | Any, limit: int = EXCERPT) -> str:
    """At most `limit` printable characters of a reply (or of a decoded value), redacted."""
    if isinstance(data, bytes | bytearray):
        text = bytes(data[: limit * 4]).decode("utf-8", "replace")
    elif isinstance(data, str):
        text = data[: limit * 2]
    else:
        try:
            text = json.dumps(data, default=str)[: limit * 2]
        except (ValueError, TypeError, RecursionError):
            text = f"<{type(data).__name__}>"
    text = printable(redact_text(_SPACES.sub(" ", text[: limit * 2]).strip()))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def kind_of(value: Any) -> str:
    return (
        "null"
        if value is None
        else {
            dict: "an object",
            list: "a list",
            str: "a string",
            bool: "a boolean",
            int: "a number",
            float: "a number",
        }.get(type(value), type(value).__name__)
    )


def _decode(data: bytes, what: str) -> dict[str, Any]:
    """A reply body as a JSON object ({} when empty)."""
    if not data:
        return {}
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):
        raise NovaError(f"{what}: Nova's reply is not JSON: {excerpt(data)}") from None
    if not isinstance(body, dict):
        raise NovaError(
            f"{what}: Nova's reply is {kind_of(body)}, not a JSON object: {excerpt(data)}"
        )
    return body


def reply_field(
    obj: dict[str, Any], key: str, kinds: tuple[type, ...], what: str, required: bool = False
) -> Any:
    """obj[key], of one of `kinds` (or absent/null unless required): else a NovaError."""
    value = obj.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        wanted = " or ".join(kind_of(k()) for k in kinds)
        found = f"{kind_of(value)}, not {wanted}" if key in obj else f"missing ({wanted})"
        raise NovaError(f"{what}: malformed reply from Nova: {key!r} is {found}: {excerpt(obj)}")
    return value


def reply_records(
    body: dict[str, Any], key: str, what: str, fields: dict[str, tuple[tuple[type, ...], bool]]
) -> list[dict[str, Any]]:
    """body[key]: a list of objects whose `fields` have the expected types."""
    items = reply_field(body, key, (list,), what, required=True)
    for item in items:
        if not isinstance(item, dict):
            raise NovaError(
                f"{what}: malformed reply from Nova: an item of {key!r} is "
                f"{kind_of(item)}: {excerpt(item)}"
            )
        for name, (kinds, required) in fields.items():
            reply_field(item, name, kinds, what, required)
    return items


def read_body(resp: Any, until: float) -> tuple[bytes, str | None, bool]:
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


# ---- the transport ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Call:
    """One API call as its attempts see it."""

    method: str
    path: str
    body: Any
    microversion: str
    what: str  # the call, printable, for messages
    ok: tuple[int, ...]
    parse: bool
    optimistic: bool  # the microversion is our newest, not yet confirmed by Nova
    refreshed: bool  # this call already dropped the cached token and catalog
    generation: int  # of the cached auth state this attempt uses


@dataclass(frozen=True)
class _Retry:
    """An attempt that brought no answer: why, and whether to send again at once."""

    problem: str = ""
    status: int | None = None
    stale: str | None = None  # a failure that a moved endpoint would explain
    at_once: str | None = None  # "refresh" (new token and catalog) or "negotiate"


_REFRESH = _Retry(at_once="refresh")
_NEGOTIATE = _Retry(at_once="negotiate")


def _back_off(what: str, problem: str, attempt: int, deadline: Deadline) -> None:
    """Sleep before the next attempt: exponential with jitter, at most half the time left."""
    pause = min(0.25 * 2 ** (attempt - 1) * (1 + random.random() / 4), deadline.remaining() / 2)
    LOG.debug("%s failed (%s); retrying in %.2fs", what, problem, pause)
    time.sleep(pause)


class Transport:
    """Calls to one service (compute, or placement) of a Keystone session, at the newest
    microversion both sides support (compute's negotiation; other services' calls name
    theirs)."""

    def __init__(
        self,
        session: Any,
        interface: str = "internal",
        region: str | None = None,
        timeout: float = 10.0,
        cap: str = "auto",
        endpoint_override: str | None = None,
        service_type: str = "compute",
    ) -> None:
        from keystoneauth1 import adapter  # noqa: PLC0415

        self.timeout = timeout
        self._where = (interface, region)
        self._adapter = adapter.Adapter(
            session,
            service_type=service_type,
            interface=interface,
            region_name=region,
            endpoint_override=endpoint_override,
        )
        try:
            self._cap = MAX_MICROVERSION if cap in ("", "auto", None) else parse_version(cap)
        except ValueError:
            raise AuthError(
                f"parameter 'os_compute_api_version': {excerpt(cap, 40)!r} is "
                "not a microversion such as 2.95"
            ) from None
        self._endpoint_override = endpoint_override
        self._microversion: str | None = None
        self.token_cache: TokenCache | None = None  # see use_token_cache
        self._token_remembered = False
        # The token and catalog came from the cache and no call has succeeded with them yet:
        # a failure that a moved endpoint or a damaged state explains drops them (once).
        self._cache_suspect = False
        self._auth_generation = 0  # bumped when the cached state is dropped
        self._auth_lock = threading.Lock()
        self._clock_offset: float | None = None  # Nova's clock less ours (its Date header)

    def beside(self, service_type: str) -> Transport:
        """A transport to another service of the same Keystone session (token, interface,
        region, timeout): one login for both."""
        return Transport(
            self._adapter.session,
            interface=self._where[0],
            region=self._where[1],
            timeout=self.timeout,
            service_type=service_type,
        )

    def use_token_cache(self, cache: TokenCache) -> None:
        """Keep Keystone's answer in `cache` between runs, starting from what it holds."""
        self.token_cache = cache
        self._cache_suspect = cache.load(check=self._check_cached_state)

    def _check_cached_state(self, access: Any) -> None:
        """Raises unless the cached catalog names a usable compute endpoint for us."""
        if self._endpoint_override:
            return
        url = access.service_catalog.url_for(
            service_type="compute",
            interface=self._adapter.interface,
            region_name=self._adapter.region_name,
        )
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
                LOG.info(
                    "the cached Keystone catalog did not work (%s): asking Keystone again", reason
                )
                if self.token_cache is not None:
                    self.token_cache.drop()
                plugin: Any = self._adapter.session.auth
                try:
                    plugin.invalidate()
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

    def _refresh(self, refreshed: bool, generation: int, reason: str) -> bool:
        """Drop the cached token and catalog, once per call: True to send again at once."""
        return not refreshed and self._drop_cached_state(generation, reason)

    # -- one call --

    def request(
        self,
        method: str,
        path: str,
        deadline: Deadline,
        body: Any = None,
        microversion: str | None = None,
        ok: tuple[int, ...] = (200, 202, 204),
        retries: int = 4,
        parse: bool = True,
    ) -> Any:
        """One API call: bounded by the deadline, 5xx/connection errors retried. Returns the
        reply, a JSON object ({} when empty, and always {} with parse=False: for calls whose
        answer is the status alone, a malformed body does not undo what Nova accepted)."""
        what = printable(f"{method} {path}"[:300])
        microversion, optimistic = self._first_microversion(method, microversion, deadline)
        call = _Call(method, path, body, microversion, what, ok, parse, optimistic, False, 0)
        attempt = 0
        while True:
            attempt += 1
            call = replace(call, generation=self._auth_generation)
            result = self._attempt(call, deadline)
            if not isinstance(result, _Retry):
                if call.optimistic:
                    self._microversion = call.microversion
                return result
            if result.at_once == "negotiate":
                call = replace(call, microversion=self.microversion(deadline), optimistic=False)
                continue
            if result.at_once == "refresh" or (
                result.stale
                and self._refresh(call.refreshed, call.generation, result.stale)
                and method in IDEMPOTENT
            ):  # a POST that failed so: within its retries
                call, attempt = replace(call, refreshed=True), attempt - 1
                continue
            if attempt > retries or deadline.remaining() < 0.5:
                raise Unavailable(f"{what}: {result.problem}", result.status)
            _back_off(what, result.problem, attempt, deadline)

    def _first_microversion(
        self, method: str, microversion: str | None, deadline: Deadline
    ) -> tuple[str, bool]:
        """The microversion to send a call at first, and whether that is optimistic."""
        if microversion is not None:
            return microversion, False
        if self._microversion is None and method == "GET":
            # Optimistic negotiation: ask at our newest; a 2xx proves Nova supports it
            # (one round trip less on every fence), a 406 sends us to discovery.
            return version_text(self._cap), True
        return self.microversion(deadline), False

    def _attempt(self, call: _Call, deadline: Deadline) -> Any:
        """One send of the call: the reply, or a _Retry saying why there is none."""
        timeout = min(self.timeout, max(deadline.remaining(), 0.5))
        if LOG.isEnabledFor(logging.DEBUG):
            LOG.debug(
                "%s (microversion %s)%s",
                call.what,
                call.microversion,
                f": {excerpt(json.dumps(call.body), DEBUG_EXCERPT)}" if call.body else "",
            )
        started = time.monotonic()
        resp = self._send(call, timeout)
        if isinstance(resp, _Retry):
            return resp
        return self._judge(call, resp, started + timeout + 1.0)

    def _send(self, call: _Call, timeout: float) -> Any:
        """keystoneauth1's response to one send of the call (its body not read yet), or a
        _Retry when there is none."""
        from keystoneauth1 import exceptions as ks_exc  # noqa: PLC0415

        try:
            # stream: the body is read here, bounded in size and time; log=False: it is
            # logged here too, redacted (keystoneauth1 would log adminPass).
            return self._adapter.request(
                call.path,
                call.method,
                json=call.body,
                raise_exc=False,
                microversion=call.microversion,
                timeout=timeout,
                connect_retries=0,
                stream=True,
                log=False,
            )
        except ks_exc.ConnectionError as err:  # ConnectFailure, ConnectTimeout, SSLError...
            problem = f"cannot reach Nova ({type(err).__name__})"
            return _Retry(problem, stale=problem)
        except ks_exc.http.Unauthorized:
            raise Unauthorized("Keystone refused the credentials (HTTP 401)", 401) from None
        except (ks_exc.DiscoveryFailure, ks_exc.EndpointNotFound, ks_exc.CatalogException) as err:
            if self._refresh(call.refreshed, call.generation, type(err).__name__):
                return _REFRESH
            raise Unavailable(f"Keystone: {excerpt(str(err))}") from None
        except ks_exc.ClientException as err:
            return _Retry(f"{type(err).__name__}: {excerpt(str(err))}")
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
            # keystoneauth1 tripped over a damaged token state or a malformed Keystone
            # reply (a JSON list, no X-Subject-Token header...).
            reason = (
                f"unusable Keystone token or reply ({type(err).__name__}: {excerpt(str(err), 80)})"
            )
            if self._refresh(call.refreshed, call.generation, reason):
                return _REFRESH
            raise Unavailable(f"{call.what}: {reason}") from None

    def _judge(self, call: _Call, resp: Any, until: float) -> Any:
        """The reply of one send, read by `until`: its body, a _Retry, or the NovaError
        its status maps to."""
        status, what = resp.status_code, call.what
        self._note_clock(resp)
        data, cut, too_large = read_body(resp, until)
        if LOG.isEnabledFor(logging.DEBUG):
            LOG.debug(
                "%s: HTTP %s, %d bytes%s%s",
                what,
                status,
                len(data),
                f" ({cut})" if cut else "",
                f": {excerpt(data, DEBUG_EXCERPT)}" if data else "",
            )
        if status in call.ok and not (call.parse and cut):
            self._proven()
            return _decode(data, what) if call.parse else {}
        if status in call.ok:  # the answer was cut short or is too large
            if too_large or call.method not in IDEMPOTENT:
                raise NovaError(f"{what}: HTTP {status}, but {cut}", status)
            return _Retry(cut or "")
        if call.optimistic and status == 406:
            return _NEGOTIATE
        if status == 404 and self._refresh(call.refreshed, call.generation, f"{what}: HTTP 404"):
            return _REFRESH
        if status == 401 and not call.refreshed:
            # Nova refused the token (revoked, or a cached one gone bad): forget it, the
            # file included, and ask Keystone for a new one, once.
            self._cache_suspect = True
            self._drop_cached_state(call.generation, f"{what}: HTTP 401")
            return _REFRESH
        problem = _error_text(data) + (f" ({cut})" if cut else "")
        if status not in RETRY_STATUSES:
            raise http_error(f"{what}: HTTP {status}: {problem}", status)
        return _Retry(problem, status)

    def _note_clock(self, resp: Any) -> None:
        """How far Nova's clock is from ours, from the reply's Date header (to the second)."""
        import email.utils  # noqa: PLC0415

        try:
            date = email.utils.parsedate_to_datetime(str(resp.headers.get("Date") or ""))
            self._clock_offset = date.timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            pass  # no Date, or a malformed one: the offset stays as it was

    def server_time(self) -> float | None:
        """Nova's time now (epoch, to the second), from the last reply; None before any."""
        offset = self._clock_offset
        return None if offset is None else time.time() + offset

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
                raise Unauthorized("Keystone refused the credentials (HTTP 401)", 401) from None
            except ks_exc.ClientException as err:
                raise Unavailable(f"Keystone: {type(err).__name__}: {excerpt(str(err))}") from None
            except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
                reason = (
                    f"unusable Keystone token or reply ({type(err).__name__}: "
                    f"{excerpt(str(err), 80)})"
                )
                if not self._drop_cached_state(generation, reason):
                    raise Unavailable(f"Keystone: {reason}") from None
                generation = self._auth_generation

    def microversion(self, deadline: Deadline) -> str:
        """Newest microversion both Nova and nova-ha support (asked once per client)."""
        if self._microversion is None:
            doc = self.request("GET", "/", deadline, microversion="2.1", ok=(200,))
            what = "GET / (Nova's version)"
            version = reply_field(doc, "version", (dict,), what) or {}
            text = reply_field(version, "version", (str,), what) or "2.1"
            try:
                server_max = parse_version(text)
            except ValueError:
                raise NovaError(
                    f"{what}: malformed reply from Nova: version {excerpt(text, 40)!r}"
                ) from None
            chosen = min(server_max, self._cap)
            if chosen < MIN_MICROVERSION:
                raise NovaError("Nova does not support microversions")
            self._microversion = version_text(chosen)
            LOG.debug(
                "Nova %s supports up to %s; using %s",
                excerpt(version.get("id"), 40),
                excerpt(text, 40),
                self._microversion,
            )
        return self._microversion

    def at_least(self, deadline: Deadline, version: tuple[int, int]) -> bool:
        return parse_version(self.microversion(deadline)) >= version
