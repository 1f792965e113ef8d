"""``rewrap``: one handler rebuilt around a wrapped behaviour, of the same kind, serializers kept."""

from __future__ import annotations

from typing import Any

import grpc

from services.grpc_handlers import Kind, rewrap


def _echo(request: Any, context: Any) -> Any:
    return request


def _builders() -> dict[Kind, Any]:
    return {
        Kind(False, False): grpc.unary_unary_rpc_method_handler,
        Kind(False, True): grpc.unary_stream_rpc_method_handler,
        Kind(True, False): grpc.stream_unary_rpc_method_handler,
        Kind(True, True): grpc.stream_stream_rpc_method_handler,
    }


def test_every_kind_is_rebuilt_as_itself_with_its_serializers() -> None:
    for kind, build in _builders().items():
        handler = build(_echo, request_deserializer=bytes.decode, response_serializer=str.encode)
        seen: list[Kind] = []

        def wrap(behavior: Any, got: Kind, seen: list[Kind] = seen) -> Any:
            seen.append(got)
            return lambda request, context: ("wrapped", behavior(request, context))

        rebuilt = rewrap(handler, wrap)
        assert seen == [kind]
        assert (rebuilt.request_streaming, rebuilt.response_streaming) == (
            kind.request_streaming,
            kind.response_streaming,
        )
        assert rebuilt.request_deserializer is bytes.decode
        assert rebuilt.response_serializer is str.encode
        behavior: Any = next(
            b
            for b in (
                rebuilt.unary_unary,
                rebuilt.unary_stream,
                rebuilt.stream_unary,
                rebuilt.stream_stream,
            )
            if b is not None
        )
        assert behavior("x", None) == ("wrapped", "x")


def test_a_kind_left_alone_keeps_the_handler_and_a_deserializer_can_be_replaced() -> None:
    handler: Any = grpc.stream_unary_rpc_method_handler(_echo, request_deserializer=bytes.decode)
    assert rewrap(handler, lambda behavior, kind: None) is handler
    unary: Any = grpc.unary_unary_rpc_method_handler(_echo, request_deserializer=bytes.decode)
    rebuilt = rewrap(unary, lambda behavior, kind: behavior, request_deserializer=bytes.hex)
    assert rebuilt.request_deserializer is bytes.hex
