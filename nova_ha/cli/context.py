"""A cluster command's parameters, where they come from, and the clients made from them.

Parameters (credentials included) are the agents' own, so none is typed twice; later sources
win: the CIB's fence_nova_evacuate devices and NovaEvacuate resource (``cibadmin --query
--scope resources``; ``--no-cib`` skips it), then the config file (``key = value`` lines,
default /etc/nova-ha/nova-ha.conf, ``--config``), then ``--os-cloud``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import stat
from typing import Any

from nova_ha.cli import sources
from nova_ha.errors import NovaHaError
from nova_ha.lib import params

DEFAULT_CONFIG = "/etc/nova-ha/nova-ha.conf"

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class CliError(NovaHaError):
    """Stops a command with a message for the operator and an exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def read_config(path: str) -> list[tuple[str, str]]:
    """`key = value` lines; '#' comments and blank lines ignored; values may be quoted."""
    try:
        with open(path) as stream:
            # "\n" only, as the agents read their input: str.splitlines() would also cut at
            # \x1c, \x85, \u2028... inside a value.
            lines = [line.removesuffix("\r") for line in stream.read(1 << 18).split("\n")]
    except OSError as err:
        raise CliError(f"cannot read {path}: {err.strerror}", EXIT_USAGE) from None
    items = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith(("#", ";")):
            continue
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise CliError(f"{path}, line {number}: expected 'name = value'", EXIT_USAGE)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        items.append((key.strip(), value))
    return items


def _config_warnings(path: str, items: list[tuple[str, str]]) -> list[str]:
    secrets = params.secret_names()
    if not any(params.canonical_name(k, params.CLI) in secrets for k, _ in items):
        return []
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return []
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        return [f"{path} holds a secret and is readable by others: chmod 600 {path}"]
    return []


def _config_params(path: str) -> tuple[list[tuple[str, str]], list[str]]:
    """The config file's known parameters, and warnings (readable secrets, unknown names)."""
    items = read_config(path)
    warnings = _config_warnings(path, items)
    for name, _ in items:
        if params.canonical_name(name, params.CLI) is None:
            warnings.append(f"{path}: ignoring unknown parameter '{name}'")
    return [(k, v) for k, v in items if params.canonical_name(k, params.CLI)], warnings


@dataclasses.dataclass
class Context:
    """One command's parameters and the clients made from them, lazily."""

    parsed: params.Parsed
    resources: Any = None
    warnings: list[str] = dataclasses.field(default_factory=list)
    _store: Any = None

    def store(self) -> Any:
        from nova_ha.lib import state

        if self._store is None:
            self._store = state.CibStateStore()
        return self._store

    def nova(self) -> Any:
        from nova_ha.openstack.compute import Nova

        problems = params.check_openstack(self.parsed)
        if problems:
            raise CliError(
                "; ".join(problems) + " (in the config file, --os-cloud, or the "
                "cluster's fence_nova_evacuate device)",
                EXIT_USAGE,
            )
        return Nova.from_params(self.parsed)

    def notifier(self) -> Any:
        from nova_ha.lib import notify

        return notify.Notifier.from_settings(self.parsed.settings.notify, params.CLI)


def load_context(args: argparse.Namespace) -> Context:
    """The parameters from every source, checked; secrets join the log's redaction."""
    raw: list[tuple[str, str]] = []
    warnings: list[str] = []
    resources = None
    if not args.no_cib:
        resources = sources.cib_resources()
        raw += sources.device_params(resources)
    config = args.config or (DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None)
    if config:
        from_file, warnings = _config_params(config)
        raw += from_file
    if args.os_cloud:
        raw.append(("os_cloud", args.os_cloud))
    parsed = params.parse(raw, params.CLI)
    from nova_ha.lib import log

    log.REDACTOR.add(*parsed.secrets())
    problems = parsed.problems + params.check_evacuation(parsed) + params.check_notify(parsed)
    if problems:
        raise CliError("; ".join(problems), EXIT_USAGE)
    warnings += [w for w in parsed.warnings if "deprecated" in w]
    return Context(parsed=parsed, resources=resources, warnings=warnings)


def known_node(records: dict[str, Any], node: str) -> str:
    """The node as the CIB spells it (Pacemaker compares names case-insensitively)."""
    for name in records:
        if name.lower() == node.lower():
            return name
    known = ", ".join(sorted(records)) or "none"
    raise CliError(f"{node} is not a compute node of this cluster (known: {known})")
