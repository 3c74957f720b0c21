"""Admin API failures: 401 for a token that does not prove who is calling, 403 for a caller
without the permission. Messages are fixed and generic towards the client (a token's contents
are never echoed); ``reason`` is for the log and the audit line only."""

from __future__ import annotations

from typing import ClassVar


class AdminError(Exception):
    http_status: ClassVar[int] = 500
    error: ClassVar[str] = "internal_error"
    public_message: ClassVar[str] = "The request failed."

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class AuthenticationError(AdminError):
    """No, or an unacceptable, bearer token (RFC 6750 ``invalid_token``)."""

    http_status = 401
    error = "invalid_token"
    public_message = "A valid bearer token is required."


class PermissionDeniedError(AdminError):
    """A verified caller whose roles do not grant the operation (RFC 6750 insufficient_scope)."""

    http_status = 403
    error = "insufficient_scope"
    public_message = "The token's roles do not allow this operation."
