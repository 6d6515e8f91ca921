"""The command line as data: each command module declares a `Command` (its name, help, options
and what runs it); `build_parser` makes the argparse parser, for --help and the man page too."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from nova_ha.cli.context import DEFAULT_CONFIG

if TYPE_CHECKING:
    from nova_ha.cli.context import Context


@dataclasses.dataclass(frozen=True)
class Option:
    """One add_argument call: its names or flags and its keywords."""

    flags: tuple[str, ...]
    settings: dict[str, Any]


def option(*flags: str, **settings: Any) -> Option:
    return Option(flags, settings)


JSON_OUTPUT = option("--json", action="store_true", help="JSON for machines")


@dataclasses.dataclass(frozen=True)
class Command:
    """A subcommand. A cluster command runs with the parameters read from the cluster and the
    config file (`on_cluster(ctx, args)`, the common options added); a local one needs none
    (`local(args, parser)`)."""

    name: str
    help: str
    options: tuple[Option, ...] = ()
    on_cluster: Callable[[Context, argparse.Namespace], int] | None = None
    local: Callable[[argparse.Namespace, argparse.ArgumentParser], int] | None = None


def bounded(kind: type, low: float, high: float) -> Any:
    """An argparse type: a number of `kind` within [low, high] (no inf, nan or 1e10)."""

    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text[:20]!r} is not a number") from None
        if not low <= value <= high:  # also false for nan
            raise argparse.ArgumentTypeError(f"{text[:20]!r} is not between {low:g} and {high:g}")
        return value

    return convert


COMMON = (  # every cluster command's
    option(
        "--config",
        metavar="PATH",
        help=f"parameter file, 'name = value' lines (default: {DEFAULT_CONFIG} if it exists)",
    ),
    option("--os-cloud", metavar="CLOUD", help="cloud name in clouds.yaml"),
    option(
        "--no-cib",
        action="store_true",
        help="do not read parameters from the cluster's fence devices",
    ),
    option(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="colours (default: on a terminal only)",
    ),
    option("-v", "--verbose", action="store_true", help="show debug messages"),
)


def _add_options(parser: argparse.ArgumentParser, options: tuple[Option, ...]) -> None:
    for opt in options:
        parser.add_argument(*opt.flags, **opt.settings)


def build_parser(commands: tuple[Command, ...]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nova-ha",
        description="nova-ha operator tools",
        epilog="Parameters come from the cluster's NovaEvacuate resource and fence_nova_evacuate "
        f"devices, then the config file ({DEFAULT_CONFIG}), then --os-cloud.",
    )
    common = argparse.ArgumentParser(add_help=False)
    _add_options(common, COMMON)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in commands:
        parents = [common] if command.on_cluster else []
        _add_options(
            sub.add_parser(command.name, parents=parents, help=command.help), command.options
        )
    return parser
