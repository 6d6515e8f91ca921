"""nova-ha events for operators: syslog always; a webhook and a command when configured.

Events: ``lifecycle.Event`` (``fenced``, ``evacuation_finished``, ``evacuation_failed``,
``evacuation_blocked`` from the mass-failure guard, ``rejoined``, ``reset``...). Each is one
JSON object::

    {"event": "fenced", "time": "2026-11-22T14:03:00Z", "epoch": 1795874580.25,
     "node": "compute1", "host": "compute1.example.com", "source": "fence_nova_evacuate",
     "reporter": "controller1", "version": "0.1.0", "detail": "...", ...}

plus fields of the kind (server counts, the guard's wave). An event never carries a secret:
its strings go through the log redactor, and no parameter value is copied into it.

* syslog: always, synchronously (a local datagram): ident ``nova-ha``, facility daemon,
  priority notice (warning for failures and the guard), message ``event <json>``.
* ``notify_url`` and ``notify_command``: from a detached child process (its own session,
  standard streams on /dev/null), so neither fencing nor the agent's exit ever waits for a
  slow receiver, and a stonith agent killed by its timeout does not take the delivery with
  it. The webhook is tried at most ATTEMPTS times, each bounded by ``notify_timeout``; the
  command runs once, killed after ``notify_timeout``; the child ends itself after
  ``total_budget(timeout)`` seconds whatever happens. Delivery failures go to syslog.
* The URL's ``user:password@`` goes as HTTP Basic authentication, never into a host lookup,
  a log line or the command's environment. Redirects are not followed (urllib would turn the
  POST into a body-less GET): a 3xx is a failure naming its Location. The command's output
  is read up to 64 KiB (the rest discarded). The channels are independent: one failing or
  raising never keeps the others from their event.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nova_ha.lib import clock, log, service
from nova_ha.lib.lifecycle import WARNING_EVENTS, Event

if TYPE_CHECKING:
    from nova_ha.lib import params

LOG = log.get("notify")

SYSLOG_IDENT = "nova-ha"
ATTEMPTS = 3
BACKOFF = (1.0, 2.0)  # pause before the 2nd and the 3rd attempt
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
SERVERS_MAX = 100  # servers listed in an evacuation event (the counts are always complete)
DEFAULT_TIMEOUT = 5.0
# Environment handed to the child and the command: nothing else (OCF agents receive their
# parameters, passwords included, as OCF_RESKEY_* variables).
_ENV_KEEP = (
    "PATH",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "HOME",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
)
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_CHILD = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from nova_ha.lib import notify; notify.child_main()"
)


def total_budget(timeout: float) -> float:
    """Longest a delivery child lives: every webhook attempt, the pauses, the command."""
    return ATTEMPTS * timeout + sum(BACKOFF) + timeout + 2.0


# ---- events -----------------------------------------------------------------------------------


def _clean(value: Any) -> Any:
    """JSON-safe copy with every string redacted (known secret values, key=value secrets)."""
    if isinstance(value, str):
        return log.REDACTOR.redact(value)
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_clean(v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return _clean(str(value))


def make_event(
    kind: Event,
    node: str,
    *,
    host: str | None = None,
    source: str = "nova-ha",
    detail: str = "",
    now: float | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """The event as sent everywhere. Extra fields whose value is None are left out.
    ValueError for a `kind` that is no Event."""
    try:
        kind = Event(kind)
    except ValueError:
        raise ValueError(f"unknown event {kind!r}") from None
    epoch = time.time() if now is None else now
    event: dict[str, Any] = {
        "event": kind.value,
        "time": clock.iso_utc(epoch),
        "epoch": round(epoch, 3),
        "node": node,
        "host": host or node,
        "source": source,
        "reporter": os.uname().nodename,
        "version": _version(),
    }
    if detail:
        event["detail"] = detail
    event.update({k: v for k, v in fields.items() if v is not None})
    return _clean(event)


def _version() -> str:
    from nova_ha import __version__

    return __version__


def summary_fields(summary: Any) -> dict[str, Any]:
    """Counts and the servers of an evacuation Summary: which server ended where, and why
    not for those that did not (evacuated ones first are dropped when the list is long)."""
    outcomes = list(getattr(summary, "outcomes", []))
    order = {"failed": 0, "unfinished": 1, "skipped": 2, "gone": 3, "pending": 4, "evacuated": 5}
    listed = sorted(outcomes, key=lambda o: order.get(o.result, 9))[:SERVERS_MAX]
    return {
        "found": summary.found,
        "selected": summary.selected,
        "evacuated": summary.count("evacuated"),
        "failed": summary.count("failed"),
        "skipped": summary.count("skipped"),
        "unfinished": summary.count("unfinished"),
        "gone": summary.count("gone"),
        "seconds": round(summary.finished_after, 1) if summary.finished_after else None,
        "servers": [
            {
                "id": o.server_id,
                "name": o.name,
                "result": o.result,
                "host": o.host,
                "detail": o.detail,
            }
            for o in listed
        ],
        "servers_truncated": len(outcomes) > SERVERS_MAX or None,
    }


# ---- syslog -----------------------------------------------------------------------------------


def _syslog(priority: str, message: str) -> None:
    """One syslog line (replaced in tests). No syslog daemon: silently nothing."""
    import syslog

    level = syslog.LOG_WARNING if priority == "warning" else syslog.LOG_NOTICE
    syslog.openlog(SYSLOG_IDENT, syslog.LOG_PID, syslog.LOG_DAEMON)
    syslog.syslog(level, message)


def to_syslog(event: Mapping[str, Any]) -> None:
    try:
        _syslog(
            "warning" if event.get("event") in WARNING_EVENTS else "notice",
            "event " + json.dumps(event, separators=(",", ":"), sort_keys=True),
        )
    except Exception as err:  # a notification must never break an agent
        LOG.debug("syslog: %s", err)


# ---- delivery ---------------------------------------------------------------------------------


def shown_url(url: str) -> str:
    """The URL without credentials or query (both may carry secrets), for log lines."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        netloc = parts.netloc.rpartition("@")[2] or "?"
        return f"{parts.scheme}://{netloc}{parts.path}"
    except ValueError:
        return "(unparsable URL)"


