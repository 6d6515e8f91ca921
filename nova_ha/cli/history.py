"""nova-ha history: the recorded events of every host (or one), newest first."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from nova_ha.cli.arguments import JSON_OUTPUT, Command, bounded, option
from nova_ha.cli.context import EXIT_OK, CliError, Context
from nova_ha.cli.output import escaped, table, use_colour
from nova_ha.lib.lifecycle import Event

# Keyed by str: the events' names come from JSON (an Event is a str and looks the same up).
_TONES: dict[str, str] = {
    Event.FENCED: "red",
    Event.EVACUATION_FAILED: "red",
    Event.EVACUATION_BLOCKED: "red",
    Event.EVACUATION_FINISHED: "green",
    Event.REJOINED: "green",
    Event.RESET: "yellow",
    Event.INSTANCE_FAILED: "yellow",
    Event.INSTANCE_RECOVERED: "green",
    Event.INSTANCE_RECOVERY_FAILED: "red",
}


def events_newest_first(records: dict[str, Any]) -> list[dict[str, str]]:
    flat = []
    for node, rec in records.items():
        for index, event in enumerate(rec.history):
            flat.append(
                (
                    (event.time, index),
                    {"time": event.time, "node": node, "event": event.name, "detail": event.detail},
                )
            )
    flat.sort(key=lambda item: item[0], reverse=True)
    return [entry for _, entry in flat]


def _records(ctx: Context, host: str | None) -> dict[str, Any]:
    """The host's record, or every readable one (a warning for each that does not read)."""
    from nova_ha.lib import state

    store = ctx.store()
    try:
        if host:
            records, bad = {host: store.get(host)}, {}
        else:
            records, bad = store.readable()
    except state.StateError as err:
        raise CliError(f"cannot read the records: {err}") from None
    for node, why in bad.items():
        print(escaped(f"warning: the record of {node} does not read ({why})"), file=sys.stderr)
    return records


def run(ctx: Context, args: argparse.Namespace) -> int:
    events = events_newest_first(_records(ctx, args.host))
    if args.limit:
        events = events[: args.limit]
    if args.json:
        print(json.dumps(events, indent=2))
        return EXIT_OK
    if not events:
        print(f"no recorded event{' for ' + args.host if args.host else ''}")
        return EXIT_OK
    rows = [[e["time"], e["node"], e["event"], e["detail"]] for e in events]
    print(
        table(
            ["TIME", "NODE", "EVENT", "DETAIL"],
            rows,
            use_colour(args.color, sys.stdout),
            [[None, None, _TONES.get(e["event"]), None] for e in events],
        )
    )
    return EXIT_OK


COMMAND = Command(
    "history",
    "recorded events, newest first",
    options=(
        option("host", nargs="?", help="only this host (Pacemaker node name)"),
        JSON_OUTPUT,
        option("-n", "--limit", type=bounded(int, 0, 100000), default=0, help="at most N events"),
    ),
    on_cluster=run,
)
