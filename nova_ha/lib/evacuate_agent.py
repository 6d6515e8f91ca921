"""What the NovaEvacuate OCF agent does on the controllers: finish what fencing left.

Its monitor reads every host's record (one CIB query) and resumes, with the same code the
stonith agent uses, every host recorded as fenced whose work is unfinished: the stonith agent
was killed by the stonith timeout, a controller died mid-way, evacuate=record was chosen, or
retries ran out while no host had room. It never acts on a host whose power-off is not
recorded as confirmed (only the fencer records 'fenced', after the BMC or the topology
confirmed it), and never on a host another runner holds the lease of.
"""

from __future__ import annotations

import calendar
import concurrent.futures
import os
import time
from typing import TYPE_CHECKING

from nova_ha import __version__
from nova_ha.lib import log, ocf_proto, params
from nova_ha.lib.ocf_proto import OcfError, OcfRequest

if TYPE_CHECKING:
    from nova_ha.lib.state import HostRecord, StateStore

LOG = log.get("evacuate-agent")
FAILED_RETRY_AFTER = 120.0  # seconds before a host whose evacuation failed is tried again

ACTIONS = [
    ocf_proto.OcfAction("start", 20),
    ocf_proto.OcfAction("stop", 20),
    ocf_proto.OcfAction("monitor", 600, interval=10, depth=0),
    ocf_proto.OcfAction("validate-all", 20),
    ocf_proto.OcfAction("meta-data", 5),
]


def validate(request: OcfRequest) -> list[tuple[int, str]]:
    parsed = request.params
    found = [(ocf_proto.OCF_ERR_CONFIGURED, p) for p in
             params.check_openstack(parsed) + params.check_evacuation(parsed) +
             params.check_notify(parsed)]
    if parsed.get("evacuate") not in ("all", "tagged"):
        found.append((ocf_proto.OCF_ERR_CONFIGURED, "parameter 'evacuate': NovaEvacuate "
                      "evacuates 'all' or 'tagged' servers of hosts recorded with "
                      "evacuate=record"))
    return found


def _marker(request: OcfRequest) -> str:
    directory = request.env.get("HA_RSCTMP") or "/run/resource-agents"
    name = (request.resource or "NovaEvacuate").replace("/", "_")
    return os.path.join(directory, f"nova-ha-{name}.started")


def start(request: OcfRequest) -> int:
    path = _marker(request)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as marker:
        marker.write(f"{time.time():.0f}\n")
    return ocf_proto.OCF_SUCCESS


def stop(request: OcfRequest) -> int:
    try:
        os.unlink(_marker(request))
    except FileNotFoundError:
        pass
    return ocf_proto.OCF_SUCCESS


def _owner_dead(owner: str | None) -> bool:
    """A lease held by a process of this node that no longer exists (a stonith agent killed
    by the stonith timeout) can be taken over at once instead of waiting for its expiry."""
    if not owner or "@" not in owner:
        return False
    node, _, pid = owner.split("@", 1)[1].rpartition(":")
    if node != os.uname().nodename or not pid.isdigit():
        return False
    return not os.path.exists(f"/proc/{pid}")


def needs_work(record: HostRecord, now: float) -> bool:
    if record.state == "fenced":
        return record.mode != "none"
    if record.state == "evacuating":
        return not record.lease_live(now) or _owner_dead(record.lease_owner)
    if record.state == "failed":
        return now - _epoch(record.since) >= FAILED_RETRY_AFTER
    return False


