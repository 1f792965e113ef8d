"""The card service answers its own commands from the state it has just appended.

Reading the event back through the follower cost a wait for the stream's follower on every
IssueCard; the handler's state after a confirmed append is the card exactly as of that write.
"""

from __future__ import annotations

from typing import Any, cast

from prometheus_client import CollectorRegistry

from eventstore import EventStore, GroupCommitWriter
from jetledger.card.v1 import card_pb2
from services.card.live import LiveCards
from services.card.servicer import CardServicer
from services.intake import CommandHandler
from tests.e2e.support import issue_request

NO_CONTEXT: Any = cast(Any, None)  # no call here ends in an error, so none is aborted


async def test_commands_answer_from_the_written_state_without_the_follower(
    store: EventStore,
) -> None:
    registry = CollectorRegistry()
    idle = LiveCards(store, store.names.subjects)  # never started: it would never catch up
    async with GroupCommitWriter(store) as writer:
        servicer = CardServicer(CommandHandler(store, writer, store.names), store, store.names,
                                registry, idle)  # fmt: skip
        issued = await servicer.IssueCard(issue_request("c1", credit_limit=5_000), NO_CONTEXT)
        frozen = await servicer.FreezeCard(
            card_pb2.FreezeCardRequest(command_id="freeze-1", card_id="c1", reason="lost"),
            NO_CONTEXT,
        )
    assert (issued.card.card_id, issued.card.credit_limit) == ("c1", 5_000)
    assert frozen.card.status == card_pb2.CARD_STATUS_FROZEN
    assert registry.get_sample_value("jetledger_card_tail_reads_total") == 0, (
        "answered from the appended state, not from a tail read after the follower's wait"
    )
