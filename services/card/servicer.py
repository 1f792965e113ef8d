"""gRPC ``jetledger.card.v1.CardService``: card lookup (the seed's GetCard) and lifecycle commands.

Cards are event-sourced like everything else: lifecycle commands go through the same command
handler as money (compare-and-set on the card's family, outcome marker, idempotent forever) and
answers are folded from the card's events. No full PAN or CVV exists anywhere to return.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

import grpc
from prometheus_client import CollectorRegistry, Counter

from commands.messages import (
    CloseCard,
    Command,
    FreezeCard,
    IssueCard,
    UnfreezeCard,
    UpdateCreditLimit,
)
from commands.state import EMPTY, CardState
from contracts.errors import InvalidArgument, NotFound
from contracts.ids import check_id
from contracts.subjects import StreamNames
from eventstore import EventStore
from jetledger.card.v1 import card_pb2, card_pb2_grpc
from services.card.live import LiveCards
from services.grpc_errors import translate_errors
from services.intake import CommandHandler, CommandOutcome
from services.outcomes import declined

CARD_TYPES: Final = {
    card_pb2.CARD_TYPE_DEBIT: "debit",
    card_pb2.CARD_TYPE_CREDIT: "credit",
    card_pb2.CARD_TYPE_PREPAID: "prepaid",
}
CARD_TYPE_ENUM: Final = {name: value for value, name in CARD_TYPES.items()}
STATUS_ENUM: Final = {
    "active": card_pb2.CARD_STATUS_ACTIVE,
    "frozen": card_pb2.CARD_STATUS_FROZEN,
    "closed": card_pb2.CARD_STATUS_CLOSED,
}
Context = grpc.aio.ServicerContext[Any, Any]
MAX_PAGE: Final = 1000
LIVE_WAIT: Final = 1.0  # seconds GetCard waits for the follower before reading the tail itself


def card_response(state: CardState, stream: str, now: datetime) -> card_pb2.CardResponse:
    """Render a card's state as the seed's ``CardResponse`` (never a PAN or a CVV)."""
    return card_pb2.CardResponse(
        card_id=state.card_id,
        cardholder_name=state.cardholder_name,
        card_type=CARD_TYPE_ENUM[state.card_type],
        status=STATUS_ENUM[state.status],
        currency=state.currency,
        credit_limit=state.credit_limit,
        account_id=state.account_id,
        last4=state.last4,
        version=state.version,
        stream=stream,
        posted=state.posted,
        pending=state.pending(now),
        available=state.available(now),
    )


def command_result(outcome: CommandOutcome) -> card_pb2.CommandResult:
    """Render the outcome of a lifecycle command (declines are raised as FAILED_PRECONDITION)."""
    if not outcome.accepted:
        raise declined(outcome)  # with the recorded outcome as typed details, like a payment
    return card_pb2.CommandResult(
        command_id=outcome.command_id,
        stream_sequence=outcome.stream_sequence,
        stream=outcome.stream,
        replayed=outcome.replayed,
    )


class CardServicer(card_pb2_grpc.CardServiceServicer):
    """Answers card lookups from folded state and appends lifecycle commands."""

    def __init__(
        self,
        handler: CommandHandler,
        store: EventStore,
        streams: StreamNames,
        registry: CollectorRegistry | None = None,
        live: LiveCards | None = None,
    ) -> None:
        self._handler = handler
        self._live = live
        registry = registry if registry is not None else CollectorRegistry()
        self._lookups = Counter(
            "jetledger_card_lookups_served_total",
            "GetCard calls answered (or refused) by the card service",
            registry=registry,
        )
        self._fallbacks = Counter(
            "jetledger_card_tail_reads_total",
            "Card answers read from the stream's tail because the follower could not give them",
            registry=registry,
        )
        self._store = store
        self._stream = streams.source
        self._subjects = streams.subjects

    async def _card(self, card_id: str, written: int = 0) -> CardState:
        check_id(card_id, "card_id")
        state = await self._followed(card_id, written)
        if state is None:  # not followed, or the follower is behind: read the tail, exactly
            self._fallbacks.inc()
            state = await self._handler.cards.current(card_id)
        if not state.exists:
            raise NotFound(f"card {card_id!r} does not exist")
        return state

    async def _followed(self, card_id: str, written: int) -> CardState | None:
        """The followed state, once it includes the card's last event (read your writes).

        ``written`` is the sequence of the event this call has just appended (0 for a plain read):
        waiting for it needs no read of the card's last sequence, which on an R3 stream a lagging
        replica may answer with a sequence older than that event (or with none: NOT_FOUND for the
        card just issued, found by the cluster fault campaign).
        """
        if self._live is None:
            return None
        if written:
            return await self._live.state(card_id, written, LIVE_WAIT)
        last = await self._store.last_by_subject(self._subjects.card(card_id))
        if last is None:
            return EMPTY
        return await self._live.state(card_id, last.sequence, LIVE_WAIT)

    async def _run(self, command: Command) -> tuple[card_pb2.CommandResult, card_pb2.CardResponse]:
        outcome = await self._handler.handle(command)
        result = command_result(outcome)
        # The state this process has just decided on and appended is the card as of its write:
        # no wait for the follower to read the event back.
        state = self._handler.cards.cached(command.card_id)
        if not state.exists or state.version < outcome.stream_sequence:
            state = await self._card(command.card_id, outcome.stream_sequence)
        return result, card_response(state, self._stream, datetime.now(UTC))

    @translate_errors
    async def GetCard(
        self, request: card_pb2.CardRequest, context: Context
    ) -> card_pb2.CardResponse:
        self._lookups.inc()
        state = await self._card(request.card_id)
        return card_response(state, self._stream, datetime.now(UTC))

    @translate_errors
    async def IssueCard(
        self, request: card_pb2.IssueCardRequest, context: Context
    ) -> card_pb2.IssueCardResponse:
        if request.card_type not in CARD_TYPES:
            raise InvalidArgument(
                "card_type must be CARD_TYPE_DEBIT, CARD_TYPE_CREDIT or CARD_TYPE_PREPAID"
            )
        result, card = await self._run(
            IssueCard(
                command_id=request.command_id,
                card_id=request.card_id,
                cardholder_name=request.cardholder_name,
                card_type=CARD_TYPES[request.card_type],  # type: ignore[arg-type]
                currency=request.currency,
                credit_limit=request.credit_limit,
                last4=request.last4,
            )
        )
        return card_pb2.IssueCardResponse(result=result, card=card)

    @translate_errors
    async def FreezeCard(
        self, request: card_pb2.FreezeCardRequest, context: Context
    ) -> card_pb2.FreezeCardResponse:
        result, card = await self._run(
            FreezeCard(
                command_id=request.command_id, card_id=request.card_id, reason=request.reason
            )
        )
        return card_pb2.FreezeCardResponse(result=result, card=card)

    @translate_errors
    async def UnfreezeCard(
        self, request: card_pb2.UnfreezeCardRequest, context: Context
    ) -> card_pb2.UnfreezeCardResponse:
        result, card = await self._run(
            UnfreezeCard(command_id=request.command_id, card_id=request.card_id)
        )
        return card_pb2.UnfreezeCardResponse(result=result, card=card)

    @translate_errors
    async def UpdateCreditLimit(
        self, request: card_pb2.UpdateCreditLimitRequest, context: Context
    ) -> card_pb2.UpdateCreditLimitResponse:
        result, card = await self._run(
            UpdateCreditLimit(
                command_id=request.command_id,
                card_id=request.card_id,
                credit_limit=request.credit_limit,
            )
        )
        return card_pb2.UpdateCreditLimitResponse(result=result, card=card)

    @translate_errors
    async def CloseCard(
        self, request: card_pb2.CloseCardRequest, context: Context
    ) -> card_pb2.CloseCardResponse:
        result, card = await self._run(
            CloseCard(command_id=request.command_id, card_id=request.card_id)
        )
        return card_pb2.CloseCardResponse(result=result, card=card)

    @translate_errors
    async def ListCards(
        self, request: card_pb2.ListCardsRequest, context: Context
    ) -> card_pb2.ListCardsResponse:
        if request.page_size < 0:
            raise InvalidArgument("page_size must not be negative")
        size = min(request.page_size or 100, MAX_PAGE)
        after = request.page_token
        if after:
            check_id(after, "page_token")
        # One subject per card: the stream's own subject index is the card directory.
        subjects = await self._store.subjects(self._subjects.all_cards)
        ids = sorted(
            card_id for card_id in map(self._subjects.card_id_of, subjects) if card_id > after
        )
        page = ids[:size]
        now = datetime.now(UTC)
        cards = [card_response(await self._card(card_id), self._stream, now) for card_id in page]
        token = page[-1] if len(page) == size and len(ids) > size else ""
        return card_pb2.ListCardsResponse(cards=cards, next_page_token=token)
