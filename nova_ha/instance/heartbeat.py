"""The guest-agent heartbeat's bookkeeping: when a run of missed pings makes a failure.

Pure: the monitor pings (one short exchange a guest an interval) and reports each answer
here. A guest counts as failed after `threshold` missed pings in a row, and only:

- if its agent answered at least once since the domain (re)started: a guest that never ran
  an agent, or has not started it yet, is not failed;
- if it was running for each of them: a paused or migrating guest does not answer, and is
  not failed (its run of misses starts again).

After a failure is reported the guest needs an answer again (a restart resets it) before it
can fail again: one failure, one recovery.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class _Guest:
    answered: bool = False  # since the domain (re)started
    misses: int = 0
    reported: bool = False


class Heartbeats:
    """Each watched guest's run of missed pings, by domain UUID."""

    def __init__(self, threshold: int) -> None:
        if threshold < 1:
            raise ValueError("the failure threshold is at least 1")
        self.threshold = threshold
        self._guests: dict[str, _Guest] = {}

    def started(self, uuid: str) -> None:
        """The domain (re)started: it has not answered yet."""
        self._guests[uuid] = _Guest()

    def gone(self, uuid: str) -> None:
        """The domain stopped or left the host: nothing to watch."""
        self._guests.pop(uuid, None)

    def keep_only(self, uuids: set[str]) -> None:
        """Forget the guests that no longer run here (bounded by the running domains)."""
        for uuid in set(self._guests) - uuids:
            del self._guests[uuid]

    def answered(self, uuid: str) -> None:
        self._guests[uuid] = _Guest(answered=True)

    def missed(self, uuid: str, running: bool) -> bool:
        """A ping went unanswered (or could not be sent); True once: the guest has failed.
        `running`: the domain ran (neither paused nor migrating) when pinged."""
        guest = self._guests.setdefault(uuid, _Guest())
        if not running:
            guest.misses = 0
            return False
        if not guest.answered or guest.reported:
            return False
        guest.misses += 1
        if guest.misses < self.threshold:
            return False
        guest.reported = True
        return True

    def misses(self, uuid: str) -> int:
        guest = self._guests.get(uuid)
        return guest.misses if guest else 0

    def watched(self) -> int:
        return len(self._guests)
