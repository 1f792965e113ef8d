"""gRPC ``jetledger.transaction.v1.TransactionService``: money commands in, outcomes out.

Unary calls answer a decline with FAILED_PRECONDITION carrying the recorded outcome as typed
details (``services.outcomes``); ``SubmitTransactions`` answers each command with its own outcome,
declines included, plus the status the unary call would have ended with, and puts per-command
errors (bad input, unknown card) in that command's result alone.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Final, TypeVar

import grpc

from commands.messages import Command
from commands.validation import validate
from contracts.errors import InvalidArgument, LedgerError
from contracts.ids import check_id
from jetledger.transaction.v1 import transaction_pb2 as pb
from jetledger.transaction.v1 import transaction_pb2_grpc
from services.grpc_errors import translate_errors
from services.intake import CommandHandler, CommandOutcome
from services.transaction import mapping
from services.transaction.cardlookup import CardLookup

Context = grpc.aio.ServicerContext[Any, Any]
MAX_SUBMIT: Final = 1000

R = TypeVar("R")


class TransactionServicer(transaction_pb2_grpc.TransactionServiceServicer):
    """Verifies the card (GetCard), decides, appends, and answers with the recorded outcome."""

    def __init__(self, handler: CommandHandler, cards: CardLookup) -> None:
        self._handler = handler
        self._cards = cards

    async def _decide(self, command: Command, context: Context) -> CommandOutcome:
        command = validate(command)  # bad input never reaches the card service or the stream
        if not self._held(command.card_id):
            await self._cards.get(command.card_id)
        return await self._handler.handle(command, deadline=_deadline(context), validated=True)

    def _held(self, card_id: str) -> bool:
        """Whether the intake already holds this card's state, which shows the card exists.

        Cards are never deleted, and that state is exact under compare-and-set, so a card the
        intake holds needs no ``GetCard``: the lookup verifies a card before the intake first
        decides for it (and again once the state has left its memory), not on every command. A
        100,000-card soak otherwise made one ``GetCard`` per command (docs/intake.md).
        """
        return self._handler.cards.cached(card_id).exists

    def _held_cards(self, parsed: list[Command | LedgerError]) -> set[str]:
        return {
            c.card_id for c in parsed if not isinstance(c, LedgerError) and self._held(c.card_id)
        }

    async def _unary(self, command: Command, reply: Callable[..., R], context: Context) -> R:
        outcome = await self._decide(command, context)
        if not outcome.accepted:
            raise mapping.declined(outcome)  # FAILED_PRECONDITION with typed details
        return reply(outcome=mapping.outcome_message(outcome))

    @translate_errors
    async def CreateTransaction(
        self, request: pb.CreateTransactionRequest, context: Context
    ) -> pb.CreateTransactionResponse:
        return await self._unary(mapping.create(request), pb.CreateTransactionResponse, context)

    @translate_errors
    async def FundCard(self, request: pb.FundCardRequest, context: Context) -> pb.FundCardResponse:
        return await self._unary(mapping.fund(request), pb.FundCardResponse, context)

    @translate_errors
    async def AdjustBalance(
        self, request: pb.AdjustBalanceRequest, context: Context
    ) -> pb.AdjustBalanceResponse:
        return await self._unary(mapping.adjust(request), pb.AdjustBalanceResponse, context)

    @translate_errors
    async def AuthorizeTransaction(
        self, request: pb.AuthorizeTransactionRequest, context: Context
    ) -> pb.AuthorizeTransactionResponse:
        return await self._unary(
            mapping.authorize(request), pb.AuthorizeTransactionResponse, context
        )

    @translate_errors
    async def CaptureTransaction(
        self, request: pb.CaptureTransactionRequest, context: Context
    ) -> pb.CaptureTransactionResponse:
        return await self._unary(mapping.capture(request), pb.CaptureTransactionResponse, context)

    @translate_errors
    async def VoidTransaction(
        self, request: pb.VoidTransactionRequest, context: Context
    ) -> pb.VoidTransactionResponse:
        return await self._unary(mapping.void(request), pb.VoidTransactionResponse, context)

    @translate_errors
    async def RefundTransaction(
        self, request: pb.RefundTransactionRequest, context: Context
    ) -> pb.RefundTransactionResponse:
        return await self._unary(mapping.refund(request), pb.RefundTransactionResponse, context)

    @translate_errors
    async def SubmitTransactions(
        self, request: pb.SubmitTransactionsRequest, context: Context
    ) -> pb.SubmitTransactionsResponse:
        if len(request.commands) > MAX_SUBMIT:
            raise InvalidArgument(f"at most {MAX_SUBMIT} commands per SubmitTransactions call")
        parsed: list[Command | LedgerError] = []
        for item in request.commands:
            try:
                parsed.append(validate(mapping.from_submitted(item)))
            except LedgerError as exc:
                parsed.append(exc)
        # Look each card up once, before anything is decided, so lookups cannot reorder commands.
        card_ids = sorted(
            {c.card_id for c in parsed if not isinstance(c, LedgerError)} - self._held_cards(parsed)
        )
        lookups = await asyncio.gather(
            *(self._cards.get(c) for c in card_ids), return_exceptions=True
        )
        unknown = {
            c: r for c, r in zip(card_ids, lookups, strict=True) if isinstance(r, LedgerError)
        }
        for result in lookups:
            if isinstance(result, BaseException) and not isinstance(result, LedgerError):
                raise result
        # All at once: the group-commit writer coalesces them into shared atomic batches. Tasks
        # take each card's lock in creation order, so one card's commands run in request order.
        deadline = _deadline(context)
        results = await asyncio.gather(
            *(self._submit_one(item, unknown, deadline) for item in parsed)
        )
        return pb.SubmitTransactionsResponse(results=results)

    async def _submit_one(
        self, item: Command | LedgerError, unknown: dict[str, LedgerError], deadline: float | None
    ) -> pb.SubmitResult:
        try:
            if isinstance(item, LedgerError):
                raise item
            if item.card_id in unknown:
                raise unknown[item.card_id]
            outcome = await self._handler.handle(item, deadline=deadline, validated=True)
        except LedgerError as exc:
            return mapping.submit_error(exc)
        return mapping.submit_result(outcome)

    @translate_errors
    async def GetCommandOutcome(
        self, request: pb.GetCommandOutcomeRequest, context: Context
    ) -> pb.GetCommandOutcomeResponse:
        outcome = await self._handler.outcome_of(check_id(request.transaction_id, "transaction_id"))
        return pb.GetCommandOutcomeResponse(outcome=mapping.outcome_message(outcome))


def _deadline(context: Context) -> float | None:
    """The caller's deadline as a ``time.monotonic()`` instant (None when the call has none)."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining
