"""The nova-ha command: operator tools.

    nova-ha status [--json]          every compute host: Pacemaker, power, Nova, record
    nova-ha history [HOST] [--json]  recorded events, newest first
    nova-ha reset HOST [--force]     the administrator's reset of a host's record
    nova-ha evacuate HOST            evacuate a fenced host by hand (progress bar)
    nova-ha params [AGENT] [--all]   parameter tables
    nova-ha install-agents           put the agents where Pacemaker finds them

One module per command (each declares its `Command`: name, help, options, what runs it);
`context` reads the parameters (CIB, config file, --os-cloud) and makes the clients,
`sources` reads the cluster around (CIB resources, crm_mon, BMCs), `output` draws.
"""

from __future__ import annotations

import argparse
import logging
import sys

from nova_ha.cli import docs, evacuate, history, install, reset, status
from nova_ha.cli.arguments import Command, build_parser
from nova_ha.cli.context import CliError, load_context
from nova_ha.cli.output import escaped

COMMANDS: tuple[Command, ...] = (
    status.COMMAND,
    history.COMMAND,
    reset.COMMAND,
    evacuate.COMMAND,
    install.COMMAND,
    docs.PARAMS,
    docs.MANPAGE,
)


def parser() -> argparse.ArgumentParser:
    """The whole command line: --help, the man page, and what main() parses."""
    return build_parser(COMMANDS)


def main(argv: list[str] | None = None) -> int:
    """The command; a reader that leaves early (`nova-ha reset HOST | head -2`) changes
    nothing but the output: the command finishes its work, quietly."""
    from nova_ha.lib import log

    with log.PipeSafeOutput():
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    command_line = parser()
    args = command_line.parse_args(argv)
    command = next(c for c in COMMANDS if c.name == args.command)
    if command.local is not None:
        return command.local(args, command_line)
    _setup_logging(args.verbose)
    return _on_cluster(command, args)


def _setup_logging(verbose: bool) -> None:
    from nova_ha.lib import log

    log.setup("nova-ha", verbose=verbose)
    if not verbose:  # the library's INFO lines go to syslog; people see warnings
        for handler in logging.getLogger().handlers:
            if type(handler) is logging.StreamHandler:
                handler.setLevel(logging.WARNING)


def _on_cluster(command: Command, args: argparse.Namespace) -> int:
    """A cluster command with its parameters; its CliError is the message and exit code."""
    assert command.on_cluster is not None
    try:
        ctx = load_context(args)
        for warning in ctx.warnings:
            print(f"nova-ha: warning: {escaped(warning)}", file=sys.stderr)
        return command.on_cluster(ctx, args)
    except CliError as err:
        from nova_ha.lib import log

        print(f"nova-ha {args.command}: {escaped(log.REDACTOR.redact(str(err)))}", file=sys.stderr)
        return err.code
    except KeyboardInterrupt:
        print(f"nova-ha {args.command}: interrupted", file=sys.stderr)
        return 130
