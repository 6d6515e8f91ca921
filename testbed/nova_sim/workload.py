"""Per-compute work and the scheduler's choice: what decides when evacuated servers run.

Nova 34, threading mode (what the real box runs and what a 2026.1 compute defaults to):

* A rebuild (evacuation) on the destination takes the compute's ``compute_resources`` lock
  (``ResourceTracker.rebuild_claim``, and ``finish_evacuation`` at the end): one at a time
  per compute, FIFO (``fair=True``). The rest of the rebuild (block devices, network, the
  driver's spawn) runs beside the others, on the compute's RPC executor threads
  (``executor_thread_pool_size``, 64): rebuilds take no build semaphore
  (``max_concurrent_builds`` limits builds, and only in eventlet mode). A power-on takes
  the instance's own lock only. So a compute given all the work serializes every claim,
  while work spread over several computes claims in parallel.
* The scheduler weighs hosts on what each compute last wrote to its compute node record.
  Nova 34's ``HostManager._get_host_states`` builds fresh host states for every request,
  so what a request consumed is forgotten by the next one; a compute's usage changes only
  when that compute claims. Requests scheduled before the first claim landed all see the
  same usage, and with ``host_subset_size`` 1 and ``shuffle_best_same_weighed_hosts`` off
  they all pick the same host (ties broken by the host states' order, fixed for the
  scheduler process): concurrent evacuations herd, sequential ones (each claimed before
  the next is scheduled) alternate.

Knobs (plain attributes of NovaSim; a number for every host or a dict host -> number):
``claim_seconds``, ``rebuild_seconds``, ``start_seconds``, ``compute_slots``,
``host_subset_size``, ``shuffle_best_same_weighed_hosts``. Defaults and how they were
calibrated on the real box: README.md beside this file.
"""

from __future__ import annotations

import heapq
from typing import Any

# Calibrated on the real Nova 34 box (README.md): seconds, per compute.
CLAIM_SECONDS = 0.4
REBUILD_SECONDS = 0.1
START_SECONDS = 0.05
# oslo.messaging's executor_thread_pool_size: the RPC workers of one nova-compute.
COMPUTE_SLOTS = 64


def per_host(value: Any, host: str, default: Any) -> Any:
    """A knob's value for one host: the number itself, or its entry in a per-host dict."""
    if isinstance(value, dict):
        return value.get(host, default)
    return value


class Workload:
    """The compute_resources lock and the work slots of each compute, and the scheduler."""

    def _claim_done_at(self, host: str, now: float) -> float:
        """Queue on the host's compute_resources lock (FIFO); when this claim is over."""
        h = self._hosts[host]
        seconds = float(per_host(self.claim_seconds, host, CLAIM_SECONDS))
        begin = max(now, h.claim_free_at)
        h.claim_free_at = begin + max(seconds, 0.0)
        return h.claim_free_at

    def _slot_done_at(self, host: str, now: float, seconds: float) -> float:
        """Take the host's first free work slot for `seconds`; when that work is over."""
        h = self._hosts[host]
        slots = max(int(per_host(self.compute_slots, host, COMPUTE_SLOTS)), 1)
        busy = h.slots_busy_until
        while busy and busy[0] <= now:
            heapq.heappop(busy)
        begin = now
        if len(busy) >= slots:
            begin = max(now, heapq.heappop(busy))
        done = begin + max(seconds, 0.0)
        heapq.heappush(busy, done)
        return done

    def _reported_usage(self, host: str) -> int:
        """Servers the host's compute has claimed: what its compute node record shows."""
        return len(self._alloc[host] - self._unclaimed)

    def _weighed(self, candidates: list[str]) -> list[str]:
        """The weighers (RAM: the most free first) over the computes' reported usage, ties
        in the scheduler's own host order; then shuffle_best_same_weighed_hosts and
        host_subset_size as Nova's SchedulerManager._get_sorted_hosts."""

        def free(host: str) -> float:
            capacity = self._capacity(host)
            return (capacity if capacity is not None else 10**9) - self._reported_usage(host)

        ordered = sorted(candidates, key=lambda h: (-free(h), self._scheduler_order.index(h)))
        if self.shuffle_best_same_weighed_hosts:
            best = [h for h in ordered if free(h) == free(ordered[0])]
            self._rand.shuffle(best)
            ordered = best + ordered[len(best) :]
        subset = ordered[: max(int(self.host_subset_size), 1)]
        chosen = self._rand.choice(subset)
        return [chosen] + [h for h in ordered if h != chosen]

    def _select_host(self, source: str | None, requested: str | None) -> tuple[str | None, str]:
        """Placement + filter scheduler. Returns (host, NoValidHost reason)."""
        # placement: room, and not COMPUTE_STATUS_DISABLED (a requested host: in_tree)
        candidates = [
            h
            for h in self._hosts
            if (requested is None or h == requested)
            and self._has_room(h)
            and not self._compute_service(h).disabled
        ]
        if not candidates:
            return None, ""
        # ComputeFilter (service up) and ignore_hosts=[source]
        candidates = [
            h for h in candidates if h != source and self._service_is_up(self._compute_service(h))
        ]
        if not candidates:
            return None, "There are not enough hosts available."
        return self._weighed(candidates)[0], ""

    def _start_knobs(self) -> None:
        """The knobs' defaults and the scheduler's state (called once, by SimCore)."""
        self.claim_seconds: float | dict[str, float] = CLAIM_SECONDS
        self.rebuild_seconds: float | dict[str, float] = REBUILD_SECONDS
        self.start_seconds: float | dict[str, float] = START_SECONDS
        self.compute_slots: int | dict[str, int] = COMPUTE_SLOTS
        self.host_subset_size: int = 1
        self.shuffle_best_same_weighed_hosts: bool = False
        # Allocated by the scheduler, not yet claimed by the destination's compute.
        self._unclaimed: set[str] = set()
        # The order of the scheduler's host states, fixed for its process (a set's order).
        self._scheduler_order = list(self._hosts)
        self._rand.shuffle(self._scheduler_order)
