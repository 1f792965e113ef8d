"""Exact money: integer minor units and an ISO-4217 currency code. No floats anywhere."""

from __future__ import annotations

from typing import Final

from contracts.errors import InvalidArgument

# Largest amount a single command may carry, in minor units. Below 2**53 so that JSON clients that
# parse numbers as doubles (JavaScript) still read every amount exactly; ample for card payments.
MAX_AMOUNT: Final = 10**15

# Largest posted balance a card may hold, in minor units: a funding, a positive adjustment or a
# refund that would carry a card beyond it is declined ``balance_limit_exceeded``. It keeps every
# card figure (posted, available = posted + limit − pending) far inside int64 wherever it travels
# (events, Postgres bigint, gRPC int64); house and merchant accounts, which sum many cards, are
# carried as exact numerics instead (docs/ledger.md).
MAX_CARD_BALANCE: Final = 10**17

# Active ISO-4217 codes and their minor-unit exponents (funds codes and metals excluded).
CURRENCY_EXPONENTS: Final[dict[str, int]] = {
    "AED": 2, "AFN": 2, "ALL": 2, "AMD": 2, "ANG": 2, "AOA": 2, "ARS": 2, "AUD": 2, "AWG": 2,
    "AZN": 2, "BAM": 2, "BBD": 2, "BDT": 2, "BGN": 2, "BHD": 3, "BIF": 0, "BMD": 2, "BND": 2,
    "BOB": 2, "BRL": 2, "BSD": 2, "BTN": 2, "BWP": 2, "BYN": 2, "BZD": 2, "CAD": 2, "CDF": 2,
    "CHF": 2, "CLP": 0, "CNY": 2, "COP": 2, "CRC": 2, "CUP": 2, "CVE": 2, "CZK": 2, "DJF": 0,
    "DKK": 2, "DOP": 2, "DZD": 2, "EGP": 2, "ERN": 2, "ETB": 2, "EUR": 2, "FJD": 2, "FKP": 2,
    "GBP": 2, "GEL": 2, "GHS": 2, "GIP": 2, "GMD": 2, "GNF": 0, "GTQ": 2, "GYD": 2, "HKD": 2,
    "HNL": 2, "HTG": 2, "HUF": 2, "IDR": 2, "ILS": 2, "INR": 2, "IQD": 3, "IRR": 2, "ISK": 0,
    "JMD": 2, "JOD": 3, "JPY": 0, "KES": 2, "KGS": 2, "KHR": 2, "KMF": 0, "KPW": 2, "KRW": 0,
    "KWD": 3, "KYD": 2, "KZT": 2, "LAK": 2, "LBP": 2, "LKR": 2, "LRD": 2, "LSL": 2, "LYD": 3,
    "MAD": 2, "MDL": 2, "MGA": 2, "MKD": 2, "MMK": 2, "MNT": 2, "MOP": 2, "MRU": 2, "MUR": 2,
    "MVR": 2, "MWK": 2, "MXN": 2, "MYR": 2, "MZN": 2, "NAD": 2, "NGN": 2, "NIO": 2, "NOK": 2,
    "NPR": 2, "NZD": 2, "OMR": 3, "PAB": 2, "PEN": 2, "PGK": 2, "PHP": 2, "PKR": 2, "PLN": 2,
    "PYG": 0, "QAR": 2, "RON": 2, "RSD": 2, "RUB": 2, "RWF": 0, "SAR": 2, "SBD": 2, "SCR": 2,
    "SDG": 2, "SEK": 2, "SGD": 2, "SHP": 2, "SLE": 2, "SOS": 2, "SRD": 2, "SSP": 2, "STN": 2,
    "SYP": 2, "SZL": 2, "THB": 2, "TJS": 2, "TMT": 2, "TND": 3, "TOP": 2, "TRY": 2, "TTD": 2,
    "TWD": 2, "TZS": 2, "UAH": 2, "UGX": 0, "USD": 2, "UYU": 2, "UZS": 2, "VES": 2, "VND": 0,
    "VUV": 0, "WST": 2, "XAF": 0, "XCD": 2, "XOF": 0, "XPF": 0, "YER": 2, "ZAR": 2, "ZMW": 2,
    "ZWG": 2,
}  # fmt: skip

CURRENCIES: Final = frozenset(CURRENCY_EXPONENTS)


def check_currency(code: str, field: str = "currency") -> str:
    """Return ``code`` if it is an active ISO-4217 code, else raise ``InvalidArgument``."""
    if code not in CURRENCIES:
        raise InvalidArgument(f"{field} must be an ISO-4217 code such as USD, got {code!r:.16}")
    return code


def check_amount(amount: int, field: str = "amount") -> int:
    """Return ``amount`` if it is a positive integer number of minor units ≤ ``MAX_AMOUNT``."""
    if type(amount) is not int:  # bool is an int subclass; floats are never money
        raise InvalidArgument(f"{field} must be an integer number of minor units")
    if not 0 < amount <= MAX_AMOUNT:
        raise InvalidArgument(
            f"{field} must be between 1 and {MAX_AMOUNT} minor units, got {amount}"
        )
    return amount


def format_minor(amount: int, currency: str) -> str:
    """Render minor units for people, e.g. ``format_minor(-1234, "USD") == "-12.34 USD"``."""
    exponent = CURRENCY_EXPONENTS.get(currency, 2)
    sign = "-" if amount < 0 else ""
    whole, frac = divmod(abs(amount), 10**exponent)
    return (
        f"{sign}{whole}.{frac:0{exponent}d} {currency}" if exponent else f"{sign}{whole} {currency}"
    )
