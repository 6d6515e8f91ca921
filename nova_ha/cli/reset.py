"""nova-ha reset: the administrator's reset of a host's record, after a repair.

The record goes back to 'ok' (its history kept, a 'reset' event added); Nova is not changed:
NovaCompute lifts nova-ha's force-down once the service reports up on the host."""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from nova_ha.cli.arguments import Command, option
from nova_ha.cli.context import EXIT_OK, CliError, Context, known_node
from nova_ha.cli.output import escaped
from nova_ha.lib import lifecycle, owners
from nova_ha.lib.lifecycle import Event, HostState, OperatorAction


def _who() -> str:
    import getpass

    try:
        user = os.environ.get("SUDO_USER") or getpass.getuser()
    except (KeyError, OSError):
        user = "uid" + str(os.getuid())
    return f"{user}@{os.uname().nodename}"


def _record_before(store: Any, host: str) -> tuple[str, Any]:
    """The node as the CIB spells it and its record; None for a record that does not read
    (the reset is the way out of a damaged one)."""
    from nova_ha.lib import state

    try:
        records = store.all()
    except state.StateError:
        records = None  # a damaged record: try it host by host
    node = known_node(records, host) if records is not None else host
    try:
        return node, store.get(node)
    except state.StateError as err:
        print(escaped(f"{node}: the record does not read ({err}); resetting it"))
        return node, None


def _note(args: argparse.Namespace) -> str:
    """Why and by whom, kept in the host's history."""
    note = (args.note or "") + (" " if args.note else "") + f"by {_who()}"
    return note + " (forced)" if args.force else note


def run(ctx: Context, args: argparse.Namespace) -> int:
    from nova_ha.lib import state

    store = ctx.store()
    now = time.time()
    node, before = _record_before(store, args.host)
    decision = lifecycle.operator_reset(
        before,
        now,
        owner_gone=owners.gone(before.lease_owner if before else None),
        force=args.force,
        skew=store.skew,
    )
    if decision.action is OperatorAction.REFUSE:
        raise CliError(decision.reason)
    if decision.action is OperatorAction.NOTHING:
        print(escaped(decision.reason))
        return EXIT_OK
    note = _note(args)
    try:
        after = store.reset(node, note=note)
    except state.StateError as err:
        raise CliError(f"cannot reset {node}: {err}") from None
    for line in describe_reset(before, after, now):
        print(escaped(line))
    if before is None or before.state != HostState.OK:
        print(escaped(_nova_unchanged(after.service_host or node)))
    ctx.notifier().send(
        Event.RESET,
        node,
        host=after.service_host,
        detail=note,
        previous_state=before.state if before else None,
    )
    return EXIT_OK


def describe_reset(before: Any, after: Any, now: float) -> list[str]:
    """What the reset changed, line by line."""
    node = after.host
    if before is None:
        return [
            f"{node}: unreadable record replaced: state ok, lease cleared, "
            f"history kept with a 'reset' event"
        ]
    lines = [
        f"{node}: state {before.state} -> ok"
        if before.state != HostState.OK
        else f"{node}: state stays ok"
    ]
    counts = [
        f"{n}={getattr(before, n)}" for n in ("found", "evacuated", "failed") if getattr(before, n)
    ]
    if counts:
        lines.append(f"  counts {' '.join(counts)} cleared")
    if before.mode:
        lines.append(f"  mode {before.mode} cleared")
    if before.lease_owner:
        alive = "live" if before.lease_live(now) else "expired"
        lines.append(f"  lease of {before.lease_owner} ({alive}) released")
    lines.append(f"  history kept ({len(before.history)} events), 'reset' event added")
    return lines


COMMAND = Command(
    "reset",
    "administrator's reset of a host's record (after a repair)",
    options=(
        option("host", help="Pacemaker node name of the compute host"),
        option(
            "--force",
            action="store_true",
            help="reset even while a lease is live (its holder must be gone)",
        ),
        option("--note", default="", help="why, kept in the host's history"),
    ),
    on_cluster=run,
)


def _nova_unchanged(host: str) -> str:
    return (
        f"  Nova is not changed: nova-compute on {host} stays forced down and disabled until "
        "NovaCompute starts it there (it lifts nova-ha's force-down once the service reports "
        "up)."
    )
