"""Server actions: evacuate (with the conductor and compute steps behind it), os-resetState,
os-stop, os-start, and instance actions."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable
from typing import Any

from .model import (
    _BOOLEAN,
    _FQDN,
    ACTIVE,
    ERROR,
    NOSTATE,
    POWERING_OFF,
    POWERING_ON,
    REBUILD_BDM,
    REBUILD_SPAWNING,
    REBUILDING,
    RUNNING,
    SHUTDOWN,
    STOPPED,
    _Bad,
    _bool_from_string,
    _generate_password,
    _HTTPError,
    _isotime,
    _now,
    _Request,
    _Response,
)
from .workload import REBUILD_SECONDS, START_SECONDS, per_host


class ActionsApi:
    """``/servers/{id}/action`` and ``os-instance-actions``."""

    def _server_action(self, req: _Request, sid: str) -> _Response:
        body = req.json()
        if not isinstance(body, dict) or not body:
            raise _Bad("Malformed request body")
        action = next(iter(body))
        handlers: dict[str, Callable[[_Request, str, dict[str, Any]], _Response]] = {
            "evacuate": self._action_evacuate,
            "os-resetState": self._action_reset_state,
            "os-stop": self._action_stop,
            "os-start": self._action_start,
        }
        handler = handlers.get(action)
        if handler is None:
            raise _Bad(f"There is no such action: {action}")
        response = handler(req, sid, body)
        name = {"evacuate": "evacuate", "os-stop": "stop", "os-start": "start"}.get(action)
        if name:  # Nova records an instance action for these (not for os-resetState)
            self._record_action(sid, name)
        return response

    def _record_action(self, sid: str, action: str) -> None:
        with self._lock:
            self._actions.setdefault(sid, []).append(
                {
                    "action": action,
                    "instance_uuid": sid,
                    "message": None,
                    "project_id": self.project_id,
                    "user_id": self.user_id,
                    "request_id": f"req-{uuid.uuid4()}",
                    "start_time": _isotime(_now()),
                }
            )

    def _instance_actions(self, req: _Request, sid: str) -> _Response:
        with self._lock:
            if sid not in self._servers:
                raise _HTTPError(404, f"Instance {sid} could not be found.")
            actions = [
                {k: v for k, v in a.items() if k != "events"}
                for a in reversed(self._actions.get(sid, []))
            ]
        return self._ok(req, {"instanceActions": actions})

    def _instance_action(self, req: _Request, sid: str, rid: str) -> _Response:
        """One action with its events (an admin sees each event's host from 2.62)."""
        with self._lock:
            if sid not in self._servers:
                raise _HTTPError(404, f"Instance {sid} could not be found.")
            found = [a for a in self._actions.get(sid, []) if a["request_id"] == rid]
            if not found:
                raise _HTTPError(404, f"Action for request_id {rid} on instance {sid} not found")
            action = copy.deepcopy(found[0])
        action["events"] = action.get("events", [])
        if not req.ge("2.62"):
            for event in action["events"]:
                event.pop("host", None)
        return self._ok(req, {"instanceAction": action})

    def _action_event(self, sid: str, action: str, event: str, host: str) -> None:
        """An event of the server's newest `action` (a compute took up a request), as
        ComputeManager's wrap_instance_event records it when it begins."""
        actions = [a for a in self._actions.get(sid, []) if a["action"] == action]
        if actions:
            actions[-1].setdefault("events", []).append(
                {"event": event, "host": host, "start_time": _isotime(_now()), "result": None}
            )

    def _evacuate_schema(self, req: _Request) -> dict[str, Any]:
        props: dict[str, Any] = {"host": _FQDN}
        inner: dict[str, Any] = {"type": "object", "properties": props}
        if not req.ge("2.14"):
            props["onSharedStorage"] = _BOOLEAN
        props["adminPass"] = {"type": "string"}
        if req.ge("2.29") and not req.ge("2.68"):
            props["force"] = _BOOLEAN
        if not req.ge("2.14"):
            inner["required"] = ["onSharedStorage"]
        inner["additionalProperties"] = False
        return {
            "type": "object",
            "properties": {"evacuate": inner},
            "required": ["evacuate"],
            "additionalProperties": False,
        }

    def _action_evacuate(self, req: _Request, sid: str, body: dict[str, Any]) -> _Response:
        """nova/api/openstack/compute/evacuate.py + compute.api.API.evacuate."""
        self._validate_body(self._evacuate_schema(req), body)
        with self._lock:
            server = self._get_server(sid)
        ebody = body["evacuate"]
        host = ebody.get("host")
        target_stopped = req.ge("2.95")
        on_shared: bool | None = None
        if not req.ge("2.14"):
            on_shared = _bool_from_string(ebody["onSharedStorage"])
        force: bool | None = None
        if req.ge("2.29"):
            force = _bool_from_string(ebody.get("force", False), strict=True)
            if force is True and not host:
                raise _Bad("Can't force to a non-provided destination")
        if req.ge("2.14"):
            password: str | None = ebody.get("adminPass") or _generate_password()
        elif "adminPass" in ebody:
            if on_shared:
                raise _Bad("admin password can't be changed on existing disk")
            password = ebody["adminPass"]
        else:
            password = None if on_shared else _generate_password()
        with self._lock:
            if host is not None and host not in self._hosts:
                raise _HTTPError(404, f"Compute host {host} not found.")
            if server["host"] == host:
                raise _Bad("The target host can't be the same one.")
            if self._conflict_evacuates > 0:
                self._conflict_evacuates -= 1
                raise _HTTPError(
                    409, f"Cannot 'evacuate' instance {sid} while it is in task_state {REBUILDING}"
                )
            # @check_instance_state(vm_state=[ACTIVE, STOPPED, ERROR], task_state=None):
            # task_state=None *disables* the task check, so Nova accepts an evacuation of a
            # server that is already being rebuilt, and the two rebuilds break it (seen on
            # the real Nova 34 box; the contract suite holds both to it).
            if server["vm_state"] not in (ACTIVE, STOPPED, ERROR):
                raise _HTTPError(
                    409,
                    f"Cannot 'evacuate' instance {sid} while it is in "
                    f"vm_state {server['vm_state']}",
                )
            if server["launched_at"] is None:
                raise _HTTPError(
                    409, f"Cannot 'evacuate' instance {sid} while it is in launched_at None"
                )
            source = server["host"]
            if (
                source is not None
                and source in self._hosts
                and self._service_is_up(self._compute_service(source))
            ):
                raise _Bad(f"Compute service of {source} is still in use.")
            self._touch(server, task_state=REBUILDING)
            mig = self._new_migration(server, "evacuation", "accepted", host)
            orig_vm = server["vm_state"]
            stop_at_end = orig_vm == STOPPED or (target_stopped and orig_vm != ERROR)
            # before 2.29 a given host bypasses the scheduler; 2.29-2.67 only with force
            forced = bool(host) and (force is None or force is True)
            t0 = _now()
            delay = self.evacuate_delay
            total = float(delay(copy.deepcopy(server)) if callable(delay) else delay)
            self._schedule_at(  # the conductor asks the scheduler half-way to the compute
                t0 + max(total, 0.0) / 2,
                lambda: self._evac_conductor(
                    sid, mig, host, forced, on_shared, stop_at_end, t0, max(total, 0.0)
                ),
            )
        if not req.ge("2.14"):
            return self._ok(req, {"adminPass": password})
        return self._ok(req, None)

    def _evac_conductor(
        self,
        sid: str,
        mig: dict[str, Any],
        requested: str | None,
        forced: bool,
        on_shared: bool | None,
        stop_at_end: bool,
        t0: float,
        total: float,
    ) -> None:
        """ComputeTaskManager.rebuild_instance (evacuate): schedule, then the destination's
        compute claims (its compute_resources lock, one at a time), rebuilds (a work slot)
        and finishes (workload.py)."""
        server = self._servers.get(sid)
        if server is None or server["deleted"]:
            self._mig_status(mig, "error")
            return
        if forced:
            assert requested is not None
            dest: str | None = requested if self._has_room(requested) else None
            reason = ""
        else:
            dest, reason = self._select_host(server["host"], requested)
        if dest is None:
            self._mig_status(mig, "error")
            self._touch(server, vm_state=ERROR, task_state=None)
            self._fault(server, f"No valid host was found. {reason}", "nova.exception.NoValidHost")
            return
        self._alloc[dest].add(sid)
        self._unclaimed.add(sid)  # the scheduler allocated; the compute has not claimed yet
        self._touch(server, availability_zone="nova")
        rebuild = _Rebuild(self, server, mig, dest, on_shared, stop_at_end)
        self._on_compute(dest, max(_now(), t0 + total), rebuild.claim)

    def _action_reset_state(self, req: _Request, sid: str, body: dict[str, Any]) -> _Response:
        schema = {
            "type": "object",
            "properties": {
                "os-resetState": {
                    "type": "object",
                    "properties": {"state": {"type": "string", "enum": ["active", "error"]}},
                    "required": ["state"],
                    "additionalProperties": False,
                }
            },
            "required": ["os-resetState"],
            "additionalProperties": False,
        }
        self._validate_body(schema, body)
        with self._lock:
            server = self._get_server(sid)
        with self._lock:
            self._touch(server, vm_state=body["os-resetState"]["state"], task_state=None)
        return self._ok(req, None, status=202)

    def _check_state(self, server: dict[str, Any], action: str, vm_states: tuple[str, ...]) -> None:
        sid = server["id"]
        if server["vm_state"] not in vm_states:
            raise _HTTPError(
                409,
                f"Cannot '{action}' instance {sid} while it is in vm_state {server['vm_state']}",
            )
        if server["task_state"] is not None:
            raise _HTTPError(
                409,
                f"Cannot '{action}' instance {sid} while it is in task_state "
                f"{server['task_state']}",
            )

    def _action_stop(self, req: _Request, sid: str, body: dict[str, Any]) -> _Response:
        schema = {
            "type": "object",
            "properties": {"os-stop": {}},
            "required": ["os-stop"],
            "additionalProperties": False,
        }
        self._validate_body(schema, body)
        with self._lock:
            server = self._get_server(sid)
        with self._lock:
            if not server["host"]:
                raise _HTTPError(409, f"Instance {sid} is not ready")
            self._check_state(server, "stop", (ACTIVE, ERROR))
            self._touch(server, task_state=POWERING_OFF)

            def stopped() -> None:
                if server["task_state"] == POWERING_OFF and not server["deleted"]:
                    self._touch(server, vm_state=STOPPED, task_state=None, power_state=SHUTDOWN)

            self._on_compute(server["host"], _now() + self.action_delay, stopped)
        return self._ok(req, None, status=202)

    def _action_start(self, req: _Request, sid: str, body: dict[str, Any]) -> _Response:
        schema = {
            "type": "object",
            "properties": {"os-start": {}},
            "required": ["os-start"],
            "additionalProperties": False,
        }
        self._validate_body(schema, body)
        with self._lock:
            server = self._get_server(sid)
        with self._lock:
            if not server["host"]:
                raise _HTTPError(409, f"Instance {sid} is not ready")
            self._check_state(server, "start", (STOPPED,))
            self._touch(server, task_state=POWERING_ON)

            host = server["host"]

            def power_on() -> None:  # the compute got the RPC: a work slot powers it on
                seconds = float(per_host(self.start_seconds, host, START_SECONDS))
                self._on_compute(host, self._slot_done_at(host, _now(), seconds), started)

            def started() -> None:
                if server["task_state"] == POWERING_ON and not server["deleted"]:
                    self._touch(server, vm_state=ACTIVE, task_state=None, power_state=RUNNING)

            self._on_compute(host, _now() + self.action_delay, power_on)
        return self._ok(req, None, status=202)


class _Rebuild:
    """One evacuation on its destination compute (ComputeManager.rebuild_instance): each
    step runs on the engine thread, under the simulator's lock, when that compute runs."""

    def __init__(
        self,
        sim: Any,
        server: dict[str, Any],
        mig: dict[str, Any],
        dest: str,
        on_shared: bool | None,
        stop_at_end: bool,
    ) -> None:
        self.sim, self.server, self.mig, self.dest = sim, server, mig, dest
        self.on_shared, self.stop_at_end = on_shared, stop_at_end

    def fail(self, message: str) -> None:
        self.sim._mig_status(self.mig, "failed")
        self._release()
        self.sim._touch(self.server, vm_state=ERROR, task_state=None)
        self.sim._fault(self.server, message)

    def _release(self) -> None:
        self.sim._alloc[self.dest].discard(self.server["id"])
        self.sim._unclaimed.discard(self.server["id"])

    def still_ours(self, expected: tuple[str, ...]) -> bool:
        if self.server["deleted"]:
            self.sim._mig_status(self.mig, "failed")
            self._release()
            return False
        if self.server["task_state"] not in expected:
            self.fail(
                f"Unexpected task state: expecting {list(expected)} but the actual "
                f"state is {self.server['task_state']}"
            )
            return False
        return True

    def claim(self) -> None:
        """ResourceTracker.rebuild_claim: wait for the compute_resources lock, hold it."""
        self.sim._action_event(self.server["id"], "evacuate", "compute_rebuild_instance", self.dest)
        if self.still_ours((REBUILDING,)):
            done = self.sim._claim_done_at(self.dest, _now())
            self.sim._on_compute(self.dest, done, self.claimed)

    def claimed(self) -> None:
        if not self.still_ours((REBUILDING,)):
            return
        sim, mig = self.sim, self.mig
        sim._unclaimed.discard(self.server["id"])  # the compute node record shows it now
        mig.update(dest_compute=self.dest, dest_node=self.dest, dest_host="127.0.0.1")
        sim._mig_status(mig, "pre-migrating")
        if self.on_shared is not None and self.on_shared != sim.shared_storage:
            self.fail("Invalid state of instance files on shared storage")
            return
        sim._touch(self.server, power_state=NOSTATE, task_state=REBUILD_BDM)
        sim._on_compute(self.dest, _now(), self.spawning)

    def spawning(self) -> None:
        if self.still_ours((REBUILD_BDM,)):
            self.sim._touch(self.server, task_state=REBUILD_SPAWNING)
            seconds = float(per_host(self.sim.rebuild_seconds, self.dest, REBUILD_SECONDS))
            done = self.sim._slot_done_at(self.dest, _now(), seconds)
            self.sim._on_compute(self.dest, done, self.spawned)

    def spawned(self) -> None:
        if not self.still_ours((REBUILD_SPAWNING,)):
            return
        sim = self.sim
        if sim._should_fail_evacuation(self.server):
            self.fail("Build of instance evacuation failed: NovaSim injected failure")
            return
        sim._touch(
            self.server, vm_state=ACTIVE, task_state=None, power_state=RUNNING, launched_at=_now()
        )
        if sim.evacuate_finish_window > 0:
            sim._on_compute(self.dest, _now() + sim.evacuate_finish_window, self.finish)
        else:
            self.finish()

    def finish(self) -> None:
        """ResourceTracker.finish_evacuation: the server moves (and stops, >= 2.95)."""
        sim, server = self.sim, self.server
        if server["deleted"]:
            sim._mig_status(self.mig, "failed")
            return
        if self.stop_at_end:
            sim._touch(server, vm_state=STOPPED, task_state=None, power_state=SHUTDOWN)
        sim._hosts[self.dest].guests.add(server["id"])
        sim._touch(server, host=self.dest, node=self.dest)
        sim._mig_status(self.mig, "done")
