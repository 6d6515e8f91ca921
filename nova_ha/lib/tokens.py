"""Keystone's answer (token and catalog) kept between runs of the agents.

Pacemaker runs the agents many times a minute (the stonith device's monitor, NovaEvacuate's
monitor every 10 s): without a cache each run asks Keystone for a new token, which loads
Keystone and puts one round trip in front of every fence. keystoneauth1's plugins can export
and re-import their state (get_auth_state / set_auth_state, the mechanism osc-lib's keyring
cache uses); a re-imported token is used only while it has more than keystoneauth1's minimum
life left, and one that Keystone revoked is answered 401, upon which keystoneauth1
re-authenticates once.

The state is a bearer token: it lives in a root-only directory on tmpfs (`/run/nova-ha/
tokens`, mode 0700; files 0600, owned by this user, never followed through a link), one file
per set of credentials (keystoneauth1's cache id: a hash of the auth URL, user, project and
secret). `os_token_cache=0` turns it off.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from typing import Any

from nova_ha.lib import log

LOG = log.get("tokens")
DEFAULT_DIR = "/run/nova-ha/tokens"


def cache_dir() -> str:
    return os.environ.get("NOVA_HA_TOKEN_DIR") or DEFAULT_DIR


class TokenCache:
    """The cached auth state of one keystoneauth1 plugin."""

    def __init__(self, auth: Any, directory: str | None = None) -> None:
        self.auth = auth
        self.directory = directory or cache_dir()
        cache_id = auth.get_cache_id() if hasattr(auth, "get_cache_id") else None
        # The id is base64 (may hold '/'): hashed again into a plain file name.
        self.path = os.path.join(self.directory, hashlib.sha256(
            cache_id.encode()).hexdigest()) if cache_id else None
        self._known: str | None = None

    def load(self) -> bool:
        """Install the cached state in the plugin. True when there was one."""
        if self.path is None:
            return False
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return False
        try:
            info = os.fstat(fd)
            if info.st_uid != os.geteuid() or stat.S_IMODE(info.st_mode) & 0o077:
                LOG.warning("ignoring the token cache %s: not private to this user",
                            self.path)
                return False
            with os.fdopen(fd, "r", closefd=False) as f:
                text = f.read()
            self.auth.set_auth_state(text)
        except (OSError, ValueError, KeyError, TypeError) as err:
            LOG.debug("token cache %s unreadable (%s): asking Keystone", self.path,
                      type(err).__name__)
            return False
        finally:
            os.close(fd)
        self._known = text
        return True

    def save(self) -> None:
        """Store the plugin's state if it changed (a new token). Never fatal."""
        if self.path is None:
            return
        try:
            text = self.auth.get_auth_state()
        except Exception:  # noqa: BLE001 - a plugin without state: nothing to keep
            return
        if not text or text == self._known:
            return
        # Unique per thread too: two clients of one process may save at once.
        tmp = f"{self.path}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            info = os.lstat(self.directory)
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or \
                    stat.S_IMODE(info.st_mode) & 0o077:
                LOG.warning("not caching the token: %s is not a private directory",
                            self.directory)
                return
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, self.path)
            self._known = text
        except OSError as err:
            LOG.debug("token cache %s not written: %s", self.path, err)
            try:
                os.unlink(tmp)
            except OSError:
                pass
