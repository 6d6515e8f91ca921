"""nova-ha evacuate: evacuate a fenced host by hand, under its lease, with a progress bar.

The lifecycle decides whether the host may be evacuated now; the record's confirmed power-off
is the proof every Nova write takes."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any

from nova_ha.cli.arguments import Command, bounded, option
from nova_ha.cli.context import EXIT_FAILED, EXIT_OK, CliError, Context, known_node
from nova_ha.cli.output import ProgressBar, escaped, use_colour
from nova_ha.lib import lifecycle, owners, params
from nova_ha.lib.lifecycle import OperatorAction

if TYPE_CHECKING:
    from nova_ha.lib.proof import PowerOffConfirmed

_MODES = ("all", "tagged")  # the modes that move servers


def _host_record(store: Any, host: str, take_over: bool) -> tuple[dict[str, Any], str, Any]:
    """Every readable record, the node as the CIB spells it, and its record (the lease taken
    from NovaEvacuate first when asked)."""
    from nova_ha.lib import handover, state

    try:
        records, bad = store.readable()
    except state.StateError as err:
        raise CliError(f"cannot read the records: {err}") from None
    if host in bad:
        raise CliError(
            f"the record of {host} does not read ({bad[host]}); 'nova-ha reset {host}' replaces it"
        )
    node = known_node(records, host)
    record = records[node]
    if take_over and record.lease_owner == handover.SERVICE_OWNER:
        try:
            store.release_lease(node, handover.SERVICE_OWNER)
        except state.StateError as err:
            raise CliError(f"cannot take the lease of {node}: {err}") from None
        print(escaped(f"{node}: lease taken from {handover.SERVICE_OWNER}"))
        record = store.get(node)
    return records, node, record


def _confirmed_off(record: Any, node: str, host: str, now: float) -> PowerOffConfirmed:
    """The proof to evacuate with, once the lifecycle says the host may be evacuated now."""
    from nova_ha.lib import handover, proof

    decision = lifecycle.operator_evacuate(
        record, now, owner_gone=owners.gone(record.lease_owner), service=handover.SERVICE_OWNER
    )
    if decision.action is not OperatorAction.GO:
        raise CliError(f"refusing: {decision.reason}")
    confirmed = proof.from_record(record, host)
    if confirmed is None:
        raise CliError(
            f"refusing: {node} is recorded '{record.state}': its power-off is not confirmed"
        )
    return confirmed


def _mode(asked: str | None, recorded: str | None, configured: str) -> str:
    """--mode, else the record's, else the 'evacuate' parameter's, else all."""
    return (
        asked
        or (recorded if recorded in _MODES else None)
        or (configured if configured in _MODES else "all")
    )


def _server_count(nova: Any, deadline: Any, confirmed: PowerOffConfirmed) -> int:
    """How many servers the host has, once it is surely forced down."""
    from nova_ha.lib import recovery
    from nova_ha.openstack.exceptions import NovaError

    try:
        recovery.force_down(nova, deadline, confirmed)  # done at fencing; makes sure of it
        return len(nova.servers_on(deadline, confirmed.host))
    except NovaError as err:
        raise CliError(f"cannot prepare the evacuation of {confirmed.host}: {err}") from None


def _evacuate(
    nova: Any,
    store: Any,
    confirmed: PowerOffConfirmed,
    options: Any,
    deadline: Any,
    bar: ProgressBar,
) -> Any:
    """recovery.evacuate_host, its progress on the bar; None: another runner has the lease."""
    from nova_ha.lib import recovery
    from nova_ha.openstack.exceptions import NovaError

    try:
        return recovery.evacuate_host(
            nova, store, confirmed, options, deadline, owners.name(params.CLI), progress=bar
        )
    except NovaError as err:
        raise CliError(
            f"evacuation of {confirmed.node} interrupted: {err}; the record is "
            "back to 'fenced' (NovaEvacuate or this command resumes it)"
        ) from None
    finally:
        bar.close()


def _report(summary: Any) -> int:
    """The summary line, a line per server not evacuated; failed if any failed or is left."""
    print(escaped(summary.line()))
    for outcome in summary.outcomes:
        if outcome.result in ("failed", "unfinished", "skipped"):
            print(
                escaped(
                    f"  {outcome.result:<10} {outcome.name or '-'} ({outcome.server_id})"
                    f"{' - ' + outcome.detail if outcome.detail else ''}"
                )
            )
    return EXIT_OK if not (summary.count("failed") or summary.count("unfinished")) else EXIT_FAILED


def run(ctx: Context, args: argparse.Namespace) -> int:
    from nova_ha.lib import guard, recovery
    from nova_ha.openstack.transport import Deadline

    store = ctx.store()
    now = time.time()
    records, node, record = _host_record(store, args.host, args.take_over)
    settings = ctx.parsed.settings
    evacuation = settings.evacuation
    confirmed = _confirmed_off(
        record, node, record.service_host or settings.naming.nova_host(node), now
    )
    mode = _mode(args.mode, record.mode, evacuation.mode)
    verdict = guard.check(records, evacuation, node)
    if verdict.blocked:
        print(
            escaped(
                f"note: the mass-failure guard holds {node} ({verdict.message()}); "
                "evacuating it by hand as asked"
            )
        )
    nova = ctx.nova()
    timeout = args.timeout or max(evacuation.timeout, 600.0)
    deadline = Deadline(timeout)
    options = recovery.Options.from_settings(evacuation, mode, ctx.notifier())
    total = _server_count(nova, deadline, confirmed)
    print(
        escaped(
            f"{node}: recorded '{record.state}'; {total} servers on {confirmed.host}; "
            f"evacuating ({mode}, at most {evacuation.max_parallel} at once, within "
            f"{timeout:g} s)"
        )
    )
    bar = ProgressBar(total, colour=use_colour(args.color, sys.stdout))
    summary = _evacuate(nova, store, confirmed, options, deadline, bar)
    if summary is None:
        raise CliError(f"{node}: another runner took the host's lease first; leaving it to them")
    return _report(summary)


COMMAND = Command(
    "evacuate",
    "evacuate a fenced host by hand",
    options=(
        option("host", help="Pacemaker node name of the fenced compute host"),
        option(
            "--mode",
            choices=_MODES,
            help="which servers (default: as recorded, else the 'evacuate' parameter, else all)",
        ),
        option(
            "--take-over",
            action="store_true",
            help="take the host's lease from NovaEvacuate (when it is stopped or cannot "
            "work the host) instead of waiting for its end",
        ),
        option(
            "--timeout",
            type=bounded(float, 0, 86400),
            default=0,
            help="seconds allowed (default: 600, or evacuate_timeout if longer)",
        ),
    ),
    on_cluster=run,
)
