"""Time as nova-ha writes and reads it: UTC, to the second, ISO 8601 (``2026-11-22T14:03:00Z``).

Records, history events, notifications and the operator's views all use these helpers, so
every time nova-ha writes reads back with ``epoch``.
"""

from __future__ import annotations

import calendar
import time

ISO_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def iso_utc(epoch: float) -> str:
    """``2026-11-22T14:03:00Z`` for an epoch time."""
    return time.strftime(ISO_FORMAT, time.gmtime(epoch))


def time_of_day(epoch: float) -> str:
    """``14:03:00Z``: the time alone, for a message about the next minutes."""
    return time.strftime("%H:%M:%SZ", time.gmtime(epoch))


def epoch(iso: str | None) -> float | None:
    """The epoch time of an ``iso_utc`` string; None when there is none or it does not parse
    (a hand-edited record)."""
    if not iso:
        return None
    try:
        return float(calendar.timegm(time.strptime(iso, ISO_FORMAT)))
    except ValueError:
        return None
