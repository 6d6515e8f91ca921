"""The stonith-agent protocol, on fence-agents' own library (fencing.py).

fencing.py gives us what Pacemaker and fence-agents users expect: stdin 'key=value' lines
when there is no argv, the getopt CLI otherwise, the standard metadata, --help, exit codes.
We keep our own: the parameter table (rendered into fencing's all_opt), typed validation,
secrets handling and action dispatch. Where fencing.py bites, the workaround is here:

* its stdin reader decodes strictly and dies with a traceback on non-UTF-8 input, and it logs
  whole unknown lines (a misspelt password parameter would be logged with its value): we read
  stdin ourselves, drop unknown names with a warning naming only the key, and hand it clean
  lines;
* its check_input() insists on a BMC address and password (we support a BMC-less topology
  level), runs password scripts through a shell and zeroes power_timeout under the fencer:
  we do not call it and validate with the table instead;
* its metadata() does not XML-escape descriptions: we escape what we register;
* its 'manpage' action prints metadata XML (fence-agents turn it into troff at build time):
  we print the man page itself.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from nova_ha.lib import docs, log, params

FENCE_LIB_DIR = "/usr/share/fence"

EC_OK = 0
EC_GENERIC_ERROR = 1
EC_STATUS_OFF = 2
# fence-agents' 'delay' (seconds before off/reboot): bounded like the table's numbers. A
# delay beyond stonith-timeout only makes the fence fail; time.sleep() overflows at ~9e9.
DELAY_MAX = 3600

# fencing.py's own options that every agent has (DEPENDENCY_OPT["default"]) plus 'separator'
# that 'port' pulls in for list actions.
FRAMEWORK_KEYS = (
    "help",
    "debug",
    "verbose",
    "verbose_level",
    "version",
    "action",
    "agent",
    "shell_timeout",
    "login_timeout",
    "disable_timeout",
    "stonith_status_sleep",
    "retry_on",
    "delay",
    "plug_separator",
    "quiet",
    "separator",
)

Handler = Callable[["FenceRequest"], int]


@dataclass
class FenceRequest(params.Request):
    """A fence agent's run: with the options the fencing framework keeps for itself."""

    framework: dict[str, str]

    @property
    def verbose(self) -> bool:
        return "--verbose" in self.framework or self.framework.get("--verbose-level", "0") not in (
            "0",
            0,
        )


@dataclass
class FenceAgentSpec:
    name: str
    shortdesc: str
    longdesc: str
    vendorurl: str
    handlers: dict[str, Handler]  # action -> handler returning the exit code
    validate: Callable[[FenceRequest], list[str]]  # extra checks beyond types


def _fencing() -> Any:
    if FENCE_LIB_DIR not in sys.path:
        sys.path.append(FENCE_LIB_DIR)
    import fencing  # noqa: PLC0415  (fence-agents' library lives outside site-packages)

    return fencing


def _register(fencing: Any, agent: str) -> list[str]:
    """Render our parameter table into fencing.all_opt; return the device_opt keys."""
    # 'separator' (needed for the list actions) takes -C, which fence_ipmilan users know as
    # the cipher suite: keep -C for cipher, leave separator as a long option only.
    fencing.all_opt["separator"]["getopt"] = ":"
    device_opt = []
    for order, param in enumerate(params.for_agent(agent), start=1):
        # fencing.py supports one deprecated name per option: the all_opt key when it differs
        # from the long option. Further aliases are mapped before fencing.py sees them.
        key = param.name if param.cli else (param.aliases[0] if param.aliases else param.name)
        flags = (f"-{param.getopt}, " if param.getopt else "") + f"--{param.longopt}"
        if not param.is_flag():
            flags += f"=[{param.metavar or param.type}]"
        entry: dict[str, Any] = {
            "getopt": param.getopt + ("" if param.is_flag() else ":"),
            "longopt": param.longopt,
            "help": f"{flags:<30} {param.short}",
            "shortdesc": docs.xml_escape(param.short),
            "required": "1" if param.required else "0",
            "order": order,
        }
        if param.default is not None:
            entry["default"] = param.default
        if param.choices:
            entry["choices"] = list(param.choices)
        elif param.type in ("integer", "second"):
            entry["type"] = param.type
        elif param.type == "boolean" and not param.is_flag():
            entry["type"] = "boolean"
        fencing.all_opt[key] = entry
        device_opt.append(key)
    return device_opt


