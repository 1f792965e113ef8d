"""Validation of client-chosen ids: they become NATS subject tokens, so the alphabet is closed.

A client id must also never be a card number (PCI DSS: no full PAN stored anywhere): an id holding
a Luhn-valid run of 13–19 digits is refused by ``check_client_id``. ``check_id`` checks the format
only, for ids we generate ourselves (a sweeper's hex digest may hold such a run by chance).
"""

from __future__ import annotations

import re
from typing import Final

from contracts.errors import InvalidArgument

ID_PATTERN: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Account ids are "<kind>-<id>" (see contracts.accounts), so they may be a little longer than ids.
ACCOUNT_ID_PATTERN: Final = re.compile(r"(card|merchant|house)-[A-Za-z0-9_-]{1,64}")
# A run of 13–19 digits, possibly grouped by spaces or dashes: the shape of a card number.
_DIGIT_RUN: Final = re.compile(r"[0-9](?:[ -]?[0-9]){12,}")


def is_valid_id(value: str) -> bool:
    """Tell whether ``value`` is a well-formed id (``^[A-Za-z0-9_-]{1,64}$``)."""
    return ID_PATTERN.fullmatch(value) is not None


def check_id(value: str, field: str = "id") -> str:
    """Return ``value`` if it is a well-formed id, else raise ``InvalidArgument`` naming the field."""
    if not isinstance(value, str) or not is_valid_id(value):
        raise InvalidArgument(f"{field} must match ^[A-Za-z0-9_-]{{1,64}}$, got {value!r:.80}")
    return value


def check_account_id(value: str, field: str = "account_id") -> str:
    """Return ``value`` if it is a well-formed account id (``card-…``, ``merchant-…``, ``house-…``)."""
    if not isinstance(value, str) or ACCOUNT_ID_PATTERN.fullmatch(value) is None:
        raise InvalidArgument(
            f"{field} must be card-<id>, merchant-<id> or house-<id>, got {value!r:.80}"
        )
    return value


def check_client_id(value: str, field: str = "id") -> str:
    """``check_id``, and refuse an id that holds a card number (a Luhn-valid 13–19 digit run)."""
    check_id(value, field)
    if contains_card_number(value):
        raise InvalidArgument(f"{field} must not contain a card number")
    return value


def contains_card_number(text: str) -> bool:
    """Tell whether ``text`` holds a Luhn-valid run of 13–19 digits (a plausible PAN)."""
    for match in _DIGIT_RUN.finditer(text):
        digits = [int(ch) for ch in match.group() if ch.isdigit()]
        for length in range(13, 20):
            for start in range(len(digits) - length + 1):
                if _luhn_ok(digits[start : start + length]):
                    return True
    return False


def needs_masking(text: str) -> bool:
    """Tell whether ``mask_card_numbers`` would change ``text`` (one scan, no allocation)."""
    return _DIGIT_RUN.search(text) is not None


def mask_card_numbers(text: str) -> str:
    """Replace every run of 13+ digits (grouped or not) by ``****`` and its last four digits.

    Deliberately wider than ``contains_card_number`` (no Luhn check): what is shown to people
    (notifications, logs, webhook bodies) masks anything shaped like a card number.
    """
    return _DIGIT_RUN.sub(lambda m: "****" + re.sub(r"\D", "", m.group())[-4:], text)


def _luhn_ok(digits: list[int]) -> bool:
    total = 0
    for position, digit in enumerate(reversed(digits)):
        if position % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0
