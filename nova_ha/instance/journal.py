"""Pending recoveries and recent restarts, in one small file that outlives the monitor.

A failure seen while Nova is unreachable must not be lost: it stays pending here until its
recovery is done or given up (after `retry_window`), and a monitor restarted by Pacemaker
picks it up. The restarts of each server within the crash-loop window live here too, so the
cap holds across monitor restarts. Every write replaces the file atomically (write, fsync,
rename); a damaged file is set aside and the journal starts empty (the scan at start finds
crashed domains again).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from nova_ha.lib import log

LOG = log.get("instance-journal")

MAX_PENDING = 256  # servers waiting for a recovery at once
MAX_SERVERS = 1024  # servers whose recent restarts are kept
MAX_RESTARTS = 64  # restart times kept per server
MAX_BYTES = 1024 * 1024
BACKOFF = (2.0, 5.0, 10.0, 30.0)  # pause after the 1st, 2nd, 3rd... failed attempt


@dataclass
class Pending:
    """One recovery to do: the server, what happened, since when, how often it was tried."""

    server_id: str
    event: str
    reason: str
    first: float  # epoch seconds: when the failure was seen
    attempts: int = 0
    next_try: float = 0.0
    last_error: str = ""


@dataclass
class _Content:
    pending: dict[str, Pending] = field(default_factory=dict)
    restarts: dict[str, list[float]] = field(default_factory=dict)
    given_up: dict[str, float] = field(default_factory=dict)  # server -> when


class Journal:
    """The monitor's journal at `path` (its directory is made, mode 0700)."""

    def __init__(self, path: str, restart_window: float) -> None:
        self.path = path
        self.restart_window = restart_window
        self._content = self._load()

    # -- pending recoveries --

    def add(self, server_id: str, event: str, reason: str, now: float) -> Pending | None:
        """Keep a recovery to do (the one already pending for the server if any); None
        when the journal is full (the caller gives up on it and says so)."""
        pending = self._content.pending
        if server_id in pending:
            return pending[server_id]
        if len(pending) >= MAX_PENDING:
            return None
        pending[server_id] = Pending(server_id, event, reason[:200], now, next_try=now)
        self._save()
        return pending[server_id]

    def due(self, now: float) -> list[Pending]:
        return sorted(
            (p for p in self._content.pending.values() if p.next_try <= now),
            key=lambda p: p.first,
        )

    def pending(self) -> list[Pending]:
        return list(self._content.pending.values())

    def next_due(self) -> float | None:
        return min((p.next_try for p in self._content.pending.values()), default=None)

    def attempt_failed(self, server_id: str, error: str, now: float) -> Pending | None:
        pending = self._content.pending.get(server_id)
        if pending is None:
            return None
        pending.attempts += 1
        pending.last_error = error[:200]
        pending.next_try = now + BACKOFF[min(pending.attempts, len(BACKOFF)) - 1]
        self._save()
        return pending

    def finish(self, server_id: str) -> None:
        """The recovery is over (done or given up)."""
        if self._content.pending.pop(server_id, None) is not None:
            self._save()

    # -- servers left alone (a crash loop, or given up) --

    def gave_up(self, server_id: str, now: float) -> None:
        given_up = self._content.given_up
        given_up[server_id] = now
        for old in sorted(given_up, key=given_up.__getitem__)[:-MAX_SERVERS]:
            del given_up[old]
        self._save()

    def left_alone(self, server_id: str) -> bool:
        """Given up and not seen running since: a scan finding it crashed is no news."""
        return server_id in self._content.given_up

    def ran_again(self, server_id: str) -> None:
        """Its guest ran again (a live event came from it): watched as any other."""
        if self._content.given_up.pop(server_id, None) is not None:
            self._save()

    # -- recent restarts (the crash-loop cap) --

    def restarted(self, server_id: str, now: float) -> None:
        times = [*self._recent(server_id, now), now][-MAX_RESTARTS:]
        restarts = self._content.restarts
        restarts[server_id] = times
        for old in sorted(restarts, key=lambda s: restarts[s][-1])[:-MAX_SERVERS]:
            del restarts[old]
        self._save()

    def recent_restarts(self, server_id: str, now: float) -> int:
        return len(self._recent(server_id, now))

    def _recent(self, server_id: str, now: float) -> list[float]:
        since = now - self.restart_window
        return [t for t in self._content.restarts.get(server_id, []) if since < t <= now]

    # -- the file --

    def _load(self) -> _Content:
        try:
            with open(self.path, "rb") as file:
                data = file.read(MAX_BYTES + 1)
        except FileNotFoundError:
            return _Content()
        try:
            if len(data) > MAX_BYTES:
                raise ValueError(f"larger than {MAX_BYTES} bytes")
            return _decode(json.loads(data))
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            aside = self.path + ".damaged"
            with contextlib.suppress(OSError):
                os.replace(self.path, aside)
            LOG.warning("journal %s is damaged (%s): set aside as %s", self.path, err, aside)
            return _Content()

    def _save(self) -> None:
        directory = os.path.dirname(self.path) or "."
        os.makedirs(directory, mode=0o700, exist_ok=True)
        body = json.dumps(
            {
                "pending": [asdict(p) for p in self._content.pending.values()],
                "restarts": self._content.restarts,
                "given_up": self._content.given_up,
            }
        ).encode()
        tmp = f"{self.path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)


def _decode(data: Any) -> _Content:
    pending = {}
    for entry in data["pending"][:MAX_PENDING]:
        item = Pending(**entry)
        if not isinstance(item.server_id, str) or not isinstance(item.first, int | float):
            raise ValueError("a pending entry of the wrong shape")
        pending[item.server_id] = item
    restarts = {
        str(server): [float(t) for t in times][-MAX_RESTARTS:]
        for server, times in list(data["restarts"].items())[:MAX_SERVERS]
    }
    given_up = {
        str(server): float(when)
        for server, when in list(data.get("given_up", {}).items())[:MAX_SERVERS]
    }
    return _Content(pending, restarts, given_up)
