"""gRPC ``jetledger.ledger.v1.LedgerService``: balances, entries and transactions, with
read-your-writes.

``min_position`` makes a call wait (bounded by ``max_wait`` and the call's deadline) until the
projection has reached that position of the named stream. The projector's tracking row only moves
on messages it consumes (``card.>``), while a command's position is often its outcome marker
(``command.<id>``), so "reached" also holds when no message the projector consumes lies between
its position and the one asked for — one ``next_by_subj`` lookup on the stream answers that.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final

import grpc
import nats.errors
import psycopg
from nats.js import JetStreamContext
from psycopg_pool import AsyncConnectionPool

from contracts.errors import InvalidArgument, Unavailable
from contracts.ids import check_account_id, check_id
from contracts.subjects import StreamNames
from jetledger.ledger.v1 import ledger_pb2 as pb
from jetledger.ledger.v1 import ledger_pb2_grpc
from projections.ledger import queries
from projections.ledger.source import last_sequence, next_matching_sequence
from services.grpc_errors import translate_errors
from services.ledger import convert

SERVICE_NAME: Final = pb.DESCRIPTOR.services_by_name["LedgerService"].full_name
MAX_PAGE: Final = 1000
DEFAULT_PAGE: Final = 100

Context = grpc.aio.ServicerContext[Any, Any]


class LedgerServicer(ledger_pb2_grpc.LedgerServiceServicer):
    """Answers ledger queries from the live projection schema."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        js: JetStreamContext,
        streams: StreamNames,
        max_wait: float = 10.0,
    ) -> None:
        self._pool = pool
        self._js = js
        self._streams = streams
        self._max_wait = max_wait

    @translate_errors
    async def GetBalance(
        self, request: pb.GetBalanceRequest, context: Context
    ) -> pb.GetBalanceResponse:
        account_id = check_account_id(request.account_id)
        await self._await_position(request, context)
        as_of = convert.from_timestamp(request.as_of) if request.HasField("as_of") else None
        known_at = None
        if request.HasField("as_known_at"):
            self._check_stream(request.as_known_at.stream)
            known_at = request.as_known_at.sequence
        async with self._read() as conn:
            pos = await queries.position(conn, self._streams.source)
            found = await queries.balances(conn, account_id, as_of, known_at)
        return pb.GetBalanceResponse(
            account_id=account_id,
            kind=convert.ACCOUNT_KINDS[account_id.split("-", 1)[0]],
            balances=[convert.balance(b) for b in found],
            position=convert.position(self._streams.source, pos),
        )

    @translate_errors
    async def ListEntries(
        self, request: pb.ListEntriesRequest, context: Context
    ) -> pb.ListEntriesResponse:
        account_id = check_account_id(request.account_id)
        if request.page_size > MAX_PAGE:
            raise InvalidArgument(f"page_size must be at most {MAX_PAGE}")
        await self._await_position(request, context)
        start = (
            convert.from_timestamp(request.start_time) if request.HasField("start_time") else None
        )
        end = convert.from_timestamp(request.end_time) if request.HasField("end_time") else None
        async with self._read() as conn:
            pos = await queries.position(conn, self._streams.source)
            rows, token = await queries.entries(
                conn, account_id, start, end, request.page_size or DEFAULT_PAGE, request.page_token
            )
        return pb.ListEntriesResponse(
            entries=[convert.entry(e) for e in rows],
            next_page_token=token,
            position=convert.position(self._streams.source, pos),
        )

    @translate_errors
    async def GetTransaction(
        self, request: pb.GetTransactionRequest, context: Context
    ) -> pb.GetTransactionResponse:
        transaction_id = check_id(request.transaction_id, "transaction_id")
        await self._await_position(request, context)
        async with self._read() as conn:
            pos = await queries.position(conn, self._streams.source)
            found = await queries.transaction(conn, transaction_id)
        return pb.GetTransactionResponse(
            transaction=convert.transaction(found),
            position=convert.position(self._streams.source, pos),
        )

    def _read(self) -> Any:
        """A pooled connection in a REPEATABLE READ READ ONLY transaction (position + rows agree)."""
        return _ReadTransaction(self._pool)

    def _check_stream(self, stream: str) -> None:
        if stream != self._streams.source:
            raise InvalidArgument(
                f"this ledger projects stream {self._streams.source!r}, not {stream!r}"
            )

    async def _await_position(self, request: Any, context: Context) -> None:
        if not request.HasField("min_position"):
            return
        want = request.min_position
        self._check_stream(want.stream)
        budget = self._max_wait
        remaining = context.time_remaining()
        if remaining is not None:
            budget = min(budget, max(0.0, remaining - 0.05))
        await self.wait_for(want.sequence, budget)

    async def wait_for(self, sequence: int, budget: float) -> None:
        """Return once the projection covers ``sequence``; raise ``Unavailable`` after ``budget``."""
        deadline = time.monotonic() + budget
        pause = 0.002
        checked_end = False
        while True:
            async with self._pool.connection() as conn:
                pos = await queries.position(conn, self._streams.source)
            if pos >= sequence:
                return
            try:
                upcoming = await next_matching_sequence(
                    self._js, self._streams.source, self._streams.subjects.all_cards, pos
                )
                if upcoming is None or upcoming > sequence:
                    if not checked_end:
                        checked_end = True
                        end = await last_sequence(self._js, self._streams.source)
                        if sequence > end:
                            raise InvalidArgument(
                                f"min_position {sequence} is beyond the end of the stream ({end})"
                            )
                    return
            except nats.errors.Error as exc:
                raise Unavailable(f"cannot read the stream: {exc}") from exc
            if time.monotonic() + pause > deadline:
                raise Unavailable(
                    f"the ledger projection is at {pos}, not yet at {sequence}; retry shortly"
                )
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.05)


class _ReadTransaction:
    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self._pool = pool
        self._cm: Any = None
        self._tx: Any = None

    async def __aenter__(self) -> psycopg.AsyncConnection[Any]:
        self._cm = self._pool.connection()
        conn: psycopg.AsyncConnection[Any] = await self._cm.__aenter__()
        try:
            self._tx = conn.transaction()
            await self._tx.__aenter__()
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        except BaseException as exc:
            await self._cm.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return conn

    async def __aexit__(self, *exc: Any) -> None:
        try:
            await self._tx.__aexit__(*exc)
        finally:
            await self._cm.__aexit__(*exc)
