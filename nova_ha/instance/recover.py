"""Recover one server whose guest failed on a healthy host: through Nova, never behind it.

Stop it unless Nova shows it SHUTOFF (Nova powers off what is left of the guest and keeps
its own records right), wait for SHUTOFF, start it, follow it to ACTIVE. Every call is
bounded by one Deadline (Nova's transport retries within it). What ends an attempt:

- ``Unavailable`` (Nova unreachable, or the server not there yet in time): the caller keeps
  the recovery pending and tries again later, within its retry window;
- ``NotOurs``: the server was deleted, moved, put in ERROR or taken over by a task of Nova
  or a user meanwhile: nothing to do any more, said why.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from nova_ha.errors import NovaHaError
from nova_ha.lib import log
from nova_ha.openstack.exceptions import Conflict, NotFound, Unavailable
from nova_ha.openstack.transport import Deadline

if TYPE_CHECKING:
    from nova_ha.openstack.compute import Nova
    from nova_ha.openstack.views import Server

LOG = log.get("instance-recover")

POLL = 1.0  # seconds between looks at the server while it stops or starts
# Nova's tasks that belong to a stop or start (ours, or Nova's power-state sync).
POWER_TASKS = frozenset({None, "powering-off", "powering-on"})


class NotOurs(NovaHaError):
    """The server is no longer a failed guest of this host for us to recover."""


@dataclass
class Phases:
    """Seconds from the attempt's start: stop asked, SHUTOFF seen, start asked, ACTIVE."""

    marks: dict[str, float] = field(default_factory=dict)

    def line(self) -> str:
        return " ".join(f"{name} {seconds:.1f}s" for name, seconds in self.marks.items())


@dataclass
class Recovery:
    nova: Nova
    host: str  # this compute host, as Nova names it
    timeout: float  # one attempt, all calls and waits
    poll: float = POLL
    sleep: Callable[[float], None] = time.sleep

    def run(self, server_id: str) -> Phases:
        """Stop (unless SHUTOFF), start, follow to ACTIVE; the phases' times."""
        deadline = Deadline(self.timeout)
        phases, began = Phases(), time.monotonic()

        def mark(name: str) -> None:
            phases.marks[name] = time.monotonic() - began

        server = self._look(deadline, server_id)
        if server.status != "SHUTOFF":
            if server.task_state != "powering-off":
                self._ask(self.nova.stop_server, deadline, server_id)
                mark("stop asked")
            self._wait(deadline, server_id, "SHUTOFF")
            mark("shutoff")
        self._ask(self.nova.start_server, deadline, server_id)
        mark("start asked")
        self._wait(deadline, server_id, "ACTIVE")
        mark("active")
        return phases

    def _look(self, deadline: Deadline, server_id: str) -> Server:
        try:
            server = self.nova.server(deadline, server_id)
        except NotFound:
            raise NotOurs("the server was deleted") from None
        if server.host != self.host:
            raise NotOurs(f"Nova places the server on {server.host} now")
        if server.status == "ERROR" or server.vm_state == "error":
            raise NotOurs("Nova shows the server in ERROR: an operator's call")
        if server.task_state not in POWER_TASKS:
            raise NotOurs(f"Nova's task {server.task_state} is under way")
        return server

    def _ask(self, call: Callable[[Deadline, str], None], deadline: Deadline, sid: str) -> None:
        try:
            call(deadline, sid)
        except Conflict:
            # Already in that state, or a power task still running: the server's state,
            # read next, tells which.
            LOG.info("server %s: Nova answered 409 (conflict); looking at the server", sid)

    def _wait(self, deadline: Deadline, server_id: str, status: str) -> None:
        while True:
            server = self._look(deadline, server_id)
            if server.status == status and server.task_state is None:
                return
            if deadline.remaining() <= self.poll:
                raise Unavailable(
                    f"server {server_id}: not {status} in time (status {server.status}, "
                    f"task {server.task_state})"
                )
            self.sleep(self.poll)