def _read_stdin(data: bytes) -> list[tuple[str, str]]:
    text = data.decode("utf-8", "replace")
    pairs = []
    # "\n" only, as fencing.py reads its stdin (strip() drops a trailing "\r"):
    # str.splitlines() also ends lines at \v, \f, \x1c-\x1e, \x85, \u2028 and \u2029, so
    # one value could smuggle in further parameters.
    for line in text.split("\n"):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, value = line.partition("=")
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            value = value[1:-1]
        pairs.append((name.strip(), value))
    return pairs


def _clean_stdin(pairs: list[tuple[str, str]], agent: str, fencing: Any) -> tuple[str, list[str]]:
    """Lines fencing.py may safely parse, and warnings for what was dropped."""
    known_framework = (
        set(FRAMEWORK_KEYS)
        | {
            fencing.all_opt[k]["longopt"].replace("-", "_")
            for k in FRAMEWORK_KEYS
            if "longopt" in fencing.all_opt.get(k, {})
        }
        | {"option"}
    )
    lines, warnings = [], []
    names = {name.replace("-", "_") for name, _ in pairs}
    for name, value in pairs:
        key = name.replace("-", "_")
        if key == "nodename" and names & {"port", "plug"}:
            continue  # Pacemaker sends both; 'port' is the target
        canonical = params.canonical_name(key, agent)
        if canonical is not None:
            # Pacemaker itself sends 'port' and 'nodename': only users' old names are warned.
            if key != canonical and canonical != "port":
                warnings.append(f"parameter '{key}' is deprecated, use '{canonical}'")
            key = params.BY_NAME[canonical].cli or canonical
        elif key not in known_framework:
            warnings.append(f"ignoring unknown parameter '{params._printable(name)}'")
            continue
        if "\n" in value or "\r" in value:
            continue
        lines.append(f"{key}={value}")
    return "\n".join(lines) + "\n", warnings


def _to_raw(opts: dict[str, str], agent: str) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """fencing.py's {'--longopt': value} back into (parameter, value) pairs + framework opts."""
    by_longopt = {p.longopt: p for p in params.for_agent(agent)}
    raw, framework = [], {}
    for option, value in opts.items():
        param = by_longopt.get(option[2:])
        if param is None:
            framework[option] = value
        elif param.is_flag() and value == "":
            raw.append((param.name, "1"))  # a bare flag on the command line
        else:
            raw.append((param.name, value))
    return raw, framework


def run(spec: FenceAgentSpec) -> NoReturn:
    """Parse, dispatch and exit with the fence-agent exit code. Never shows a traceback.

    A reader that leaves early (`-o list | head -1`) changes nothing: the rest of the output
    is dropped and the exit code is the action's own.
    """
    with log.PipeSafeOutput():
        try:
            code = _run(spec)
        except SystemExit:
            raise
        except KeyboardInterrupt:
            code = EC_GENERIC_ERROR
        except BaseException as err:  # the last line of defence: a message, not a traceback
            log.get().error(
                "%s failed: %s", spec.name, log.REDACTOR.redact(str(err)) or type(err).__name__
            )
            log.get().debug("details", exc_info=True)
            code = EC_GENERIC_ERROR
        sys.exit(code)