def url_secrets(url: str | None) -> list[str]:
    """The password of a URL's userinfo, as written and decoded (for the log redactor)."""
    from urllib.parse import unquote, urlsplit

    try:
        password = urlsplit(url or "").password
    except ValueError:
        return []
    return [password, unquote(password)] if password else []


def split_credentials(url: str) -> tuple[str, str | None]:
    """The URL without userinfo, and the userinfo as an HTTP Basic Authorization value."""
    import base64
    from urllib.parse import unquote, urlsplit, urlunsplit

    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at:
        return url, None
    user, _, password = userinfo.partition(":")
    token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode()
    return urlunsplit(parts._replace(netloc=host)), f"Basic {token}"


def _no_redirects() -> Any:
    """An opener that never follows a redirect: urllib turns a redirected POST into a GET
    without the body (and would send the Authorization header elsewhere)."""
    import urllib.request

    class Refuse(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None  # urllib then raises the 3xx as an HTTPError

    return urllib.request.build_opener(Refuse)


def _location(err: Any, base: str) -> str:
    """A redirect's Location as log lines show URLs: no userinfo, no query."""
    from urllib.parse import urljoin

    try:
        location = err.headers.get("Location") if err.headers else None
        if not location:
            return "nowhere (no Location)"
        return log.REDACTOR.redact(shown_url(urljoin(base, location)))[:200]
    except Exception:
        return "(unparsable Location)"


def post(
    url: str,
    body: bytes,
    timeout: float,
    attempts: int = ATTEMPTS,
    sleep: Callable[[float], None] = time.sleep,
    kind: str = "",
) -> str:
    """POST the event; returns what happened, never raises. Retries no answer, 408/425/429
    and 5xx; a redirect is a failure naming its Location."""
    log.REDACTOR.add(*url_secrets(url))
    try:
        target, authorization = split_credentials(url)
        opener = _no_redirects()
    except Exception as err:
        return f"failed ({type(err).__name__})"
    headers = {"Content-Type": "application/json", "User-Agent": f"nova-ha/{_version()}"}
    if authorization:
        headers["Authorization"] = authorization
    if kind:
        headers["X-Nova-HA-Event"] = kind
    last = ""
    for attempt in range(1, attempts + 1):
        if attempt > 1:
            sleep(BACKOFF[min(attempt - 2, len(BACKOFF) - 1)])
        outcome, last = _post_once(opener, target, body, headers, timeout, attempt)
        if outcome:
            return outcome
    return f"failed after {attempts} attempts ({log.REDACTOR.redact(last)[:200]})"


def _post_once(
    opener: Any, target: str, body: bytes, headers: dict[str, str], timeout: float, attempt: int
) -> tuple[str, str]:
    """One POST: (what happened, "") when that is final, ("", why) when worth another try."""
    import urllib.error
    import urllib.request

    try:
        request = urllib.request.Request(target, data=body, headers=headers, method="POST")
        with opener.open(request, timeout=timeout) as answer:
            return f"delivered (HTTP {answer.status}, attempt {attempt})", ""
    except urllib.error.HTTPError as err:
        if 300 <= err.code < 400:
            return (
                f"refused (HTTP {err.code} redirect to {_location(err, target)}, not followed)",
                "",
            )
        if err.code not in RETRY_STATUSES:
            return f"refused (HTTP {err.code})", ""
        return "", f"HTTP {err.code}"
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        return "", f"{type(reason).__name__}: {reason}" if not isinstance(reason, str) else reason
    except Exception as err:  # InvalidURL and kin: the URL itself is wrong, no retry
        return f"failed ({type(err).__name__}: {log.REDACTOR.redact(str(err))[:200]})", ""


def child_env(kind: str, node: str) -> dict[str, str]:
    env = service.clean_env(keep=_ENV_KEEP)
    env.setdefault("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    env.update(NOVA_HA_EVENT=kind, NOVA_HA_NODE=node)
    return env


def run_command(
    command: str, body: bytes, timeout: float, env: Mapping[str, str] | None = None
) -> str:
    """Run the command without a shell, the event on stdin; returns what happened.

    Its stdout is discarded, at most service.OUTPUT_LIMIT bytes of its stderr are kept
    (the rest read and thrown away): a flooding command neither blocks nor fills memory."""
    try:
        argv = shlex.split(command)
        done = service.run_capped(argv, timeout, stdin=body, keep_stdout=False, env=env, cwd="/")
    except subprocess.TimeoutExpired:
        return f"killed after {timeout:g} s"
    except (OSError, ValueError) as err:
        return f"cannot run it ({type(err).__name__}: {err})"
    if done.returncode != 0:
        err_line = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        return f"exited {done.returncode} {log.REDACTOR.redact(err_line[0])[:200]}".rstrip()
    return "ran (exit 0)"


def deliver(
    event: Mapping[str, Any], url: str | None, command: str | None, timeout: float
) -> dict[str, str]:
    """Deliver one event in this process (the child's work); {channel: outcome}."""
    body = json.dumps(event, separators=(",", ":"), sort_keys=True).encode()
    kind, node = str(event.get("event", "")), str(event.get("node", ""))
    results = {}
    # Each channel on its own: one that fails, or raises, keeps no other from the event.
    if url:
        try:
            results["webhook"] = post(url, body, timeout, kind=kind)
        except Exception as err:
            results["webhook"] = f"failed ({type(err).__name__})"
    if command:
        try:
            results["command"] = run_command(command, body, timeout, child_env(kind, node))
        except Exception as err:
            results["command"] = f"failed ({type(err).__name__})"
    for channel, outcome in results.items():
        if not outcome.startswith(("delivered", "ran")):
            where = shown_url(url or "") if channel == "webhook" else "notify_command"
            to_syslog_line(f"notify: {kind} event for {node}: {channel} {where} {outcome}")
    return results


def to_syslog_line(message: str) -> None:
    try:
        _syslog("warning", log.REDACTOR.redact(message))
    except Exception:
        pass


def child_main() -> None:
    """Entry of the detached child: read {event, url, command, timeout} from stdin."""
    import signal

    payload = json.loads(sys.stdin.buffer.read() or b"{}")
    timeout = float(payload.get("timeout") or DEFAULT_TIMEOUT)
    signal.alarm(max(1, int(total_budget(timeout) + 0.999)))  # the hard bound
    try:
        deliver(payload["event"], payload.get("url"), payload.get("command"), timeout)
    except Exception as err:  # a bug here must still leave a trace, and no traceback
        to_syslog_line(f"notify: delivery failed ({type(err).__name__})")


# ---- the notifier -------------------------------------------------------------------------------


@dataclass
class Notifier:
    """Sends events for one agent run. Cheap to build; never raises."""

    url: str | None = None
    command: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    source: str = "nova-ha"
    detach: bool = True  # False: deliver in this process (tests, dry runs)

    def __post_init__(self) -> None:
        log.REDACTOR.add(*url_secrets(self.url))  # a user:password@ in notify_url

    @classmethod
    def from_settings(cls, settings: params.NotifySettings, source: str) -> Notifier:
        return cls(
            url=settings.url, command=settings.command, timeout=settings.timeout, source=source
        )

    def send(
        self,
        kind: Event,
        node: str,
        *,
        detail: str = "",
        host: str | None = None,
        summary: Any = None,
        **fields: Any,
    ) -> dict[str, Any] | None:
        """Build, log to syslog and hand the event over. Returns it (None on a bug)."""
        try:
            if summary is not None:
                fields = {**summary_fields(summary), **fields}
                detail = detail or summary.line()
            event = make_event(kind, node, host=host, source=self.source, detail=detail, **fields)
            to_syslog(event)
            LOG.debug("event %s for %s", kind, node)
            if self.url or self.command:
                if self.detach:
                    self._spawn(event)
                else:
                    deliver(event, self.url, self.command, self.timeout)
            return event
        except Exception as err:  # never let a notification break fencing
            LOG.warning("could not send the %s event for %s: %s", kind, node, err)
            return None

    def _spawn(self, event: Mapping[str, Any]) -> None:
        payload = json.dumps(
            {"event": event, "url": self.url, "command": self.command, "timeout": self.timeout}
        ).encode()
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, _ROOT],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=True,
            start_new_session=True,
            cwd="/",
            env=child_env(str(event.get("event")), str(event.get("node"))),
        )
        stdin = child.stdin
        assert stdin is not None  # stdin=PIPE
        try:
            stdin.write(payload)  # a few KiB: fits the pipe, never blocks
        finally:
            stdin.close()
        # Not waited for: reaped by the next subprocess call of this process, or by init.
        _children.append(child)
        _children[:] = [c for c in _children if c.poll() is None]


_children: list[subprocess.Popen[bytes]] = []


def send(
    settings: params.NotifySettings, kind: Event, node: str, source: str, **kwargs: Any
) -> dict[str, Any] | None:
    """One-shot: ``notify.send(parsed.settings.notify, Event.REJOINED, node, params.COMPUTE,
    host=host)``."""
    return Notifier.from_settings(settings, source).send(kind, node, **kwargs)
