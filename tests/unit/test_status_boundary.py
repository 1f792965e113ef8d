"""``StatusBoundary`` units: what escapes a servicer, with a stand-in for gRPC's servicer context."""

from __future__ import annotations

from typing import Any

import grpc
import psycopg
import pytest

from contracts.errors import NotFound
from services.grpc_errors import _boundary_unary


class Aborted(Exception):
    """What our stand-in raises from abort (gRPC raises its AbortError)."""


class Context:
    """The few ``grpc.aio.ServicerContext`` methods the boundary uses."""

    def __init__(self, over: bool = False) -> None:
        self.over = over
        self.aborts: list[tuple[grpc.StatusCode, str]] = []

    def cancelled(self) -> bool:
        return self.over

    def done(self) -> bool:
        return self.over

    async def abort(self, code: grpc.StatusCode, details: str = "", *_: Any) -> None:
        self.aborts.append((code, details))
        raise Aborted


def raising(exc: Exception) -> Any:
    async def behavior(request: object, context: object) -> None:
        raise exc

    return behavior


async def test_a_database_outage_is_unavailable_without_a_class_name() -> None:
    context = Context()
    with pytest.raises(Aborted):
        await _boundary_unary(raising(psycopg.OperationalError("gone")), "/m")(None, context)
    ((code, details),) = context.aborts
    assert code == grpc.StatusCode.UNAVAILABLE
    assert "OperationalError" not in details and "database" in details


async def test_an_untranslated_domain_error_keeps_its_status() -> None:
    context = Context()
    with pytest.raises(Aborted):
        await _boundary_unary(raising(NotFound("no card")), "/m")(None, context)
    assert context.aborts == [(grpc.StatusCode.NOT_FOUND, "no card")]


async def test_a_call_whose_caller_is_gone_is_not_aborted_twice() -> None:
    """Under load a servicer's own abort failed (the deadline had passed) and the boundary
    aborted again: gRPC logged "Unexpected [UsageError] … Abort already called!" (campaign)."""
    context = Context(over=True)
    result = await _boundary_unary(raising(RuntimeError("late")), "/m")(None, context)
    assert result is None
    assert context.aborts == []
