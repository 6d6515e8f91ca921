"""The OCF resource-agent protocol (resource-agents' conventions).

resource-agents ships a Python helper (heartbeat/ocf.py). We do not use it: it declares
parameters with its own objects, so we would declare each parameter twice, and it lives
outside site-packages. What we need of the protocol is small and lives here: OCF_RESKEY_*
parameters, probe detection, exit codes 0-7, 'ocf-exit-reason:' lines and meta-data.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import NoReturn

from nova_ha import __version__
from nova_ha.errors import NovaHaError
from nova_ha.lib import docs, log, notify, params

OCF_SUCCESS = 0
OCF_ERR_GENERIC = 1
OCF_ERR_ARGS = 2
OCF_ERR_UNIMPLEMENTED = 3
OCF_ERR_PERM = 4
OCF_ERR_INSTALLED = 5
OCF_ERR_CONFIGURED = 6
OCF_NOT_RUNNING = 7

# The OCF DTD (ra-api-1.dtd) knows string/integer/boolean only, the RNG also second and
# select: render what both accept.
_OCF_TYPES = {
    "string": "string",
    "integer": "integer",
    "second": "integer",
    "boolean": "boolean",
    "select": "string",
}


class OcfError(NovaHaError):
    """Ends an action with an OCF exit code and an exit reason for Pacemaker."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class OcfAction:
    name: str
    timeout: int  # seconds
    interval: int | None = None
    depth: int | None = None


@dataclass
class OcfRequest(params.Request):
    """An OCF agent's run: with Pacemaker's environment (meta attributes)."""

    env: Mapping[str, str]

    @property
    def interval_ms(self) -> int:
        try:
            return int(self.env.get("OCF_RESKEY_CRM_meta_interval", "0") or 0)
        except ValueError:
            return 0

    @property
    def is_probe(self) -> bool:
        return self.action == "monitor" and self.interval_ms == 0

    @property
    def timeout(self) -> float:
        """The action's timeout given by Pacemaker (seconds), or the metadata default."""
        try:
            milliseconds = int(self.env["OCF_RESKEY_CRM_meta_timeout"])
        except (KeyError, ValueError):
            return 20.0
        # Bounded like every number read here: a wild value must not become a wait of years.
        return min(max(milliseconds / 1000.0, 1.0), 86400.0)

    @property
    def node(self) -> str:
        return self.env.get("OCF_RESKEY_CRM_meta_on_node") or os.uname().nodename

    @property
    def resource(self) -> str:
        return self.env.get("OCF_RESOURCE_INSTANCE", "")


Handler = Callable[[OcfRequest], int]  # an action: returns its exit code
Validator = Callable[[OcfRequest], list[tuple[int, str]]]


@dataclass
class OcfAgentSpec:
    name: str
    version: str
    shortdesc: str
    longdesc: str
    actions: list[OcfAction]
    handlers: Mapping[str, Handler]
    validate: Validator = field(default=lambda request: [])
    # Actions whose handler runs even when validation finds problems (logged as warnings):
    # the handler uses only what it needs and answers from the service's real state. An
    # agent's stop and monitor belong here: checked, a problem fails them with its own exit
    # code, never a claimed "stopped" or "not running" (resource-agents: only a missing
    # binary may mean "not running", and only when nothing runs, which only a handler knows).
    unchecked: frozenset[str] = frozenset()


def service_agent_spec(
    name: str,
    timeouts: tuple[int, int, int],
    start: Handler,
    stop: Handler,
    monitor: Handler,
    validate: Validator,
) -> OcfAgentSpec:
    """An agent that runs a service: start, stop and monitor (every 10 s) with their default
    timeouts in seconds, validate-all and meta-data. stop and monitor are unchecked: a broken
    parameter must never leave the service running behind Pacemaker's back, or hide it from
    a probe."""
    start_timeout, stop_timeout, monitor_timeout = timeouts
    actions = [
        OcfAction("start", start_timeout),
        OcfAction("stop", stop_timeout),
        OcfAction("monitor", monitor_timeout, interval=10, depth=0),
        OcfAction("validate-all", 20),
        OcfAction("meta-data", 5),
    ]
    text = params.AGENTS[name]
    return OcfAgentSpec(
        name,
        __version__,
        text.short,
        text.long,
        actions,
        {"start": start, "stop": stop, "monitor": monitor},
        validate,
        unchecked=frozenset({"stop", "monitor"}),
    )


