"""What the operator sees: data escaped onto one line, colours, tables, ages, the progress bar."""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

from nova_ha.lib import clock

_COLOURS = {"red": "31", "green": "32", "yellow": "33", "bold": "1", "dim": "2"}
_GOOD = {"online", "on", "up", "ok", "enabled", "evacuated"}
_BAD = {"fenced", "down", "failed", "off", "unclean", "forced down", "HELD"}
_WARN = {"evacuating", "disabled", "offline", "unknown", "standby", "maintenance"}


def escaped(text: Any) -> str:
    """Data on one line of output: names and messages from Nova or the CIB can hold control
    characters (a newline would forge a line of the table); they are shown escaped."""
    from nova_ha.lib import log

    return log.escape(str(text))


def use_colour(mode: str, stream: Any) -> bool:
    """--color: always, never, or auto (on a terminal, unless NO_COLOR is set)."""
    if mode == "always":
        return True
    if mode == "never" or os.environ.get("NO_COLOR"):
        return False
    return hasattr(stream, "isatty") and stream.isatty()


def paint(text: str, colour: str | None, on: bool) -> str:
    if not on or not colour or not text:
        return text
    return f"\x1b[{_COLOURS[colour]}m{text}\x1b[0m"


def tone_of(word: str) -> str | None:
    """The colour a state word is shown in: red bad, yellow in between, green good."""
    first = word.split(" ")[0].split(",")[0]
    if word in _BAD or first in _BAD:
        return "red"
    if word in _WARN or first in _WARN:
        return "yellow"
    if word in _GOOD or first in _GOOD:
        return "green"
    return None


def table(
    header: list[str],
    rows: list[list[str]],
    colour: bool,
    tones: list[list[str | None]] | None = None,
) -> str:
    """Columns padded to their widest cell, every cell escaped, a bold header."""
    header = [escaped(h) for h in header]
    rows = [[escaped(c) for c in row] for row in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    lines = [
        "  ".join(
            paint(h, "bold", colour) + " " * (w - len(h))
            for h, w in zip(header, widths, strict=True)
        ).rstrip()
    ]
    for r, row in enumerate(rows):
        cells = []
        for c, (cell, width) in enumerate(zip(row, widths, strict=True)):
            tone = tones[r][c] if tones else None
            cells.append(paint(str(cell), tone, colour) + " " * (width - len(str(cell))))
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def age(iso: str | None, now: float) -> str:
    """'3h ago' for an ISO time; '' when it does not read."""
    then = clock.epoch(iso)
    if then is None:
        return ""
    seconds = max(0, int(now - then))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


class ProgressBar:
    """The evacuation Progress callback: a redrawn bar on a terminal, lines otherwise."""

    def __init__(
        self, total: int, stream: Any = None, tty: bool | None = None, colour: bool = False
    ) -> None:
        self.total, self.stream = total, stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.colour = colour
        self.accepted: set[str] = set()
        self.finished: dict[str, str] = {}
        self.started = time.monotonic()
        self._lock = threading.Lock()

    def __call__(self, event: str, outcome: Any) -> None:
        with self._lock:
            if event == "accepted":
                self.accepted.add(outcome.server_id)
            elif event == "finished":
                self.finished[outcome.server_id] = outcome.result
            if self.tty:
                self._draw()
            elif event in ("finished", "retry"):
                what = outcome.result if event == "finished" else "retrying"
                detail = f" - {escaped(outcome.detail)}" if outcome.detail else ""
                self.stream.write(
                    f"  {what:<10} {escaped(outcome.name or '-')} "
                    f"({escaped(outcome.server_id)}){detail}\n"
                )
                self.stream.flush()

    def _draw(self) -> None:
        done = len(self.finished)
        total = max(self.total, done)
        width = 30
        filled = int(width * done / total) if total else width
        results = [r for r in self.finished.values()]
        failed = results.count("failed")
        bar = paint("#" * filled, "red" if failed else "green", self.colour) + "-" * (
            width - filled
        )
        flight = len(self.accepted - set(self.finished))
        self.stream.write(
            f"\r  [{bar}] {done}/{total} done, {results.count('evacuated')} "
            f"evacuated, {failed} failed, {flight} in flight, "
            f"{time.monotonic() - self.started:.0f}s\x1b[K"
        )
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            with self._lock:
                self._draw()
                self.stream.write("\n")
                self.stream.flush()
