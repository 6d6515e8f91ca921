"""Logging for the agents: stderr + syslog, with every secret value redacted.

Agents run as root from the fencer, as hacluster for metadata, and by operators; none of
these paths may fail because a log destination is missing, so every handler is optional.

Each log record is one line: names and messages from Nova or the CIB are data, and their
control characters are escaped (escape()), so a server named "x\nERROR: ..." cannot forge a
line. The line-oriented outputs (fence list, the nova-ha command) use the same escape().
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import sys
from typing import Any

LOGGER_NAME = "nova_ha"
_REDACTED = "******"
# Words that mark a secret in free text ("password=...", "X-Auth-Token: ...").
_SECRET_ASSIGNMENT = re.compile(
    r"(?i)\b([\w-]*(?:password|passwd|secret|token)[\w-]*)(\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|\S+)"
)
# What ends or rewrites a line in a log, a terminal or a line-oriented output: C0 and C1
# controls and DEL (\n, \r, \v, \f, \x1c-\x1e and \x85 end lines for str.splitlines(), \x1b
# starts terminal sequences), the Unicode line and paragraph separators, and the bidi
# controls that reorder what a terminal shows.
_CONTROLS = "\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
_UNSAFE = re.compile(f"[{_CONTROLS}]")
# Fields of a line-oriented output that a program splits (fence-agents' list output, which
# Pacemaker splits at whitespace, ',' and ';'): those separators too.
_UNSAFE_IN_FIELD = re.compile(f"[{_CONTROLS}\\s,;]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def escape(text: str, field: bool = False) -> str:
    """`text` as data on one line: control characters as backslash escapes (\\n, \\x1c,
    \\u2028...). With `field`, also whitespace, ',' and ';', for a field of a line that is
    split into fields."""
    return (_UNSAFE_IN_FIELD if field else _UNSAFE).sub(_escaped, text)


class Redactor(logging.Filter):
    """Replaces known secret values, and anything assigned to a secret-looking key."""

    def __init__(self) -> None:
        super().__init__()
        self._secrets: set[str] = set()

    def add(self, *values: str) -> None:
        self._secrets.update(v for v in values if v and len(v) >= 3)

    def redact(self, text: str) -> str:
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, _REDACTED)
        return _SECRET_ASSIGNMENT.sub(lambda m: m.group(1) + m.group(2) + _REDACTED, text)

    def filter(self, record: logging.LogRecord) -> bool:
        message = self.redact(record.getMessage())
        if record.exc_info:
            # Exception text could carry a secret: log it as redacted text instead.
            formatted = logging.Formatter().formatException(record.exc_info)
            message += "\n" + self.redact(formatted)
            record.exc_info = None
            record.exc_text = None
        if record.stack_info:
            message += "\n" + self.redact(record.stack_info)
            record.stack_info = None
        # One record, one line (a traceback too): redacted first, then escaped. Escaping
        # is idempotent, so a record passing several handlers stays the same.
        record.msg, record.args = escape(message), None
        return True


REDACTOR = Redactor()


def get(name: str = "") -> logging.Logger:
    return logging.getLogger(f"{LOGGER_NAME}.{name}" if name else LOGGER_NAME)


def setup(
    ident: str,
    verbose: bool = False,
    debug_file: str | None = None,
    stderr_format: str = "%(levelname)s: %(message)s",
) -> None:
    """Send agent and library logs (and fence-agents' root logger) to stderr and syslog."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # Third-party HTTP libraries log request bodies at DEBUG; keep them quiet unless verbose.
    for noisy in ("urllib3", "keystoneauth", "novaclient", "pyghmi", "stevedore", "iso8601"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)

    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(logging.Formatter(stderr_format))
    _add(root, stderr)
    if os.path.exists("/dev/log"):
        try:
            syslog = logging.handlers.SysLogHandler(
                address="/dev/log", facility=logging.handlers.SysLogHandler.LOG_DAEMON
            )
            syslog.setFormatter(logging.Formatter(f"{ident}[{os.getpid()}]: %(message)s"))
            _add(root, syslog)
        except OSError:
            pass  # no syslog daemon: stderr still reaches Pacemaker's log
    if debug_file:
        try:
            # Created private: a debug file holds requests and replies.
            os.close(os.open(debug_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
            debug = logging.FileHandler(debug_file)
        except OSError as err:
            get().warning("cannot write debug file %s: %s", debug_file, err.strerror)
        else:
            debug.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            debug.setLevel(logging.DEBUG)
            _add(root, debug)


def _add(logger: logging.Logger, handler: logging.Handler) -> None:
    handler.addFilter(REDACTOR)
    logger.addHandler(handler)


# ---- output to a pipe whose reader may leave ---------------------------------------------


class PipeSafe:
    """A standard stream whose reader may leave early (`| head -1`). Unix tools then stop
    writing, quietly: what no longer reaches the reader is dropped here, and the program
    finishes its work (a reset, a fence) and exits with its own result, never with a
    BrokenPipeError traceback or a lost event."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.reader_gone = False

    def write(self, text: str) -> int:
        if not self.reader_gone:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._drop()
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if not self.reader_gone:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._drop()

    def _drop(self) -> None:
        self.reader_gone = True
        # What is still buffered, and the interpreter's last flush at exit, go to /dev/null
        # (otherwise: "Exception ignored ... BrokenPipeError" and exit code 120).
        try:
            null = os.open(os.devnull, os.O_WRONLY)
        except OSError:
            return
        try:
            os.dup2(null, self._stream.fileno())
        except (AttributeError, OSError, ValueError):
            pass  # not a file descriptor (a test's capture): nothing to redirect
        finally:
            os.close(null)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class PipeSafeOutput:
    """`with PipeSafeOutput():` sys.stdout and sys.stderr as PipeSafe streams, flushed (while
    still guarded) and put back at the end."""

    def __enter__(self) -> PipeSafeOutput:
        self._saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = (
            s if s is None or isinstance(s, PipeSafe) else PipeSafe(s) for s in self._saved
        )
        return self

    def __exit__(self, *exc: object) -> None:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
        sys.stdout, sys.stderr = self._saved
