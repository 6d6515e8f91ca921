"""Logging for the agents: stderr + syslog, with every secret value redacted.

Agents run as root from the fencer, as hacluster for metadata, and by operators; none of
these paths may fail because a log destination is missing, so every handler is optional.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import sys

LOGGER_NAME = "nova_ha"
_REDACTED = "******"
# Words that mark a secret in free text ("password=...", "X-Auth-Token: ...").
_SECRET_ASSIGNMENT = re.compile(
    r"(?i)\b([\w-]*(?:password|passwd|secret|token)[\w-]*)(\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|\S+)"
)


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
        record.msg, record.args = message, None
        if record.exc_info:
            # Exception text could carry a secret: log it as redacted text instead.
            formatted = logging.Formatter().formatException(record.exc_info)
            record.msg = message + "\n" + self.redact(formatted)
            record.exc_info = None
            record.exc_text = None
        return True


REDACTOR = Redactor()


def get(name: str = "") -> logging.Logger:
    return logging.getLogger(f"{LOGGER_NAME}.{name}" if name else LOGGER_NAME)


def setup(ident: str, verbose: bool = False, debug_file: str | None = None,
          stderr_format: str = "%(levelname)s: %(message)s") -> None:
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
                address="/dev/log", facility=logging.handlers.SysLogHandler.LOG_DAEMON)
            syslog.setFormatter(logging.Formatter(f"{ident}[{os.getpid()}]: %(message)s"))
            _add(root, syslog)
        except OSError:
            pass  # no syslog daemon: stderr still reaches Pacemaker's log
    if debug_file:
        try:
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
