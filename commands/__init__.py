"""The pure core of the write side: commands, the state they are decided on, and the rules.

``decide(state, command, now) -> Decision`` and ``evolve(state, event) -> state`` do no I/O: the
shell (``services/intake``, run inside the transaction and card services) keeps each card's state
folded from its events, decides, and appends the decision's events with compare-and-set on the
card's subject family. Only the stdlib, msgspec and
``contracts`` are imported here, so hypothesis can drive the rules directly.
"""

from __future__ import annotations

from commands.decide import decide, expired_holds
from commands.decision import Decision
from commands.evolve import evolve, fold
from commands.messages import (
    COMMAND_TYPES,
    SYSTEM_ID_PREFIX,
    AdjustBalance,
    AuthorizeTransaction,
    CaptureTransaction,
    CloseCard,
    Command,
    CreateTransaction,
    ExpireAuthorization,
    FreezeCard,
    FundCard,
    IssueCard,
    RefundTransaction,
    UnfreezeCard,
    UpdateCreditLimit,
    VoidTransaction,
    command_type,
    fingerprint,
    normalise,
    sweeper_command_id,
)
from commands.state import EMPTY, CardState, CardStatus, ClosedHold, Hold, Posting
from commands.validation import validate

__all__ = [
    "COMMAND_TYPES",
    "EMPTY",
    "SYSTEM_ID_PREFIX",
    "AdjustBalance",
    "AuthorizeTransaction",
    "CaptureTransaction",
    "CardState",
    "CardStatus",
    "CloseCard",
    "ClosedHold",
    "Command",
    "CreateTransaction",
    "Decision",
    "ExpireAuthorization",
    "FreezeCard",
    "FundCard",
    "Hold",
    "IssueCard",
    "Posting",
    "RefundTransaction",
    "UnfreezeCard",
    "UpdateCreditLimit",
    "VoidTransaction",
    "command_type",
    "decide",
    "evolve",
    "expired_holds",
    "fingerprint",
    "fold",
    "normalise",
    "sweeper_command_id",
    "validate",
]
