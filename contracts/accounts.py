"""Ledger account ids: every card, merchant and house account is named ``<kind>-<id>``.

Balances are signed integers in minor units. A positive balance is money the ledger owes the
account holder; legs of one transaction always sum to zero per currency, so the sum of every
balance per currency is zero too (house accounts included).
"""

from __future__ import annotations

from typing import Final

# House accounts: the other side of money that enters or leaves the card network.
FUNDING: Final = "house-funding"  # top-ups and repayments come from here
ADJUSTMENTS: Final = "house-adjustments"  # operator corrections are booked against this
HOUSE_ACCOUNTS: Final = frozenset({FUNDING, ADJUSTMENTS})


def card_account(card_id: str) -> str:
    """Return the ledger account id of a card."""
    return f"card-{card_id}"


def merchant_account(merchant_id: str) -> str:
    """Return the ledger account id of a merchant."""
    return f"merchant-{merchant_id}"
