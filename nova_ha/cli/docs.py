"""nova-ha params and nova-ha manpage: the parameter tables and this command's man page, both
made from the parameter table (and the man page from the parser)."""

from __future__ import annotations

import argparse

from nova_ha.cli.arguments import Command, option
from nova_ha.lib import docs, params


def run_params(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    print(docs.parameters_page() if args.all or not args.agent else docs.markdown_table(args.agent))
    return 0


def run_manpage(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    print(docs.cli_man_page(parser))
    return 0


PARAMS = Command(
    "params",
    "print an agent's parameters as a Markdown table",
    options=(
        option(
            "agent",
            nargs="?",
            choices=[params.FENCE, params.COMPUTE, params.EVACUATE, params.INSTANCE],
        ),
        option("--all", action="store_true", help="the whole docs/parameters.md page"),
    ),
    local=run_params,
)
MANPAGE = Command("manpage", "print this command's man page (troff)", local=run_manpage)
