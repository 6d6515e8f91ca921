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
            actions = list(reversed(self._actions.get(sid, [])))
        return self._ok(req, {"instanceActions": actions})

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
            self._schedule_at(
                t0,
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
        """ComputeTaskManager.rebuild_instance (evacuate): schedule and claim."""
        server = self._servers.get(sid)
        if server is None or server["deleted"]:
            self._mig_status(mig, "error")
            return
        source = server["host"]
        if forced:
            assert requested is not None
            dest: str | None = requested if self._has_room(requested) else None
            reason = ""
        else:
            dest, reason = self._select_host(source, requested)
        if dest is None:
            self._mig_status(mig, "error")
            self._touch(server, vm_state=ERROR, task_state=None)
            self._fault(server, f"No valid host was found. {reason}", "nova.exception.NoValidHost")
            return
        self._alloc[dest].add(sid)
        self._touch(server, availability_zone="nova")

        def fail(message: str) -> None:
            self._mig_status(mig, "failed")
            self._alloc[dest].discard(sid)
            self._touch(server, vm_state=ERROR, task_state=None)
            self._fault(server, message)

        def still_ours(expected: tuple[str, ...]) -> bool:
            if server["deleted"]:
                self._mig_status(mig, "failed")
                self._alloc[dest].discard(sid)
                return False
            if server["task_state"] not in expected:
                fail(
                    f"Unexpected task state: expecting {list(expected)} but the actual "
                    f"state is {server['task_state']}"
                )
                return False
            return True

        def claim() -> None:  # ResourceTracker.rebuild_claim on the destination
            if not still_ours((REBUILDING,)):
                return
            mig.update(dest_compute=dest, dest_node=dest, dest_host="127.0.0.1")
            self._mig_status(mig, "pre-migrating")
            if on_shared is not None and on_shared != self.shared_storage:
                fail("Invalid state of instance files on shared storage")
                return
            self._touch(server, power_state=NOSTATE)
            self._on_compute(dest, max(_now(), t0 + 0.3 * total), bdm)

        def bdm() -> None:
            if still_ours((REBUILDING,)):
                self._touch(server, task_state=REBUILD_BDM)
                self._on_compute(dest, max(_now(), t0 + 0.5 * total), spawning)

        def spawning() -> None:
            if still_ours((REBUILD_BDM,)):
                self._touch(server, task_state=REBUILD_SPAWNING)
                self._on_compute(dest, max(_now(), t0 + total), spawned)

        def spawned() -> None:
            if not still_ours((REBUILD_SPAWNING,)):
                return
            if self._should_fail_evacuation(server):
                fail("Build of instance evacuation failed: NovaSim injected failure")
                return
            self._touch(
                server, vm_state=ACTIVE, task_state=None, power_state=RUNNING, launched_at=_now()
            )
            if self.evacuate_finish_window > 0:
                self._on_compute(dest, _now() + self.evacuate_finish_window, finish)
            else:
                finish()

        def finish() -> None:
            if server["deleted"]:
                self._mig_status(mig, "failed")
                return
            if stop_at_end:
                self._touch(server, vm_state=STOPPED, task_state=None, power_state=SHUTDOWN)
            # ResourceTracker.finish_evacuation
            self._hosts[dest].guests.add(sid)
            self._touch(server, host=dest, node=dest)
            self._mig_status(mig, "done")

        self._on_compute(dest, max(_now(), t0 + 0.1 * total), claim)

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

            def started() -> None:
                if server["task_state"] == POWERING_ON and not server["deleted"]:
                    self._touch(server, vm_state=ACTIVE, task_state=None, power_state=RUNNING)

            self._on_compute(server["host"], _now() + self.action_delay, started)
        return self._ok(req, None, status=202)
