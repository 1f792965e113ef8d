"""The commands jetledger decides, as frozen ``msgspec.Struct``s, and their idempotency fingerprint.

Every command names its card and carries ``command_id``, the client's idempotency key (for money
commands it is the client's ``transaction_id``). The tag (``type``) names the command in declines,
outcome markers and metrics.

The fingerprint is stored in outcome markers forever, so tags and field names are frozen: a new
field must get a default, and because structs are encoded with ``omit_defaults`` a command that
leaves it at its default keeps the fingerprint it had before the field existed.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Final

import msgspec

from contracts.events import CardType


class _Command(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    tag_field="type",
    omit_defaults=True,
    forbid_unknown_fields=True,  # a stray "pan" or "cvv" field is refused, never carried along
):
    """Fields every command carries."""

    command_id: str
    card_id: str


# --- card lifecycle ---------------------------------------------------------------------------


class IssueCard(_Command, frozen=True, tag="issue_card"):
    """Open a card and its ledger account. Only the last four digits of the PAN are ever taken."""

    cardholder_name: str
    card_type: CardType
    currency: str
    last4: str
    credit_limit: int = 0  # minor units; only credit cards may have one above 0


class FreezeCard(_Command, frozen=True, tag="freeze_card"):
    """Stop new spending (purchases, authorizations) until unfrozen."""

    reason: str = ""


class UnfreezeCard(_Command, frozen=True, tag="unfreeze_card"):
    """Allow spending on a frozen card again."""


class UpdateCreditLimit(_Command, frozen=True, tag="update_credit_limit"):
    """Set a credit card's limit (minor units)."""

    credit_limit: int


class CloseCard(_Command, frozen=True, tag="close_card"):
    """Close a card for good; its balance must be zero and no hold may be pending."""


# --- money --------------------------------------------------------------------------------------


class FundCard(_Command, frozen=True, tag="fund_card"):
    """Money in: a top-up (debit/prepaid) or a repayment (credit) from the funding house account."""

    amount: int
    currency: str


class AdjustBalance(_Command, frozen=True, tag="adjust_balance"):
    """An operator correction against the adjustments house account; ``amount`` is signed."""

    amount: int
    currency: str
    reason: str
    actor: str


class CreateTransaction(_Command, frozen=True, tag="purchase"):
    """A one-step purchase at a merchant: posts immediately."""

    merchant_id: str
    amount: int
    currency: str
    description: str = ""


class AuthorizeTransaction(_Command, frozen=True, tag="authorize"):
    """A hold on the card's available balance until captured, voided or expired.

    ``expires_at`` may be left ``None`` by the client; the shell then fills in its hold TTL
    *after* taking the fingerprint, so a retry of the same request stays the same command.
    """

    merchant_id: str
    amount: int
    currency: str
    expires_at: datetime | None = None
    description: str = ""


class CaptureTransaction(_Command, frozen=True, tag="capture"):
    """Post all or part of a hold. ``currency`` may be empty (the hold's); if given it must match."""

    authorization_id: str
    amount: int
    currency: str = ""


class VoidTransaction(_Command, frozen=True, tag="void"):
    """Release what is left of a hold."""

    authorization_id: str


class RefundTransaction(_Command, frozen=True, tag="refund"):
    """Return all or part of a posted purchase or capture to the card."""

    original_transaction_id: str
    amount: int
    currency: str = ""  # empty means the original's currency; if given it must match


class ExpireAuthorization(_Command, frozen=True, tag="expire_authorization"):
    """Record that a hold lapsed (issued by the hold sweeper with ``sweeper_command_id``)."""

    authorization_id: str


Command = (
    IssueCard
    | FreezeCard
    | UnfreezeCard
    | UpdateCreditLimit
    | CloseCard
    | FundCard
    | AdjustBalance
    | CreateTransaction
    | AuthorizeTransaction
    | CaptureTransaction
    | VoidTransaction
    | RefundTransaction
    | ExpireAuthorization
)

COMMAND_TYPES: Final[tuple[type[_Command], ...]] = (
    IssueCard,
    FreezeCard,
    UnfreezeCard,
    UpdateCreditLimit,
    CloseCard,
    FundCard,
    AdjustBalance,
    CreateTransaction,
    AuthorizeTransaction,
    CaptureTransaction,
    VoidTransaction,
    RefundTransaction,
    ExpireAuthorization,
)

# Ids with this prefix are reserved for commands the system issues itself (the hold sweeper), so a
# client can never squat on the id a sweeper will use.
SYSTEM_ID_PREFIX: Final = "sweep-"

_FINGERPRINT_SCHEME: Final = b"jetledger.command.v1\n"
_canonical: Final = msgspec.json.Encoder(order="sorted")


def command_type(command: Command) -> str:
    """Return the tag of a command, e.g. ``"purchase"`` (used in declines, markers and metrics)."""
    tag = type(command).__struct_config__.tag
    assert isinstance(tag, str)
    return tag


def normalise(command: Command) -> Command:
    """Return ``command`` in canonical form: instants in UTC (so one instant has one encoding)."""
    if isinstance(command, AuthorizeTransaction) and command.expires_at is not None:
        expires_at = command.expires_at
        if expires_at.utcoffset() is not None:  # naive instants are refused by validate()
            return msgspec.structs.replace(command, expires_at=expires_at.astimezone(UTC))
    return command


def fingerprint(command: Command) -> str:
    """Return the sha256 hex digest of the normalised command, its type included, id excluded.

    Same id + same fingerprint is a retry (replay the original outcome); same id + another
    fingerprint is ``ALREADY_EXISTS``. Take it from the command as the client sent it, before the
    shell fills any server-side default such as a hold's ``expires_at``.
    """
    payload = msgspec.to_builtins(normalise(command))
    assert isinstance(payload, dict)
    payload.pop("command_id")
    payload["type"] = command_type(command)  # the tag is in to_builtins already; make it explicit
    return hashlib.sha256(_FINGERPRINT_SCHEME + _canonical.encode(payload)).hexdigest()


def sweeper_command_id(authorization_id: str) -> str:
    """Return the deterministic command id of the expiry of one hold, shared by every sweeper."""
    digest = hashlib.sha256(authorization_id.encode()).hexdigest()[:40]
    return f"{SYSTEM_ID_PREFIX}expire-{digest}"  # 53 characters of [a-z0-9-]