def _epoch(iso: str | None) -> float:
    if not iso:
        return 0.0
    try:
        return float(calendar.timegm(time.strptime(iso, "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        return 0.0


def resume_hosts(request: OcfRequest, store: StateStore, budget: float) -> dict[str, str]:
    """Resume every host that needs it, in parallel; {node: outcome} for the log."""
    from nova_ha.lib import guard, notify, recovery
    from nova_ha.lib.nova import Deadline, Nova, NovaError

    parsed = request.params
    records = store.all()
    now = time.time()
    todo = {node: rec for node, rec in records.items() if needs_work(rec, now)}
    if not todo:
        return {}
    nova = Nova.from_params(parsed)
    owner = recovery.owner_name(params.EVACUATE)
    deadline = Deadline(min(budget, parsed["evacuate_timeout"]))
    notifier = notify.Notifier.from_params(parsed, params.EVACUATE)
    held = guard.screen(store, records, parsed, list(todo), notifier,
                        total_hosts=lambda: len(nova.services(deadline)))
    for node in held:
        del todo[node]

    def resume(node: str, rec: HostRecord) -> str:
        if _owner_dead(rec.lease_owner):
            LOG.info("%s: lease holder %s is gone; taking over", node, rec.lease_owner)
            store.release_lease(node, rec.lease_owner)
        host = rec.service_host or params.nova_host_name(node, parsed.get("host_map", ""),
                                                         parsed.get("domain", ""))
        mode = rec.mode if rec.mode in ("all", "tagged") else parsed["evacuate"]
        options = recovery.Options(
            mode=mode, tag=parsed.get("evacuable_tag"), max_parallel=parsed["max_parallel"],
            retries=parsed["evacuate_retries"],
            target_hosts=[h for h in (parsed.get("target_hosts") or "").split(",") if h],
            notifier=notifier)
        try:
            summary = recovery.evacuate_host(nova, store, node, host, options, deadline, owner)
        except NovaError as err:
            return f"interrupted: {err}"
        return "held by another runner" if summary is None else summary.line()

    outcomes = {node: f"held by the mass-failure guard: {v.message()}"
                for node, v in held.items()}
    if not todo:
        return outcomes
    with concurrent.futures.ThreadPoolExecutor(max(1, len(todo))) as pool:
        futures = {node: pool.submit(resume, node, rec) for node, rec in todo.items()}
        return outcomes | {node: future.result() for node, future in futures.items()}


def monitor(request: OcfRequest) -> int:
    from nova_ha.lib import state
    from nova_ha.lib.nova import Deadline, Nova, NovaError

    if not os.path.exists(_marker(request)):
        return ocf_proto.OCF_NOT_RUNNING
    try:
        Nova.from_params(request.params).microversion(Deadline(min(request.timeout / 4, 30)))
    except (NovaError, params.SecretScriptError) as err:
        raise OcfError(ocf_proto.OCF_ERR_GENERIC, f"cannot reach Nova: {err}") from None
    if request.is_probe:
        return ocf_proto.OCF_SUCCESS
    try:
        outcomes = resume_hosts(request, state.CibStateStore(), request.timeout * 0.8)
    except state.StateError as err:
        raise OcfError(ocf_proto.OCF_ERR_GENERIC, f"cannot read the host records: {err}"
                       ) from None
    except NovaError as err:
        raise OcfError(ocf_proto.OCF_ERR_GENERIC, f"cannot reach Nova: {err}") from None
    for node, outcome in outcomes.items():
        LOG.info("resumed %s: %s", node, outcome)
    return ocf_proto.OCF_SUCCESS


HANDLERS = {"start": start, "stop": stop, "monitor": monitor}

SHORTDESC = "Completes the evacuation of fenced Nova compute hosts"
LONGDESC = (
    "NovaEvacuate runs on the controllers (one instance). Every monitor reads the nova-ha "
    "records of all compute hosts from the CIB and resumes the evacuation of every host "
    "recorded as fenced whose work is unfinished (stonith agent killed by the stonith "
    "timeout, controller lost mid-way, fence devices with evacuate=record, no room earlier), "
    "with the same code as fence_nova_evacuate and under the host's lease, so two runners "
    "never work one host at once. monitor fails only when Nova cannot be reached."
)

SPEC = ocf_proto.OcfAgentSpec(params.EVACUATE, __version__, SHORTDESC, LONGDESC, ACTIONS,
                              HANDLERS, validate)
