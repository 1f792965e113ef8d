"""A recorded outcome on the wire, and a decline as a typed gRPC error detail (docs/intake.md).

A decline is a recorded outcome, not a failure of the call, so every RPC hands it over in the
same structured form. A unary call ends with FAILED_PRECONDITION whose ``google.rpc.Status``
details hold

- a ``google.rpc.ErrorInfo``: ``reason`` the decline reason in upper case (``INSUFFICIENT_FUNDS``,
  as AIP-193 asks), ``domain`` ``jetledger.transaction.v1``, and ``metadata`` with the reason as
  recorded, the ids, the stream position and whether this answer replays an earlier decision;
- the ``jetledger.transaction.v1.CommandOutcome`` itself: outcome, reason, detail, stream,
  stream sequence, replayed, card, command type, decided at.

``SubmitTransactions`` gives each declined command the same ``CommandOutcome`` and the same
``google.rpc.Status`` in its result. Card lifecycle declines (freeze a closed card, …) carry the
same details: ``GetCommandOutcome`` reads any command's outcome.

Clients: ``recorded_outcome`` and ``error_info`` read them back from a ``Declined`` that
``services.grpc_errors.error_from_rpc`` built from a failed call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc.error_details_pb2 import ErrorInfo

from contracts.errors import Declined
from jetledger.transaction.v1 import transaction_pb2 as pb

if TYPE_CHECKING:  # clients read outcomes without loading the intake
    from services.intake import CommandOutcome

DOMAIN: Final = "jetledger.transaction.v1"
OUTCOME_ENUM: Final = {"accepted": pb.OUTCOME_ACCEPTED, "declined": pb.OUTCOME_DECLINED}


def outcome_message(outcome: CommandOutcome) -> pb.CommandOutcome:
    """Render a recorded outcome."""
    decided_at = Timestamp()
    decided_at.FromDatetime(outcome.decided_at)
    return pb.CommandOutcome(
        transaction_id=outcome.command_id,
        outcome=OUTCOME_ENUM[outcome.outcome],
        reason=outcome.reason,
        detail=outcome.detail,
        stream_sequence=outcome.stream_sequence,
        stream=outcome.stream,
        replayed=outcome.replayed,
        card_id=outcome.card_id,
        command_type=outcome.command_type,
        decided_at=decided_at,
    )


def error_info(outcome: pb.CommandOutcome) -> ErrorInfo:
    """The ``ErrorInfo`` of a declined outcome: its reason, our domain, and the facts as strings."""
    return ErrorInfo(
        reason=outcome.reason.upper(),
        domain=DOMAIN,
        metadata={
            "reason": outcome.reason,
            "transaction_id": outcome.transaction_id,
            "card_id": outcome.card_id,
            "command_type": outcome.command_type,
            "stream": outcome.stream,
            "stream_sequence": str(outcome.stream_sequence),
            "replayed": "true" if outcome.replayed else "false",
        },
    )


def declined(outcome: CommandOutcome) -> Declined:
    """The error a unary call ends with for a recorded decline, its typed details attached."""
    message = outcome_message(outcome)
    return Declined(outcome.reason, decline_detail(message), details=(error_info(message), message))


def decline_detail(outcome: pb.CommandOutcome) -> str:
    """The words after ``reason:`` for people: the detail, where it is recorded, if a retry."""
    where = f"recorded at {outcome.stream}:{outcome.stream_sequence}"
    again = "; a retry, answered with the original decision" if outcome.replayed else ""
    return f"{outcome.detail} ({where}{again})".strip()


def recorded_outcome(error: Declined) -> pb.CommandOutcome | None:
    """The recorded outcome a decline carries (None from a server that sent no details)."""
    return next((d for d in error.details if isinstance(d, pb.CommandOutcome)), None)


def declined_from(details: tuple[object, ...]) -> Declined | None:
    """Rebuild a ``Declined`` from a status's unpacked details; None when they hold no outcome."""
    outcome = next((d for d in details if isinstance(d, pb.CommandOutcome)), None)
    if outcome is None or not outcome.reason:
        return None
    return Declined(outcome.reason, decline_detail(outcome), details=details)


DETAIL_TYPES: Final = (ErrorInfo, pb.CommandOutcome)
"""The detail messages a jetledger status may carry, for clients to unpack."""
