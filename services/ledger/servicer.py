"""gRPC ``jetledger.ledger.v1.LedgerService``: balances, entries and transactions, with
read-your-writes.

``min_position`` makes a call wait (bounded by ``max_wait`` and the call's deadline) until the
projection covers that position of the named stream (``projections.freshness``). A Postgres or
NATS outage answers UNAVAILABLE with a plain message, never UNKNOWN.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any, Final

import grpc
import psycopg
from psycopg_pool import AsyncConnectionPool

from contracts.errors import InvalidArgument
from contracts.ids import check_account_id, check_id
from eventstore import EventStore
from jetledger.ledger.v1 import ledger_pb2 as pb
from jetledger.ledger.v1 import ledger_pb2_grpc
from projections.freshness import wait_until_covered
from projections.ledger import queries
from projections.outage import database_outage_as_unavailable
from services.grpc_errors import translate_errors
from services.ledger import convert

SERVICE_NAME: Final = pb.DESCRIPTOR.services_by_name["LedgerService"].full_name
MAX_PAGE: Final = 1000
DEFAULT_PAGE: Final = 100

Context = grpc.aio.ServicerContext[Any, Any]


class LedgerServicer(ledger_pb2_grpc.LedgerServiceServicer):
    """Answers ledger queries from the live projection schema."""

    def __init__(
        self, pool: AsyncConnectionPool[Any], store: EventStore, max_wait: float = 10.0
    ) -> None:
        self._pool = pool
        self._store = store
        self._streams = store.names
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

    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection in a REPEATABLE READ READ ONLY transaction (position + rows agree)."""
        async with (
            database_outage_as_unavailable("the ledger"),
            self._pool.connection() as conn,
            conn.transaction(),
        ):
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            yield conn

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

        async def applied() -> int:
            async with database_outage_as_unavailable("the ledger"), self._pool.connection() as c:
                return await queries.position(c, self._streams.source)

        await wait_until_covered(
            sequence,
            stream=self._streams.source,
            filters=[self._streams.subjects.all_cards],
            applied=applied,
            store=self._store,
            budget_seconds=budget,
            what="the ledger projection",
        )
