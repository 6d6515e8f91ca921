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

Nothing found there can hang, crash or block a run: the directory is used only when it is a
real directory of this user that nobody else can write (else a warning, and no cache); an
entry is read only when it is a regular file (opened O_NOFOLLOW|O_NONBLOCK and checked with
fstat first: a FIFO or a device is never read), private, and at most MAX_STATE bytes; one
that does not re-import into a complete state (token, expiry, catalog; the caller's check)
is deleted. Missing directories are created 0700 whatever the umask.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import stat
import threading
from collections.abc import Callable
from typing import Any

from nova_ha.lib import log

LOG = log.get("tokens")
DEFAULT_DIR = "/run/nova-ha/tokens"
MAX_STATE = 4 << 20  # bytes of one cached state (a token with a large catalog: ~100 KiB)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def cache_dir() -> str:
    return os.environ.get("NOVA_HA_TOKEN_DIR") or DEFAULT_DIR


def _dir_problem(info: os.stat_result) -> str | None:
    """Why a directory (its fstat) must not hold tokens, or None."""
    if not stat.S_ISDIR(info.st_mode):
        return "is not a directory"
    if info.st_uid != os.geteuid():
        return f"belongs to uid {info.st_uid}, not to this user"
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o022:
        return f"is group- or world-writable (mode {mode:04o})"
    return None


def make_private_dirs(directory: str) -> None:
    """Create the directory and its missing parents (/run/nova-ha), each 0700 whatever the
    umask. An existing directory is left as it is (and checked by its user)."""
    path = os.path.abspath(directory)
    missing: list[str] = []
    while not os.path.lexists(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    for path in reversed(missing):
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue  # made meanwhile by someone else: checked like any existing one
        fd = os.open(path, _DIR_FLAGS)
        try:
            os.fchmod(fd, 0o700)  # the umask may have taken bits away (even the owner's)
        finally:
            os.close(fd)


def check_complete(access: Any) -> None:
    """Raises unless a re-imported keystoneauth1 state has what keystoneauth1 will use: a
    token, its expiry, and a service catalog of well-formed endpoints."""
    if access is None:
        raise ValueError("no state")
    token = access.auth_token
    if not isinstance(token, str) or not token:
        raise ValueError("no token")
    if not isinstance(access.expires, datetime.datetime):
        raise ValueError("no expiry")
    access.will_expire_soon(30)
    for value in (access.user_id, access.project_id, access.domain_id):
        if value is not None and not isinstance(value, str):
            raise ValueError("a malformed scope")
    if not access.has_service_catalog():
        raise ValueError("no service catalog")
    catalog = access.service_catalog.catalog
    if not isinstance(catalog, list) or not catalog:
        raise ValueError("an empty service catalog")
    for service in catalog:
        if not isinstance(service, dict) or not isinstance(service.get("endpoints"), list):
            raise ValueError("a malformed service catalog")
        for endpoint in service["endpoints"]:
            if not isinstance(endpoint, dict) or not isinstance(endpoint.get("url"), str):
                raise ValueError("a malformed endpoint")


class TokenCache:
    """The cached auth state of one keystoneauth1 plugin."""

    def __init__(self, auth: Any, directory: str | None = None) -> None:
        self.auth = auth
        self.directory = directory or cache_dir()
        cache_id = auth.get_cache_id() if hasattr(auth, "get_cache_id") else None
        # The id is base64 (may hold '/'): hashed again into a plain file name. A plugin
        # without one has no entry ("", and no path): nothing is read or written.
        self.name = hashlib.sha256(cache_id.encode()).hexdigest() if cache_id else ""
        self.path = os.path.join(self.directory, self.name) if self.name else None
        self._known: str | None = None
        self._dir_warned = False

    # Paths are never followed by ':' in messages: the log redactor would take them for a
    # "token: <secret>" pair and print ******.

    def _open_dir(self) -> int | None:
        """The cache directory, opened without following a link, if it is private."""
        try:
            fd = os.open(self.directory, _DIR_FLAGS)
        except FileNotFoundError:
            return None
        except OSError as err:
            problem: str | None = f"cannot be opened ({err.strerror})"
        else:
            try:
                problem = _dir_problem(os.fstat(fd))
            except OSError as err:
                problem = f"cannot be examined ({err.strerror})"
            if problem is None:
                return fd
            os.close(fd)
        if not self._dir_warned:
            self._dir_warned = True
            LOG.warning("not using the token cache directory %s, which %s", self.directory, problem)
        return None

    def _read(self, dfd: int) -> str | None:
        """The entry's text if it is a private regular file of a sane size (never blocks)."""
        try:
            fd = os.open(self.name, _READ_FLAGS, dir_fd=dfd)
        except FileNotFoundError:
            return None
        except OSError as err:  # ELOOP: a symbolic link
            LOG.warning("ignoring the token cache %s (%s)", self.path, err.strerror)
            return None
        chunks: list[bytes] = []
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                LOG.warning("ignoring the token cache %s, which is not a regular file", self.path)
                return None
            if info.st_uid != os.geteuid() or stat.S_IMODE(info.st_mode) & 0o077:
                LOG.warning(
                    "ignoring the token cache %s, which is not private to this user", self.path
                )
                return None
            size = info.st_size
            while size <= MAX_STATE:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
                size = sum(map(len, chunks))
            if size > MAX_STATE:
                LOG.warning(
                    "ignoring the token cache %s, which is larger than %d bytes",
                    self.path,
                    MAX_STATE,
                )
                return None
        except OSError as err:
            LOG.debug("token cache %s unreadable (%s): asking Keystone", self.path, err.strerror)
            return None
        finally:
            os.close(fd)
        return b"".join(chunks).decode("utf-8", "replace")

    def load(self, check: Callable[[Any], None] | None = None) -> bool:
        """Install the cached state in the plugin. True when there was a complete one, that
        `check` (given keystoneauth1's AccessInfo) accepted; an entry that is not is
        deleted, and the plugin left without state."""
        if self.path is None:
            return False
        dfd = self._open_dir()
        if dfd is None:
            return False
        try:
            text = self._read(dfd)
            if text is None:
                return False
            try:
                self.auth.set_auth_state(text)
                check_complete(self.auth.auth_ref)
                if check is not None:
                    check(self.auth.auth_ref)
            except Exception as err:  # noqa: BLE001 - any damage: the entry is unusable
                LOG.warning(
                    "dropping the token cache %s, which holds no usable Keystone state (%s)",
                    self.path,
                    type(err).__name__,
                )
                self._forget_state()
                self._unlink(dfd)
                return False
        finally:
            os.close(dfd)
        self._known = text
        return True

    def _forget_state(self) -> None:
        try:
            self.auth.invalidate()
        except Exception:  # noqa: BLE001 - a plugin without state: nothing to forget
            pass

    def _unlink(self, dfd: int) -> None:
        self._known = None
        try:
            os.unlink(self.name, dir_fd=dfd)
        except OSError:
            pass

    def drop(self) -> None:
        """Delete the entry (it did not work); the plugin's state is the caller's to drop."""
        if self.path is None:
            return
        dfd = self._open_dir()
        if dfd is not None:
            try:
                self._unlink(dfd)
            finally:
                os.close(dfd)
        self._known = None

    def save(self) -> None:
        """Store the plugin's state if it changed (a new token). Never fatal."""
        if self.path is None:
            return
        try:
            text = self.auth.get_auth_state()
        except Exception:  # noqa: BLE001 - a plugin without state: nothing to keep
            return
        if not isinstance(text, str) or not text or text == self._known:
            return
        if len(text) > MAX_STATE:
            LOG.debug("token cache %s not written (larger than %d bytes)", self.path, MAX_STATE)
            return
        try:
            make_private_dirs(self.directory)
        except OSError as err:
            LOG.debug("token cache directory %s not created (%s)", self.directory, err.strerror)
            return
        dfd = self._open_dir()
        if dfd is None:
            return
        # Unique per thread too: two clients of one process may save at once.
        tmp = f"{self.name}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            fd = os.open(tmp, _WRITE_FLAGS, 0o600, dir_fd=dfd)
            with os.fdopen(fd, "w") as f:
                os.fchmod(f.fileno(), 0o600)  # whatever the umask
                f.write(text)
            os.replace(tmp, self.name, src_dir_fd=dfd, dst_dir_fd=dfd)
            self._known = text
        except OSError as err:
            LOG.debug("token cache %s not written (%s)", self.path, err.strerror)
            try:
                os.unlink(tmp, dir_fd=dfd)
            except OSError:
                pass
        finally:
            os.close(dfd)
