"""Commands: validation refuses malformed input naming the field; the fingerprint is exact."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, get_type_hints

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from commands import (
    COMMAND_TYPES,
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
    sweeper_command_id,
    validate,
)
from contracts.errors import InvalidArgument
from contracts.ids import is_valid_id
from contracts.money import MAX_AMOUNT

T0 = datetime(2030, 1, 1, tzinfo=UTC)
VISA_TEST_PAN = "4111111111111111"  # Luhn-valid test number


def _valid(cls: type[Any]) -> Command:
    """One valid instance of each command type."""
    common: dict[str, Any] = {"command_id": "cmd-1", "card_id": "card-1"}
    examples: dict[type[Any], dict[str, Any]] = {
        IssueCard: {
            "cardholder_name": "Ada Lovelace",
            "card_type": "credit",
            "currency": "EUR",
            "credit_limit": 100_00,
            "last4": "4242",
        },
        FreezeCard: {"reason": "lost"},
        UnfreezeCard: {},
        UpdateCreditLimit: {"credit_limit": 0},
        CloseCard: {},
        FundCard: {"amount": 5_00, "currency": "EUR"},
        AdjustBalance: {"amount": -1, "currency": "EUR", "reason": "chargeback", "actor": "ops-7"},
        CreateTransaction: {"merchant_id": "m-1", "amount": 1, "currency": "EUR"},
        AuthorizeTransaction: {
            "merchant_id": "m-1",
            "amount": MAX_AMOUNT,
            "currency": "JPY",
            "expires_at": T0,
            "description": "hotel, order 12345",
        },
        CaptureTransaction: {"authorization_id": "a-1", "amount": 3},
        VoidTransaction: {"authorization_id": "a-1"},
        RefundTransaction: {"original_transaction_id": "t-1", "amount": 3, "currency": "EUR"},
    }
    if cls is ExpireAuthorization:
        return ExpireAuthorization(
            command_id=sweeper_command_id("a-1"), card_id="card-1", authorization_id="a-1"
        )
    command: Command = cls(**common, **examples[cls])
    return command


@pytest.mark.parametrize("cls", COMMAND_TYPES, ids=lambda c: c.__name__)
def test_valid_commands_pass_unchanged(cls: type[Any]) -> None:
    command = _valid(cls)
    assert validate(command) == command


def test_validate_normalises_instants_to_utc() -> None:
    plus_two = datetime(2030, 1, 1, 2, tzinfo=timezone(timedelta(hours=2)))
    command = msgspec.structs.replace(_valid(AuthorizeTransaction), expires_at=plus_two)
    normalised = validate(command)
    assert isinstance(normalised, AuthorizeTransaction)
    assert normalised.expires_at == T0
    assert normalised.expires_at is not None
    assert normalised.expires_at.tzinfo is UTC


BAD: list[tuple[type[Any], dict[str, Any], str]] = [
    (FundCard, {"command_id": "a.b"}, "command_id"),
    (FundCard, {"command_id": "x" * 65}, "command_id"),
    (FundCard, {"command_id": "sweep-1"}, "reserved"),
    (FundCard, {"card_id": ""}, "card_id"),
    (FundCard, {"amount": 0}, "amount"),
    (FundCard, {"amount": -5}, "amount"),
    (FundCard, {"amount": MAX_AMOUNT + 1}, "amount"),
    (FundCard, {"amount": 1.5}, "amount"),
    (FundCard, {"amount": True}, "amount"),
    (FundCard, {"amount": "100"}, "amount"),
    (FundCard, {"currency": "XXX"}, "currency"),
    (FundCard, {"currency": "eur"}, "currency"),
    (AdjustBalance, {"amount": 0}, "amount"),
    (AdjustBalance, {"amount": -MAX_AMOUNT - 1}, "amount"),
    (AdjustBalance, {"reason": "  "}, "reason"),
    (AdjustBalance, {"actor": ""}, "actor"),
    (AdjustBalance, {"actor": "a" * 201}, "actor"),
    (IssueCard, {"cardholder_name": ""}, "cardholder_name"),
    (IssueCard, {"cardholder_name": "n" * 201}, "cardholder_name"),
    (IssueCard, {"cardholder_name": "Ann\nINFO forged log line"}, "cardholder_name"),
    (IssueCard, {"card_type": "gold"}, "card_type"),
    (IssueCard, {"last4": VISA_TEST_PAN}, "last4"),
    (IssueCard, {"last4": "123"}, "last4"),
    (IssueCard, {"last4": "12a4"}, "last4"),
    (IssueCard, {"last4": "١٢٣٤"}, "last4"),  # Arabic-Indic digits are digits, not ASCII
    (IssueCard, {"credit_limit": -1}, "credit_limit"),
    (IssueCard, {"credit_limit": MAX_AMOUNT + 1}, "credit_limit"),
    (IssueCard, {"card_type": "debit", "credit_limit": 1}, "credit_limit"),
    (UpdateCreditLimit, {"credit_limit": -1}, "credit_limit"),
    (CreateTransaction, {"merchant_id": "m 1"}, "merchant_id"),
    (CreateTransaction, {"description": "d" * 201}, "description"),
    (CreateTransaction, {"description": f"card {VISA_TEST_PAN} cvv 123"}, "card number"),
    (CreateTransaction, {"description": "card 4111 1111 1111 1111"}, "card number"),
    (AuthorizeTransaction, {"expires_at": datetime(2030, 1, 1)}, "expires_at"),
    (AuthorizeTransaction, {"expires_at": "2030-01-01T00:00:00Z"}, "expires_at"),
    (CaptureTransaction, {"authorization_id": ""}, "authorization_id"),
    (CaptureTransaction, {"currency": "EURO"}, "currency"),
    (RefundTransaction, {"original_transaction_id": "t/1"}, "original_transaction_id"),
    (ExpireAuthorization, {"command_id": "my-own-id"}, "sweeper_command_id"),
    (FreezeCard, {"reason": "r" * 201}, "reason"),
]


@pytest.mark.parametrize(
    ("cls", "change", "field"), BAD, ids=[f"{c.__name__}-{f}" for c, _, f in BAD]
)
def test_malformed_commands_are_refused_naming_the_field(
    cls: type[Any], change: dict[str, Any], field: str
) -> None:
    command = msgspec.structs.replace(_valid(cls), **change)
    with pytest.raises(InvalidArgument, match=field) as refused:
        validate(command)
    assert "\n" not in str(refused.value)


def test_a_stray_pan_or_cvv_field_is_refused_when_decoding() -> None:
    payload = b'{"type":"issue_card","command_id":"c","card_id":"c","cardholder_name":"A",'
    payload += b'"card_type":"debit","currency":"USD","last4":"4242","cvv":"123"}'
    with pytest.raises(msgspec.ValidationError, match="cvv"):
        msgspec.json.decode(payload, type=Command)


def test_not_a_command_is_refused() -> None:
    with pytest.raises(InvalidArgument):
        validate("purchase")  # type: ignore[arg-type]


# --- fingerprint --------------------------------------------------------------------------------

ids = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)
instants = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2100, 1, 1),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=-5))]),
)


def _field_strategy(annotation: Any) -> st.SearchStrategy[Any]:
    if annotation is int:
        return st.integers(-(10**18), 10**18)
    if annotation is str:
        return st.text(max_size=30)
    return st.from_type(annotation)


def _commands(cls: type[Any]) -> st.SearchStrategy[Any]:
    hints = get_type_hints(cls)
    fields = {f.name: _field_strategy(hints[f.name]) for f in msgspec.structs.fields(cls)}
    if "expires_at" in fields:
        fields["expires_at"] = st.none() | instants
    return st.builds(cls, **fields)


def _changed(value: Any) -> Any:
    """Return a value of the same kind that differs from ``value``."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, datetime):
        return value + timedelta(microseconds=1)
    assert value is None
    return T0


