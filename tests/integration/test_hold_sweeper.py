"""The hold sweeper remembers open holds only, and still expires every one that lapses."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from commands.messages import (
    AuthorizeTransaction,
    CaptureTransaction,
    FundCard,
    IssueCard,
    VoidTransaction,
)
from eventstore import EventStore, GroupCommitWriter
from services.intake import CommandHandler
from services.transaction.sweeper import HoldSweeper

T0 = datetime(2026, 1, 1, tzinfo=UTC)


async def test_ended_holds_are_forgotten_and_open_ones_expire(store: EventStore) -> None:
    clock = [T0]
    async with GroupCommitWriter(store) as writer:
        handler = CommandHandler(store, writer, store.names, clock=lambda: clock[0])
        card = "sweep-card"
        await handler.handle(
            IssueCard(
                command_id="issue",
                card_id=card,
                cardholder_name="A",
                card_type="debit",
                currency="USD",
                last4="4242",
            )
        )
        await handler.handle(
            FundCard(command_id="fund", card_id=card, amount=10**6, currency="USD")
        )
        holds = [f"hold-{n}" for n in range(40)]
        for hold in holds:
            await handler.handle(
                AuthorizeTransaction(
                    command_id=hold,
                    card_id=card,
                    merchant_id="m",
                    amount=100,
                    currency="USD",
                    expires_at=T0 + timedelta(hours=1),
                )
            )
        sweeper = HoldSweeper(store, handler, store.names.subjects, clock=lambda: clock[0])
        assert await sweeper.sweep() == 0
        assert sweeper.open_holds == 40
        for hold in holds[:20]:  # captured in full: ended
            await handler.handle(
                CaptureTransaction(
                    command_id=f"c-{hold}", card_id=card, authorization_id=hold, amount=100
                )
            )
        for hold in holds[20:30]:  # voided: ended
            await handler.handle(
                VoidTransaction(command_id=f"v-{hold}", card_id=card, authorization_id=hold)
            )
        for hold in holds[30:35]:  # captured in part: still open
            await handler.handle(
                CaptureTransaction(
                    command_id=f"p-{hold}", card_id=card, authorization_id=hold, amount=40
                )
            )
        assert await sweeper.sweep() == 0
        assert sweeper.open_holds == 10, "only the partly captured and untouched holds are open"
        clock[0] = T0 + timedelta(hours=2)
        assert await sweeper.sweep() == 10  # every open hold lapsed and is recorded once
        assert sweeper.open_holds == 0
        assert await sweeper.sweep() == 0
