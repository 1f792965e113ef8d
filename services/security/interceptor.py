"""The server interceptor: authenticate every call, authorize it against ``policy.RULES``.

gRPC's own meaning of the two refusals is kept: no credential, or one the server does not know, is
``UNAUTHENTICATED`` (the caller should get a credential); a known caller without the role or the
card the call needs is ``PERMISSION_DENIED`` (retrying will not help). A method missing from the
table is refused too: a new RPC is closed until someone decides who may call it.

Authentication needs only the metadata, but a card scope is checked against the request, so the
interceptor wraps each method's behaviour rather than refusing in ``intercept_service``. The
wrapper binds the caller's identity for the handler's task (``identity.current_identity``).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

import grpc

from services.grpc_handlers import Handler, Kind, WrappingInterceptor, invoke, rewrap
from services.security.identity import Identity, bind, unbind
from services.security.policy import Rule, rule_for
from services.security.tokens import TokenAuthenticator, bearer_of

log = logging.getLogger("jetledger.security")

NO_CREDENTIAL: Final = "a bearer token is required (metadata 'authorization: Bearer <token>')"
UNKNOWN_CREDENTIAL: Final = "the bearer token is not valid"

Refusal = tuple[grpc.StatusCode, str]


def refusal(
    method: str, rule: Rule | None, identity: Identity | None, presented: bool, request: Any
) -> Refusal | None:
    """Why a call must be refused (status and one line), or ``None`` to let it through."""
    if rule is None:
        return grpc.StatusCode.PERMISSION_DENIED, f"{method} is not open to any caller"
    if rule.public:
        return None
    if identity is None:
        why = UNKNOWN_CREDENTIAL if presented else NO_CREDENTIAL
        return grpc.StatusCode.UNAUTHENTICATED, why
    reason = rule.check(identity, request)
    return None if reason is None else (grpc.StatusCode.PERMISSION_DENIED, reason)


class AuthInterceptor(WrappingInterceptor):
    """Authenticates by bearer token and authorizes by the access table, for one server."""

    def __init__(self, authenticator: TokenAuthenticator) -> None:
        self._authenticator = authenticator

    def wrap(self, handler: Handler, details: grpc.HandlerCallDetails) -> Handler:
        method = details.method
        token = bearer_of(details.invocation_metadata)
        identity = self._authenticator.authenticate(token)
        return _guarded(handler, method, rule_for(method), identity, token is not None)


async def _refuse_or_bind(
    context: grpc.aio.ServicerContext[Any, Any],
    method: str,
    rule: Rule | None,
    identity: Identity | None,
    presented: bool,
    request: Any,
) -> Any:
    refused = refusal(method, rule, identity, presented, request)
    if refused is not None:
        code, why = refused
        log.warning(
            "call refused",
            extra={"method": method, "code": code.name, "caller": identity and identity.name},
        )
        await context.abort(code, why)
    return bind(identity)


def _guarded(
    handler: Handler,
    method: str,
    rule: Rule | None,
    identity: Identity | None,
    presented: bool,
) -> Handler:
    """A handler like ``handler`` whose behaviour first refuses or binds the caller."""
    args = (method, rule, identity, presented)

    def guard(behavior: Any, kind: Kind) -> Any:
        guarded = _streaming if kind.response_streaming else _unary
        return guarded(behavior, *args, per_request=not kind.request_streaming)

    return rewrap(handler, guard)


def _unary(
    behavior: Any,
    method: str,
    rule: Rule | None,
    identity: Identity | None,
    presented: bool,
    *,
    per_request: bool,
) -> Callable[[Any, Any], Awaitable[Any]]:
    async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        scoped = request if per_request else None
        token = await _refuse_or_bind(context, method, rule, identity, presented, scoped)
        try:
            return await invoke(behavior, request, context)
        finally:
            unbind(token)

    return guarded


def _streaming(
    behavior: Any,
    method: str,
    rule: Rule | None,
    identity: Identity | None,
    presented: bool,
    *,
    per_request: bool,
) -> Callable[[Any, Any], Any]:
    if inspect.isasyncgenfunction(behavior):

        async def generate(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            scoped = request if per_request else None
            token = await _refuse_or_bind(context, method, rule, identity, presented, scoped)
            try:
                async for response in behavior(request, context):
                    yield response
            finally:
                unbind(token)

        return generate
    # A coroutine that streams with ``context.write`` (grpc-health's Watch).
    return _unary(behavior, method, rule, identity, presented, per_request=per_request)
