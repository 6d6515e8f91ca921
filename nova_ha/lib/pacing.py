"""How many evacuation requests are in flight at once: adjusted from what Nova shows.

A fixed number floods a small cloud (its API, conductor and computes slow down, every
rebuild finishes later) and starves a large one. So the number of requests in flight (sent,
not yet answered) follows the cloud, the way TCP's congestion window does:

* it starts small (START) and, while Nova answers evacuations as fast as it did at first,
  grows by one per accepted request (doubling every round trip: slow start);
* after the first sign of strain it grows by one per "window" of servers that reached their
  end: it opens only as fast as rebuilds complete (completions keep pace);
* a sign of strain halves it (at most once per COOL_DOWN): a 5xx, 429 or timeout (down to
  1), or an answer slower than LATENCY_FACTOR times the fastest seen (plus LATENCY_SLACK, so
  that jitter on a fast cloud is no sign) down to START only: slow answers alone mean a busy
  API, whose throughput a few requests in flight do not lower (measured on the one-process
  box: 20 requests took as long one at a time as 2 to 9 at a time), while errors mean
  requests lost;
* max_parallel is the ceiling.

Pure: no Nova, the clock injected. The runner feeds it every answer and every end.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable

from nova_ha.lib import log

LOG = log.get("pacing")

START = 4
LATENCY_FACTOR = 3.0
LATENCY_SLACK = 0.25  # seconds
COOL_DOWN = 1.0  # seconds between two decreases
DECREASE = 0.5


class Answer(enum.StrEnum):
    """What Nova's answer to one evacuation request says about its load."""

    OK = "accepted"  # 2xx
    STRAINED = "strained"  # 5xx, 429, timeout, unreachable
    REFUSED = "refused"  # 4xx about the server itself (409, 404, 400): no sign either way


class Pacer:
    """The number of evacuations allowed in flight, from the answers and ends seen."""

    def __init__(
        self, ceiling: int, start: int = START, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ceiling = max(1, ceiling)
        self._window = float(min(self.ceiling, max(1, start)))
        self._clock = clock
        self._fastest: float | None = None
        self._slow_start = True
        self._last_decrease: float | None = None
        self._lock = threading.Lock()
        self.history: list[tuple[float, int, str]] = [(clock(), self.limit(), "start")]

    def limit(self) -> int:
        """How many may be in flight now."""
        return int(self._window)

    def answered(self, latency: float, answer: Answer) -> None:
        """One evacuation request answered after `latency` seconds."""
        with self._lock:
            if answer is Answer.STRAINED:
                self._decrease(f"Nova strained (an error or timeout after {latency:.2f}s)", 1)
            elif answer is Answer.OK:
                self._fastest = latency if self._fastest is None else min(self._fastest, latency)
                if latency > self._fastest * LATENCY_FACTOR + LATENCY_SLACK:
                    why = f"answers slowed to {latency:.2f}s from {self._fastest:.2f}s"
                    self._decrease(why, START)
                elif self._slow_start:
                    self._set(self._window + 1, "accepted promptly")

    def landed(self) -> None:
        """One server in flight reached its end (running, failed...)."""
        with self._lock:
            if not self._slow_start:
                self._set(self._window + 1 / self._window, "completions keep pace")

    def _decrease(self, why: str, floor: int) -> None:
        now = self._clock()
        self._slow_start = False
        if self._last_decrease is not None and now - self._last_decrease < COOL_DOWN:
            return  # one decrease per strain: its answers come together
        self._last_decrease = now
        if self._window > floor:
            self._set(max(self._window * DECREASE, float(floor)), why)

    def _set(self, window: float, why: str) -> None:
        before = self.limit()
        self._window = min(float(self.ceiling), max(1.0, window))
        if self.limit() != before:
            self.history.append((self._clock(), self.limit(), why))
            LOG.info("pacing: %d in flight at most (%s)", self.limit(), why)
