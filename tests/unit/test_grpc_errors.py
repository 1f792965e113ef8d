"""``error_from_rpc`` turns a failed call into one domain error, whatever the server sent.

The structured path (a decline's ``google.rpc.Status`` details) is exercised through real gRPC in
``tests/e2e/test_intake_grpc.py``; here a call is a small stand-in for ``grpc.Call``, to pin the
fallbacks: a server that sends only the old trailer, and details that do not parse or contradict
the call.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from contracts.errors import Declined, NotFound
from jetledger.card.v1 import card_pb2
from jetledger.transaction.v1 import transaction_pb2 as tx
from services.grpc_errors import (
    REASON_METADATA_KEY,
    STATUS_DETAILS_KEY,
    _checked,
    error_from_rpc,
    malformed,
    status_of,
)
from services.intake import CommandOutcome
from services.outcomes import declined, recorded_outcome

Metadata = tuple[tuple[str, str | bytes], ...]


class FailedCall(grpc.RpcError):
    """What a client sees of a failed call: code, message, trailing metadata."""

    def __init__(self, code: grpc.StatusCode, details: str, trailing: Metadata = ()) -> None:
        self._code, self._details, self._trailing = code, details, trailing

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> Any:  # grpc-stubs types it with a private alias
        return self._trailing


def _decline(replayed: bool = False) -> Declined:
    return declined(
        CommandOutcome(
            command_id="tv-1",
            command_type="purchase",
            card_id="alice",
            outcome="declined",
            reason="insufficient_funds",
            detail="asked 900.00 USD, available 187.50 USD",
            stream="LEDGER",
            stream_sequence=7,
            decided_at=datetime(2026, 12, 2, tzinfo=UTC),
            replayed=replayed,
        )
    )


def _as_sent(error: Declined) -> FailedCall:
    """The call as ``translate_errors`` ends it for ``error``."""
    return FailedCall(
        grpc.StatusCode.FAILED_PRECONDITION,
        str(error),
        (
            (REASON_METADATA_KEY, error.reason),
            (STATUS_DETAILS_KEY, status_of(error).SerializeToString()),
        ),
    )


@pytest.mark.parametrize("replayed", [False, True])
def test_a_decline_comes_back_whole_and_says_its_reason_once(replayed: bool) -> None:
    sent = _decline(replayed)
    got = error_from_rpc(_as_sent(sent))
    assert isinstance(got, Declined) and str(got) == str(sent)
    assert str(got).count("insufficient_funds") == 1
    assert ("a retry" in str(got)) is replayed
    outcome = recorded_outcome(got)
    assert outcome is not None and outcome.stream_sequence == 7 and outcome.replayed is replayed


def test_a_server_that_sends_only_the_trailer_still_gives_the_reason_once() -> None:
    call = FailedCall(
        grpc.StatusCode.FAILED_PRECONDITION,
        "insufficient_funds: asked 900.00 USD (recorded at LEDGER:7)",
        ((REASON_METADATA_KEY, "insufficient_funds"),),
    )
    got = error_from_rpc(call)
    assert isinstance(got, Declined) and got.reason == "insufficient_funds"
    assert str(got) == "insufficient_funds: asked 900.00 USD (recorded at LEDGER:7)"
    assert recorded_outcome(got) is None


@pytest.mark.parametrize(
    "details",
    [b"\xff\x00 not a status", None],  # garbage; a valid status whose message differs from the call
)
def test_details_that_do_not_parse_or_contradict_the_call_fall_back_to_the_trailer(
    details: bytes | None,
) -> None:
    blob = details if details is not None else status_of(_decline()).SerializeToString()
    call = FailedCall(
        grpc.StatusCode.FAILED_PRECONDITION,
        "insufficient_funds: something else",
        ((REASON_METADATA_KEY, "insufficient_funds"), (STATUS_DETAILS_KEY, blob)),
    )
    got = error_from_rpc(call)
    assert isinstance(got, Declined) and str(got) == "insufficient_funds: something else"
    assert recorded_outcome(got) is None


def test_other_statuses_carry_no_details() -> None:
    got = error_from_rpc(FailedCall(grpc.StatusCode.NOT_FOUND, "card nope not found"))
    assert isinstance(got, NotFound) and str(got) == "card nope not found"
    assert status_of(NotFound("x")).details == []


def test_malformed_walks_only_into_types_that_can_hold_an_enum_or_a_timestamp() -> None:
    assert not _checked(tx.Money.DESCRIPTOR) and not _checked(
        tx.CreateTransactionRequest.DESCRIPTOR
    )
    assert _checked(tx.SubmitTransactionsRequest.DESCRIPTOR)  # authorize carries a Timestamp
    assert _checked(struct_pb2.Struct.DESCRIPTOR)  # nests itself; its Value holds an enum
    batch = tx.SubmitTransactionsRequest(
        commands=[
            tx.TransactionCommand(create=tx.CreateTransactionRequest(transaction_id="a")),
            tx.TransactionCommand(authorize=tx.AuthorizeTransactionRequest(transaction_id="b")),
        ]
    )
    assert malformed(batch) is None
    batch.commands[1].authorize.expires_at.seconds = 10**15
    assert malformed(batch) == "commands.authorize.expires_at: not a valid timestamp"
    issue = card_pb2.IssueCardRequest(card_type=99)  # type: ignore[arg-type]
    assert malformed(issue) == "card_type: 99 is not a CardType value"
