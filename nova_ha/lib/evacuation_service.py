"""NovaEvacuate's evacuation service: evacuations run beside Pacemaker, never inside one of
its actions (the life of a failed host, step 3).

One long-running process on the controller where NovaEvacuate runs; the resource agent
starts it, monitors it and stops it with its whole process group. It watches the records:

- a fence action wakes it at once through a local socket (handover.wake); otherwise it sees
  the 'fenced' record at its next read, every ``watch_interval``;
- each host to work gets a worker process of its own, taken from a warm spare (imports done,
  Keystone token ready), so the first evacuation request follows the hand-over at once;
- a worker that dies is replaced within TAKEOVER_GRACE: the lease belongs to the service
  (the fence action granted it to ``handover.SERVICE_OWNER``), and the new worker picks the
  work up, asking
  Nova what was requested already (nothing is requested twice);
- several hosts are evacuated in parallel (``max_hosts`` workers).

Which hosts to work, and why, is decided by ``lifecycle.service_decision``; the service
gathers its facts (the records, its pauses after failures, the guard's holds) and acts.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING

from nova_ha.lib import handover, lifecycle, log, owners, params

if TYPE_CHECKING:
    from nova_ha.lib.state import HostRecord, StateStore
    from nova_ha.openstack.compute import Nova

LOG = log.get("evacuation-service")
RETRY_BACKOFF = (5.0, 15.0, 60.0)  # after Nova could not be reached, by attempt
CRASH_LIMIT = 3  # workers dying at once in a row for one host before backing off
# A worker killed with a request in flight: that request lands in Nova (and in its instance
# actions, which the next worker reads to request nothing twice) within this.
TAKEOVER_GRACE = 1.0
EXIT_INTERRUPTED = 3  # worker: Nova unreachable, the record says 'fenced' again
EXIT_LEFT = 4  # worker: another runner holds the lease
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# What a worker may inherit: never OCF_RESKEY_* (parameters, secrets among them, go over
# its stdin).
_ENV_PREFIXES = (
    "CIB_",
    "NOVA_HA_",
    "OS_CLIENT_CONFIG_FILE",
    "PATH",
    "LANG",
    "LC_",
    "TZ",
    "HOME",
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "HA_",
)


# -- workers -----------------------------------------------------------------------------------


@dataclass
class Worker:
    """One worker process: a spare until it is given a host."""

    process: subprocess.Popen[bytes]
    node: str | None = None
    given: float = 0.0  # monotonic time it was given the host

    @property
    def runner(self) -> str:
        return owners.name(params.EVACUATE, self.process.pid)


def _worker_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k.startswith(_ENV_PREFIXES) and not k.startswith("OCF_")
    }
    env["PYTHONPATH"] = _ROOT
    return env


def spawn_worker(raw: Mapping[str, str]) -> Worker:
    process = subprocess.Popen(
        [sys.executable, "-m", "nova_ha.lib.evacuation_service", "worker"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        close_fds=True,
        cwd="/",
        env=_worker_env(),
    )
    assert process.stdin is not None
    process.stdin.write(json.dumps(dict(raw)).encode() + b"\n")
    process.stdin.flush()
    return Worker(process)


@dataclass
class _HostHistory:
    crashes: int = 0
    attempts: int = 0
    not_before: float = 0.0
    held: str | None = None  # the incident ('since') the guard holds, until it changes


@dataclass
class Service:
    """The supervisor: decides, hands hosts to workers, replaces the ones that die."""

    parsed: params.Parsed
    raw: Mapping[str, str]
    store: StateStore
    spawn: Callable[[Mapping[str, str]], Worker] = spawn_worker
    clock: Callable[[], float] = time.time
    busy: dict[str, Worker] = field(default_factory=dict)
    spare: Worker | None = None
    hosts: dict[str, _HostHistory] = field(default_factory=dict)
    bad: dict[str, str] = field(default_factory=dict)

    def tick(self) -> list[str]:
        """Reap, read the records, start what needs starting. Returns the log lines."""
        lines = self.reap()
        try:
            records, bad = self.store.incidents()
        except Exception as err:  # noqa: BLE001 - the CIB comes back; the loop goes on
            return lines + [f"cannot read the records: {err}"]
        for node, why in bad.items():
            if self.bad.get(node) != why:
                lines.append(f"skipping {node}: its record does not decode ({why})")
        self.bad = bad
        now = self.clock()
        decisions = {
            node: self.decide(node, rec, now)
            for node, rec in records.items()
            if node not in self.busy
        }
        todo = {
            node: decision.reason
            for node, decision in decisions.items()
            if decision.action is lifecycle.ServiceAction.EVACUATE
        }
        if todo:
            todo = self._screen(records, todo, lines)
        for node, why in todo.items():
            if len(self.busy) >= max(1, self.parsed.settings.evacuation.max_hosts):
                lines.append(f"{node}: waiting for a free worker ({len(self.busy)} busy)")
                break
            lines.append(self._give(node, why))
        self._keep_spare()
        return lines

    def decide(
        self, node: str, record: HostRecord, now: float
    ) -> lifecycle.Decision[lifecycle.ServiceAction]:
        """The lifecycle's decision on `node`, from its record and what the service knows."""
        history = self._history(node)
        return lifecycle.service_decision(
            record,
            now,
            me=handover.SERVICE_OWNER,
            owner_gone=owners.gone(record.lease_owner),
            not_before=history.not_before,
            held=history.held == (record.since or "?"),
        )

    def woken(self, node: str) -> None:
        """A fence just recorded `node`: news, so any pause after a failure is over."""
        if node in self.hosts:
            self.hosts[node].not_before = 0.0
            self.hosts[node].attempts = self.hosts[node].crashes = 0

    def _history(self, node: str) -> _HostHistory:
        return self.hosts.setdefault(node, _HostHistory())

    def _screen(
        self, records: Mapping[str, HostRecord], todo: dict[str, str], lines: list[str]
    ) -> dict[str, str]:
        """The mass-failure guard, over every host's record (read only when needed)."""
        from nova_ha.lib import guard, notify

        starts = [n for n in todo if records[n].state in lifecycle.AUTOMATIC_STARTS]
        if not starts:
            return todo
        try:
            everyone = self.store.readable()[0]
        except Exception as err:  # noqa: BLE001 - without the wave, hold nothing new
            lines.append(f"cannot read every record for the mass-failure guard: {err}")
            return {}
        settings = self.parsed.settings
        held = guard.screen(
            self.store,
            everyone,
            settings.evacuation,
            starts,
            notify.Notifier.from_settings(settings.notify, params.EVACUATE),
            total_hosts=self._count_computes,
            release=handover.SERVICE_OWNER,
        )
        for node, verdict in held.items():
            lines.append(f"{node}: held by the mass-failure guard: {verdict.message()}")
            self._history(node).held = records[node].since or "?"  # until a person decides
        return {n: why for n, why in todo.items() if n not in held}

    def _count_computes(self) -> int:
        from nova_ha.openstack.compute import Nova
        from nova_ha.openstack.transport import Deadline

        nova = Nova.from_params(self.parsed)
        return len(nova.services(Deadline(self.parsed.settings.openstack.api_timeout * 3)))

    def _give(self, node: str, why: str) -> str:
        worker = self.spare or self.spawn(self.raw)
        self.spare = None
        try:
            assert worker.process.stdin is not None
            worker.process.stdin.write(node.encode() + b"\n")
            worker.process.stdin.close()
        except OSError:
            return f"{node}: worker {worker.process.pid} died before it was given the host"
        worker.node, worker.given = node, time.monotonic()
        self.busy[node] = worker
        return f"{node}: {why}; evacuating (worker {worker.process.pid})"

    def _keep_spare(self) -> None:
        if self.spare is not None and self.spare.process.poll() is not None:
            self.spare = None
        if self.spare is None:
            self.spare = self.spawn(self.raw)

    def reap(self) -> list[str]:
        """Workers that ended: done, to retry later, or died (then replaced at once)."""
        lines = []
        for node, worker in list(self.busy.items()):
            code = worker.process.poll()
            if code is None:
                continue
            del self.busy[node]
            took = time.monotonic() - worker.given
            history = self._history(node)
            if code == 0 or code == EXIT_LEFT:
                history.crashes = history.attempts = 0
                lines.append(f"{node}: worker {worker.process.pid} finished in {took:.1f} s")
            elif code == EXIT_INTERRUPTED:
                pause = RETRY_BACKOFF[min(history.attempts, len(RETRY_BACKOFF) - 1)]
                history.attempts += 1
                history.not_before = self.clock() + pause
                lines.append(f"{node}: Nova could not be reached; trying again in {pause:g} s")
            else:
                history.crashes += 1
                how = f"signal {-code}" if code < 0 else f"exit {code}"
                if history.crashes > CRASH_LIMIT:
                    history.not_before = self.clock() + RETRY_BACKOFF[-1]
                    lines.append(
                        f"{node}: worker {worker.process.pid} died ({how}) "
                        f"{history.crashes} times; pausing {RETRY_BACKOFF[-1]:g} s"
                    )
                else:
                    history.not_before = self.clock() + TAKEOVER_GRACE
                    lines.append(
                        f"{node}: worker {worker.process.pid} died ({how}) after "
                        f"{took:.1f} s; taking over in {TAKEOVER_GRACE:g} s"
                    )
        return lines

    def stop(self, grace: float = 5.0) -> None:
        workers = list(self.busy.values()) + ([self.spare] if self.spare else [])
        for worker in workers:
            if worker.process.poll() is None:
                worker.process.terminate()
        end = time.monotonic() + grace
        for worker in workers:
            try:
                worker.process.wait(max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()


# -- the processes -----------------------------------------------------------------------------


def serve(raw: Mapping[str, str], alive_file: str | None) -> int:
    """The service's main loop, until SIGTERM."""
    from nova_ha.lib import state

    parsed = params.parse(raw, params.EVACUATE)
    log.REDACTOR.add(*parsed.secrets())
    service = Service(parsed, raw, state.CibStateStore())
    stopping: list[int] = []
    wake_r = _catch_signals(stopping)
    sock = handover.listen()
    watched: list[socket.socket | int] = [sock, wake_r]
    interval = max(0.1, parsed.settings.evacuation.watch_interval)
    LOG.info(
        "evacuation service started (pid %d, reads the records every %g s, socket %s)",
        os.getpid(),
        interval,
        handover.socket_path(),
    )
    try:
        while not stopping:
            for line in service.tick():
                LOG.info("%s", line)
            _touch(alive_file)
            ready, _, _ = select.select(watched, [], [], interval)
            if wake_r in ready:
                os.read(wake_r, 512)
            if sock in ready:
                for node in handover.received(sock):
                    LOG.info("woken by the fence of %s", node[:64])
                    service.woken(node)
    finally:
        LOG.info("evacuation service stopping: %d worker(s) ended", len(service.busy))
        service.stop()
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(handover.socket_path())
    return 0


def _catch_signals(stopping: list[int]) -> int:
    """SIGTERM and SIGINT go into `stopping`; every signal wakes the main loop's select
    through the pipe whose read end this returns."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))
    signal.signal(signal.SIGINT, lambda signum, frame: stopping.append(signum))
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # wakes select: reap at once
    return wake_r


def _touch(path: str | None) -> None:
    if path:
        with contextlib.suppress(OSError), open(path, "w") as alive:
            alive.write(f"{time.time():.3f}\n")


def work(stdin: IO[bytes]) -> int:
    """A worker: parameters on the first line, warm up, then the host on the second."""
    from nova_ha.lib import evacuate_runner, proof, state

    parsed, nova = _warmed_up(stdin)
    node = stdin.readline(512).decode("utf-8", "replace").strip()
    if not node:
        return 0  # a spare the service let go
    store = state.CibStateStore()
    record = store.get(node)
    host = record.service_host or parsed.settings.naming.nova_host(node)
    confirmed = proof.from_record(record, host)
    if confirmed is None:  # rejoined meanwhile: its power-off is no longer the case
        LOG.info("%s is recorded '%s': nothing to evacuate", node, record.state)
        return 0
    mode = record.mode if record.mode in ("all", "tagged") else parsed.settings.evacuation.mode
    runner = owners.name(params.EVACUATE)
    summary = evacuate_runner.evacuate_now(
        parsed,
        store,
        confirmed,
        nova,
        runner=runner,
        lease_owner=handover.SERVICE_OWNER,
        mode=mode,
        record=record,
    )
    if summary is not None:
        return 0
    after = store.get(node)
    if after.lease_owner not in (None, handover.SERVICE_OWNER) and after.lease_live():
        return EXIT_LEFT
    return EXIT_INTERRUPTED if after.state == lifecycle.HostState.FENCED else 0


def _warmed_up(stdin: IO[bytes]) -> tuple[params.Parsed, Nova]:
    """A worker's parameters (its first line) and its Nova client, authenticated while the
    worker waits for a host: the token is ready when one comes."""
    from nova_ha.openstack.compute import Nova
    from nova_ha.openstack.exceptions import NovaError

    raw = json.loads(stdin.readline(1 << 20) or b"{}")
    parsed = params.parse(raw, params.EVACUATE)
    log.REDACTOR.add(*parsed.secrets())
    nova = Nova.from_params(parsed)
    try:
        nova.authenticate()
    except NovaError as err:
        LOG.debug("warm-up failed (asked again when a host comes): %s", err)
    return parsed, nova


def main(argv: list[str]) -> int:
    log.setup(params.EVACUATE, stderr_format="%(asctime)s %(process)d %(levelname)s: %(message)s")
    if argv[:1] == ["worker"]:
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
        return work(sys.stdin.buffer)
    if argv[:1] == ["serve"]:
        raw = json.loads(sys.stdin.buffer.readline(1 << 20) or b"{}")
        return serve(raw, argv[1] if len(argv) > 1 else None)
    print(
        "usage: python -m nova_ha.lib.evacuation_service serve [ALIVE_FILE] | worker",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
