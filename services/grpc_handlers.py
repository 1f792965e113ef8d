"""Rebuilding a gRPC method handler around a wrapped behaviour.

Every server interceptor here (observing, access, the status boundary) does the same thing: take
the handler gRPC found for a method, wrap its behaviour, and build a handler of the same kind with
the same (de)serializers. ``rewrap`` is that, once; ``invoke`` calls a unary behaviour, which may
be a plain function or a coroutine function.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

import grpc

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"  # generic only in the type stubs


@dataclass(frozen=True, slots=True)
class Kind:
    """Which of the four RPC kinds a behaviour serves."""

    request_streaming: bool
    response_streaming: bool


_KINDS: tuple[tuple[str, Callable[..., Any], Kind], ...] = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler, Kind(False, False)),
    ("unary_stream", grpc.unary_stream_rpc_method_handler, Kind(False, True)),
    ("stream_unary", grpc.stream_unary_rpc_method_handler, Kind(True, False)),
    ("stream_stream", grpc.stream_stream_rpc_method_handler, Kind(True, True)),
)


def rewrap(
    handler: Handler,
    wrap: Callable[[Any, Kind], Any],
    *,
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> Handler:
    """``handler`` with its behaviour replaced by ``wrap(behaviour, kind)``, or ``handler`` itself
    when ``wrap`` returns None (a kind the interceptor leaves alone). ``request_deserializer``
    replaces the handler's own when given."""
    for attribute, build, kind in _KINDS:
        behavior = getattr(handler, attribute)
        if behavior is None:
            continue
        wrapped = wrap(behavior, kind)
        if wrapped is None:
            return handler
        built: Handler = build(
            wrapped,
            request_deserializer=request_deserializer or handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        return built
    return handler


async def invoke(behavior: Callable[[Any, Any], Any], request: Any, context: Any) -> Any:
    """Call a unary behaviour (a function or a coroutine function) and return its answer."""
    result = behavior(request, context)
    return await result if inspect.isawaitable(result) else result
