"""Guarding admin API handlers: ``@requires("keys.create")`` on an aiohttp handler.

The guard reads ``Authorization: Bearer <JWT>`` (RFC 6750), verifies the token
(``TokenVerifier``; off the event loop when keys may come from a JWKS URL, since ``PyJWKClient``
blocks), maps its roles and checks the operation's permission. A failure is a JSON answer
``{"error", "message"}`` with the fixed public message: 401 with ``WWW-Authenticate: Bearer
error="invalid_token"``, or 403 with ``error="insufficient_scope"``. Why a token was refused is
logged, never sent. A denial is logged at WARNING with who (``iss``, ``sub``), what and why,
the admin audit record. An unexpected exception while verifying fails closed as 401 and is
logged by type and frames only (safelog): a token must never turn into a 500.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import wraps

from aiohttp import web

from xks_proxy.admin.errors import AdminError, AuthenticationError
from xks_proxy.admin.roles import OPERATIONS, Role, RoleMapper
from xks_proxy.admin.tokens import Identity, TokenVerifier
from xks_proxy.safelog import log_unexpected
from xks_proxy.web.responses import json_response

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
BEARER = "bearer"


@dataclass(frozen=True, slots=True)
class Caller:
    identity: Identity
    roles: frozenset[Role]


@dataclass(frozen=True, slots=True)
class AdminGuard:
    verifier: TokenVerifier
    roles: RoleMapper

    async def check(self, request: web.Request, operation: str) -> Caller:
        token = bearer_token(request.headers.get("Authorization"))
        try:
            if self.verifier.keys.fetches_over_network:
                identity = await asyncio.to_thread(self.verifier.verify, token)
            else:
                identity = self.verifier.verify(token)
        except AdminError:
            raise
        except Exception as error:
            log_unexpected(log, logging.ERROR, "admin token verification", error)
            raise AuthenticationError("token verification failed unexpectedly") from None
        return Caller(identity, self.roles.authorize(identity, operation))


# Called once per guarded request: (actor, operation, HTTP status, detail). The admin API sets
# it to write its audit line; who was refused, and why, is in the detail.
AuditHook = Callable[[str, str, int, str], None]
GUARD = web.AppKey("admin_guard", AdminGuard)
AUDIT: web.AppKey[AuditHook] = web.AppKey("admin_audit")
CALLER = web.RequestKey("admin_caller", Caller)


DETAIL = web.RequestKey("admin_detail", str)


def actor_of(caller: Caller) -> str:
    """Who, for audit lines: the token's ``sub`` and its issuer."""
    return f"{caller.identity.subject} ({caller.identity.issuer})"


def bearer_token(header: str | None) -> str:
    if header is None:
        raise AuthenticationError("no Authorization header")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != BEARER or not token.strip():
        raise AuthenticationError("Authorization is not a Bearer token")
    return token.strip()


def error_response(error: AdminError) -> web.Response:
    response = json_response(
        {"error": error.error, "message": error.public_message}, error.http_status
    )
    response.headers["WWW-Authenticate"] = f'Bearer error="{error.error}"'
    return response


# The operation a guarded handler checks, on the handler: the OpenAPI document's test reads it.
GUARDED_OPERATION = "admin_operation"


def guarded_operation(handler: object) -> str | None:
    """The operation ``requires`` guards ``handler`` with; None for an unguarded handler."""
    operation = getattr(handler, GUARDED_OPERATION, None)
    return operation if isinstance(operation, str) else None


def requires(operation: str) -> Callable[[Handler], Handler]:
    """Guard a handler with ``operation``'s permission; the caller is ``request[CALLER]``."""
    if operation not in OPERATIONS:
        raise ValueError(f"no admin operation {operation!r}")

    def wrap(handler: Handler) -> Handler:
        @wraps(handler)
        async def guarded(request: web.Request) -> web.StreamResponse:
            audit = request.app.get(AUDIT)
            try:
                caller = await request.app[GUARD].check(request, operation)
            except AuthenticationError as error:
                log.info("admin %s refused (401): %s", operation, error.reason)
                if audit is not None:
                    audit("unauthenticated", operation, 401, error.reason)
                return error_response(error)
            except AdminError as error:
                log.warning("admin %s denied (403): %s", operation, error.reason)
                if audit is not None:
                    audit("unauthorized", operation, 403, error.reason)
                return error_response(error)
            request[CALLER] = caller
            try:
                response = await handler(request)
            except Exception as error:
                # An error the app's middleware answers: its status (ApiError, HTTPException)
                # or 500 for one nobody expected.
                if audit is not None:
                    status = getattr(error, "status", 500)
                    audit(actor_of(caller), operation, status, request.get(DETAIL, ""))
                raise
            if audit is not None:
                audit(actor_of(caller), operation, response.status, request.get(DETAIL, ""))
            return response

        setattr(guarded, GUARDED_OPERATION, operation)
        return guarded

    return wrap
