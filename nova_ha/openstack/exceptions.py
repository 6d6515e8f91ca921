"""What a call to Nova (or Keystone) can fail with: one class per answer callers act on.

Callers catch ``NovaError`` for "Nova did not do it", and a subclass where the answer
matters: ``NotFound`` (gone), ``Conflict`` (Nova's state forbids it now), ``BadRequest``
(e.g. a service still up), ``Unavailable`` (not reached, or kept failing: try later).
The HTTP status is kept in ``.status`` for the message and the log.
"""

from __future__ import annotations

from nova_ha.errors import NovaHaError


class NovaError(NovaHaError):
    """Nova or Keystone refused, failed or answered something unusable."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class BadRequest(NovaError):
    """HTTP 400: the request does not fit Nova's state (e.g. its service still up)."""


class Unauthorized(NovaError):
    """HTTP 401: Keystone or Nova refused the credentials (after one re-authentication)."""


class Forbidden(NovaError):
    """HTTP 403: the credentials lack a role (admin) the call needs."""


class NotFound(NovaError):
    """HTTP 404: no such server, image or service."""


class Conflict(NovaError):
    """HTTP 409: the server's state does not allow the action now."""


class Unavailable(NovaError):
    """Keystone or Nova could not be reached (or kept failing: 5xx, timeouts) within the
    budget."""


class AuthError(NovaError):
    """The client could not be made: clouds.yaml unusable, a password script failed, a
    parameter of the connection is wrong."""


class WrongHost(NovaError):
    """A write for one host was given the power-off proof of another. A NovaError, so that
    every caller's handling of a refused write applies; the write is never sent."""