def metadata(spec: OcfAgentSpec) -> str:
    out = [
        '<?xml version="1.0"?>',
        '<!DOCTYPE resource-agent SYSTEM "ra-api-1.dtd">',
        f"<resource-agent name={docs.xml_attr(spec.name)} version={docs.xml_attr(spec.version)}>",
        "<version>1.0</version>",
        f'<longdesc lang="en">{docs.xml_escape(spec.longdesc)}</longdesc>',
        f'<shortdesc lang="en">{docs.xml_escape(spec.shortdesc)}</shortdesc>',
        "<parameters>",
    ]
    for param in params.for_agent(spec.name):
        longdesc = param.long or param.short
        if param.choices:
            longdesc += f" Values: {', '.join(param.choices)}."
        if param.aliases:
            longdesc += f" Deprecated names: {', '.join(param.aliases)}."
        default = f" default={docs.xml_attr(param.default)}" if param.default is not None else ""
        out += [
            f'<parameter name={docs.xml_attr(param.name)} unique="0" '
            f'required="{1 if param.required else 0}">',
            f'<longdesc lang="en">{docs.xml_escape(longdesc)}</longdesc>',
            f'<shortdesc lang="en">{docs.xml_escape(param.short)}</shortdesc>',
            f'<content type="{_OCF_TYPES[param.type]}"{default}/>',
            "</parameter>",
        ]
    out += ["</parameters>", "<actions>"]
    for action in spec.actions:
        extra = ""
        if action.interval is not None:
            extra += f' interval="{action.interval}s"'
        if action.depth is not None:
            extra += f' depth="{action.depth}"'
        out.append(f'<action name="{action.name}" timeout="{action.timeout}s"{extra}/>')
    out += ["</actions>", "</resource-agent>"]
    return "\n".join(out)


# Set by Pacemaker's executor for every agent, not a parameter of ours.
_FRAMEWORK_KEYS = ("OCF_RESKEY_CRM_meta", "OCF_RESKEY_crm_feature_set")


def parse_env(env: Mapping[str, str], agent: str) -> params.Parsed:
    raw = [
        (key[len("OCF_RESKEY_") :], value)
        for key, value in env.items()
        if key.startswith("OCF_RESKEY_") and not key.startswith(_FRAMEWORK_KEYS)
    ]
    return params.parse(raw, agent)


def exit_reason(reason: str) -> None:
    """Pacemaker shows the last such line as the failure's exit reason."""
    text = log.escape(log.REDACTOR.redact(" ".join(reason.split())))
    print(f"ocf-exit-reason:{text}", file=sys.stderr, flush=True)


def run(
    spec: OcfAgentSpec, argv: list[str] | None = None, env: Mapping[str, str] | None = None
) -> NoReturn:
    sys.exit(
        dispatch(spec, sys.argv[1:] if argv is None else argv, os.environ if env is None else env)
    )


def dispatch(spec: OcfAgentSpec, argv: list[str], env: Mapping[str, str]) -> int:
    action = argv[0] if argv else ""
    described = _describe(spec, action)
    if described is not None:
        return described

    parsed = parse_env(env, spec.name)
    log.REDACTOR.add(*parsed.secrets())
    log.REDACTOR.add(*notify.url_secrets(parsed.settings.notify.url))
    log.setup(spec.name, verbose=env.get("OCF_TRACE_RA", "") == "1")
    logger = log.get()
    for warning in parsed.warnings:
        logger.warning(warning)
    request = OcfRequest(action=action, params=parsed, env=env)
    try:
        _check(spec, request)
        if action == "validate-all":
            return OCF_SUCCESS
        return spec.handlers[action](request)
    except OcfError as err:
        exit_reason(err.reason)
        return err.code
    except Exception as err:  # never a traceback to Pacemaker: a reason it can show
        logger.debug("details", exc_info=True)
        exit_reason(f"{action} failed: {err}")
        return OCF_ERR_GENERIC


def _describe(spec: OcfAgentSpec, action: str) -> int | None:
    """The exit code of the actions that need no parameter (meta-data, manpage, usage, and
    an unknown action); None for the agent's own actions."""
    if action in ("meta-data", "metadata"):
        print(metadata(spec))
        return OCF_SUCCESS
    if action == "manpage":
        print(docs.man_page(spec.name, spec.shortdesc, spec.longdesc, fence=False))
        return OCF_SUCCESS
    known = set(spec.handlers) | {"validate-all", "meta-data", "usage", "help"}
    if action in ("usage", "help") or action not in known:
        print(f"usage: {spec.name} {{{'|'.join(sorted(known))}}}", file=sys.stderr)
        return OCF_SUCCESS if action in ("usage", "help") else OCF_ERR_UNIMPLEMENTED
    return None


def _check(spec: OcfAgentSpec, request: OcfRequest) -> None:
    """Log the request's problems; OcfError (the first problem) unless the action runs
    anyway (spec.unchecked)."""
    logger = log.get()
    problems = [(OCF_ERR_CONFIGURED, p) for p in request.params.problems]
    problems += spec.validate(request)
    if problems and request.action in spec.unchecked:
        for _, problem in problems:
            logger.warning(problem)
    elif problems:
        for _, problem in problems:
            logger.error(problem)
        # Not "stopped" nor "not running" for a stop or a probe: that would be a guess
        # (see OcfAgentSpec.unchecked).
        code, reason = problems[0]
        raise OcfError(code, reason)