def parse_input(
    spec: FenceAgentSpec, argv: list[str], stdin: bytes | None
) -> tuple[list[tuple[str, str]], dict[str, str], list[str], list[str]]:
    """(parameter pairs, fencing.py's own options, warnings, device_opt) from argv or stdin.

    Exits like every fence agent (fencing.fail_usage) on a command line getopt rejects.
    """
    fencing = _fencing()
    device_opt = ["separator", "no_password", "no_login"]
    device_opt += _register(fencing, spec.name)
    warnings: list[str] = []
    saved_argv, saved_stdin = sys.argv, sys.stdin
    try:
        sys.argv = [spec.name] + argv
        if not argv:
            clean, warnings = _clean_stdin(_read_stdin(stdin or b""), spec.name, fencing)
            sys.stdin = io.StringIO(clean)
        opts = fencing.process_input(device_opt)
    finally:
        sys.argv, sys.stdin = saved_argv, saved_stdin
    raw, framework = _to_raw(opts, spec.name)
    return raw, framework, warnings, device_opt


def _run(spec: FenceAgentSpec) -> int:
    argv = sys.argv[1:]
    stdin = None if argv else sys.stdin.buffer.read()
    raw, framework, warnings, device_opt = parse_input(spec, argv, stdin)
    fencing = _fencing()
    action = framework.get("--action", "reboot").strip().lower()
    action = {"meta-data": "metadata"}.get(action, action)
    framework["--action"] = action
    if _describe(spec, fencing, framework, device_opt):
        return EC_OK

    parsed = params.parse(raw, spec.name)
    log.REDACTOR.add(*parsed.secrets())
    request = FenceRequest(action=action, params=parsed, framework=framework)
    log.setup(spec.name, verbose=request.verbose, debug_file=framework.get("--debug-file"))
    logger = log.get()
    for warning in warnings + parsed.warnings:
        logger.warning(warning)

    handler = spec.handlers.get(action)
    if action != "validate-all" and handler is None:
        logger.error(
            "action '%s' is not supported (use one of: %s)",
            params._printable(action),
            ", ".join(sorted(list(spec.handlers) + ["metadata", "manpage"])),
        )
        return EC_GENERIC_ERROR
    problems = _problems(spec, request)
    if problems:
        for problem in problems:
            logger.error(problem)
        return EC_GENERIC_ERROR
    if handler is None:  # validate-all with no handler of its own: the checks above are all
        return EC_OK
    if action in ("off", "reboot"):
        fencing.run_delay({"--action": action, "--delay": framework.get("--delay", "0")})
    return handler(request)


def _describe(
    spec: FenceAgentSpec, fencing: Any, framework: dict[str, str], device_opt: list[str]
) -> bool:
    """Answer the actions that only describe the agent (help, version, metadata, man page),
    before any parameter is parsed; False when the action is another one."""
    action = framework["--action"]
    if "--help" in framework:
        fencing.usage(device_opt)
    elif "--version" in framework:
        print(fencing.RELEASE_VERSION)
    elif action == "metadata":
        options = dict(framework, device_opt=device_opt)
        fencing.metadata(
            options,
            device_opt,
            {
                "shortdesc": docs.xml_escape(spec.shortdesc),
                "longdesc": docs.xml_escape(spec.longdesc),
                "vendorurl": docs.xml_escape(spec.vendorurl),
            },
        )
    elif action == "manpage":
        print(docs.man_page(spec.name, spec.shortdesc, spec.longdesc, fence=True))
    else:
        return False
    return True


def _problems(spec: FenceAgentSpec, request: FenceRequest) -> list[str]:
    """Everything wrong with the request: the table's checks, the agent's, and fencing.py's
    'delay'."""
    problems = request.params.problems + spec.validate(request)
    delay = request.framework.get("--delay", "0")
    # ASCII digits: str.isdigit() takes '²', which fencing.run_delay's int() refuses.
    if not (delay.isascii() and delay.isdigit() and len(delay) <= 6 and int(delay) <= DELAY_MAX):
        problems.append(
            f"parameter 'delay': must be a whole number of seconds from 0 to {DELAY_MAX}"
        )
    return problems