@pytest.mark.parametrize("cls", COMMAND_TYPES, ids=lambda c: c.__name__)
@given(data=st.data(), other_id=ids)
def test_fingerprint_ignores_only_the_id(
    cls: type[Any], data: st.DataObject, other_id: str
) -> None:
    command = data.draw(_commands(cls))
    original = fingerprint(command)
    assert fingerprint(msgspec.structs.replace(command, command_id=other_id)) == original
    for field in msgspec.structs.fields(cls):
        if field.name == "command_id":
            continue
        changed = msgspec.structs.replace(
            command, **{field.name: _changed(getattr(command, field.name))}
        )
        assert fingerprint(changed) != original, field.name


def test_fingerprint_includes_the_command_type() -> None:
    void = VoidTransaction(command_id="x", card_id="c", authorization_id="a")
    expire = ExpireAuthorization(command_id="x", card_id="c", authorization_id="a")
    unfreeze = UnfreezeCard(command_id="x", card_id="c")
    close = CloseCard(command_id="x", card_id="c")
    assert fingerprint(void) != fingerprint(expire)
    assert fingerprint(unfreeze) != fingerprint(close)


def test_fingerprint_is_the_same_for_one_instant_in_any_offset() -> None:
    command = _valid(AuthorizeTransaction)
    plus_two = T0.astimezone(timezone(timedelta(hours=2)))
    assert fingerprint(msgspec.structs.replace(command, expires_at=plus_two)) == fingerprint(
        command
    )


def test_fingerprint_counts_an_omitted_default_as_the_default() -> None:
    implicit = CreateTransaction(
        command_id="x", card_id="c", merchant_id="m", amount=1, currency="USD"
    )
    explicit = msgspec.structs.replace(implicit, description="")
    assert fingerprint(implicit) == fingerprint(explicit)


def test_fingerprint_is_stable_across_releases() -> None:
    # Pinned: fingerprints live in outcome markers forever. If this fails, old retries would be
    # answered ALREADY_EXISTS: do not change tags, field names or the canonical encoding.
    command = CreateTransaction(
        command_id="tx-1", card_id="card-1", merchant_id="m-1", amount=1234, currency="USD"
    )
    canonical = (
        b'{"amount":1234,"card_id":"card-1","currency":"USD","merchant_id":"m-1","type":"purchase"}'
    )
    expected = hashlib.sha256(b"jetledger.command.v1\n" + canonical).hexdigest()
    assert fingerprint(command) == expected
    assert expected == "05b54d8007ad8528c425435ad5f14cfbcc3db1b985d456ca3807df4517f44f31"


@given(ids)
def test_sweeper_command_ids_are_valid_deterministic_and_reserved(authorization_id: str) -> None:
    command_id = sweeper_command_id(authorization_id)
    assert is_valid_id(command_id)
    assert len(command_id) <= 64
    assert command_id == sweeper_command_id(authorization_id)
    assert command_id.startswith("sweep-")
    assert sweeper_command_id(authorization_id + "x") != command_id


def test_command_types_are_named_by_their_tags() -> None:
    assert command_type(_valid(CreateTransaction)) == "purchase"
    assert len({cls.__struct_config__.tag for cls in COMMAND_TYPES}) == len(COMMAND_TYPES)
