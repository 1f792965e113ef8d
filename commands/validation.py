"""Validation of commands: malformed input is refused with ``InvalidArgument`` before any decision.

Every check is independent of card state, so a command that passes here can only be accepted,
declined (a recorded outcome) or refused for a missing card; a command that fails here changes
nothing. Messages are one line and name the offending field.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import datetime
from typing import Final, get_args

import msgspec

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
    normalise,
    sweeper_command_id,
)
from contracts.errors import InvalidArgument
from contracts.events import CardType
from contracts.ids import check_client_id, contains_card_number
from contracts.money import MAX_AMOUNT, check_amount, check_currency

MAX_TEXT: Final = 200  # characters, for names, descriptions, reasons and actors
CARD_TYPES: Final[tuple[str, ...]] = get_args(CardType)

_LAST4: Final = re.compile(r"[0-9]{4}")


def validate(command: Command) -> Command:
    """Return the normalised command, or raise ``InvalidArgument`` naming the first bad field."""
    if not isinstance(command, COMMAND_TYPES):
        raise InvalidArgument(f"not a command: {type(command).__name__}")
    _check_types(command)
    if isinstance(command, ExpireAuthorization):
        check_client_id(command.authorization_id, "authorization_id")
        if command.command_id != sweeper_command_id(command.authorization_id):
            raise InvalidArgument("command_id of expire_authorization must be sweeper_command_id()")
    else:
        check_client_id(command.command_id, "command_id")
        if command.command_id.startswith(SYSTEM_ID_PREFIX):
            raise InvalidArgument(f"command_id must not start with {SYSTEM_ID_PREFIX!r} (reserved)")
    check_client_id(command.card_id, "card_id")
    match command:
        case IssueCard():
            _check_text(command.cardholder_name, "cardholder_name", required=True)
            if command.card_type not in CARD_TYPES:
                raise InvalidArgument(f"card_type must be one of {', '.join(CARD_TYPES)}")
            check_currency(command.currency)
            _check_limit(command.credit_limit)
            if command.card_type != "credit" and command.credit_limit != 0:
                raise InvalidArgument("credit_limit must be 0 for debit and prepaid cards")
            if _LAST4.fullmatch(command.last4) is None:
                raise InvalidArgument("last4 must be exactly 4 digits (never a full card number)")
        case FreezeCard():
            _check_text(command.reason, "reason")
        case UnfreezeCard() | CloseCard():
            pass
        case UpdateCreditLimit():
            _check_limit(command.credit_limit)
        case FundCard():
            check_amount(command.amount)
            check_currency(command.currency)
        case AdjustBalance():
            if command.amount == 0 or abs(command.amount) > MAX_AMOUNT:
                raise InvalidArgument(
                    f"amount must be nonzero and at most {MAX_AMOUNT} minor units either way"
                )
            check_currency(command.currency)
            _check_text(command.reason, "reason", required=True)
            _check_text(command.actor, "actor", required=True)
        case CreateTransaction() | AuthorizeTransaction():
            check_client_id(command.merchant_id, "merchant_id")
            check_amount(command.amount)
            check_currency(command.currency)
            _check_text(command.description, "description")
            if isinstance(command, AuthorizeTransaction) and command.expires_at is not None:
                _check_aware(command.expires_at, "expires_at")
        case CaptureTransaction():
            check_client_id(command.authorization_id, "authorization_id")
            check_amount(command.amount)
            _check_optional_currency(command.currency)
        case VoidTransaction():
            check_client_id(command.authorization_id, "authorization_id")
        case RefundTransaction():
            check_client_id(command.original_transaction_id, "original_transaction_id")
            check_amount(command.amount)
            _check_optional_currency(command.currency)
        case ExpireAuthorization():
            pass
    return normalise(command)


def _check_types(command: Command) -> None:
    """Check every field against its annotation (structs do not check types on construction)."""
    try:
        # datetimes pass through as objects, so a string where an instant belongs is refused
        builtins = msgspec.to_builtins(command, builtin_types=(datetime,))
        msgspec.convert(builtins, type(command), builtin_types=(datetime,))
    except (msgspec.ValidationError, TypeError) as exc:
        raise InvalidArgument(f"malformed {type(command).__name__}: {exc}") from None


def _check_text(value: str, field: str, *, required: bool = False) -> None:
    if required and not value.strip():
        raise InvalidArgument(f"{field} is required")
    if len(value) > MAX_TEXT:
        raise InvalidArgument(f"{field} must be at most {MAX_TEXT} characters, got {len(value)}")
    # Control characters would forge log lines and break notifications; card numbers must never be
    # stored anywhere (PCI DSS), and free text is where a careless client would put one.
    if any(unicodedata.category(ch) == "Cc" for ch in value):
        raise InvalidArgument(f"{field} must not contain control characters")
    if contains_card_number(value):
        raise InvalidArgument(f"{field} must not contain a card number")


def _check_limit(limit: int) -> None:
    if not 0 <= limit <= MAX_AMOUNT:
        raise InvalidArgument(f"credit_limit must be between 0 and {MAX_AMOUNT} minor units")


def _check_optional_currency(code: str) -> None:
    if code:
        check_currency(code)


def _check_aware(value: datetime, field: str) -> None:
    if value.utcoffset() is None:
        raise InvalidArgument(f"{field} must carry a timezone (naive datetimes are ambiguous)")
