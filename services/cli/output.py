"""What the CLI prints: rich tables for people, protobuf JSON for scripts, exact money both ways."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal, InvalidOperation
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from rich.console import Console

from contracts.errors import InvalidArgument
from contracts.money import CURRENCY_EXPONENTS, check_currency, format_minor


def console() -> Console:
    """The console for results (stdout); errors go to stderr through ``services.cli.main``."""
    return Console(highlight=False)


def as_dict(message: Message) -> dict[str, Any]:
    """A protobuf message in its canonical JSON form, field names as in the ``.proto``."""
    return MessageToDict(message, preserving_proto_field_name=True)


def print_json(value: Message | dict[str, Any] | list[Any]) -> None:
    """Print a message (or plain data) as indented JSON on stdout."""
    data = as_dict(value) if isinstance(value, Message) else value
    print(json.dumps(data, indent=2, sort_keys=False, default=str))


def money(amount: int, currency: str) -> str:
    """Minor units for people, e.g. ``12.50 USD``."""
    return format_minor(amount, currency) if currency else str(amount)


def parse_amount(text: str, currency: str, *, signed: bool = False) -> int:
    """Read ``12.50`` as exact minor units of ``currency`` (1250 for USD); never via a float."""
    check_currency(currency)
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise InvalidArgument(f"amount must be a number like 12.50, got {text!r:.40}") from None
    if not value.is_finite():
        raise InvalidArgument(f"amount must be a number like 12.50, got {text!r:.40}")
    exponent = CURRENCY_EXPONENTS[currency]
    minor = value.scaleb(exponent)
    if minor != minor.to_integral_value():
        raise InvalidArgument(
            f"amount {text} has more decimals than {currency} allows ({exponent})"
        )
    if not signed and minor <= 0:
        raise InvalidArgument(f"amount must be positive, got {text}")
    if minor == 0:
        raise InvalidArgument("amount must not be zero")
    return int(minor)


def new_id(prefix: str) -> str:
    """A fresh idempotency key, e.g. ``tx-3f9c0a1b2c4d`` (pass ``--id`` to choose your own)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def position(stream: str, sequence: int) -> str:
    """A stream position for people: ``LEDGER:42``."""
    return f"{stream}:{sequence}"
