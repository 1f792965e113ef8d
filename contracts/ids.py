"""Validation of client-chosen ids: they become NATS subject tokens, so the alphabet is closed."""

from __future__ import annotations

import re
from typing import Final

from contracts.errors import InvalidArgument

ID_PATTERN: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Account ids are "<kind>-<id>" (see contracts.accounts), so they may be a little longer than ids.
ACCOUNT_ID_PATTERN: Final = re.compile(r"(card|merchant|house)-[A-Za-z0-9_-]{1,64}")


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
