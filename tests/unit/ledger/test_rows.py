"""The projector's pure core and the independent fold agree, and poison is refused."""

from __future__ import annotations

import pytest

from contracts.events import Leg, TransactionCreated
from projections.ledger.fold import StreamFold
from projections.ledger.queries import TransactionView, derive_status
from projections.ledger.rows import BalanceBook, InvalidEvent, Projection
from tests.ledgerkit import T0, busy_history


def test_projection_and_fold_agree_on_every_account() -> None:
    history = busy_history(cards=3, rounds=7)
    book = BalanceBook()
    projection = Projection(book)
    fold = StreamFold("S")
    for seq, event in enumerate(history.events, start=1):
        projection.apply(event, "S", seq)
        fold.feed(seq, event)
    assert set(book.balances) == set(fold.accounts)
    for key, bal in book.balances.items():
        folded = fold.accounts[key]
        assert (bal.posted, bal.pending, bal.available) == (
            folded.posted,
            folded.pending,
            folded.available,
        )
    assert all(total == 0 for total in fold.totals().values())
    # one entry per leg, keyed by (sequence, leg), each carrying its account's running balance
    legs = [
        (seq, i)
        for seq, e in enumerate(history.events, 1)
        for i, _ in enumerate(getattr(e, "legs", ()))
    ]
    assert [(r[1], r[2]) for r in projection.rows.entries] == legs


def test_unbalanced_legs_are_poison() -> None:
    history = busy_history(cards=1, rounds=0)
    projection = Projection(BalanceBook())
    for seq, event in enumerate(history.events, start=1):
        projection.apply(event, "S", seq)
    bad = TransactionCreated(
        card_id="c0", command_id="x", at=T0, merchant_id="m", amount=5, currency="USD",
        legs=(Leg("card-c0", -5, "USD"), Leg("merchant-m", 4, "USD")),
    )  # fmt: skip
    with pytest.raises(InvalidEvent, match="sum to zero"):
        projection.apply(bad, "S", 99)


def _tx(kind: str, amount: int, *children: tuple[str, int]) -> TransactionView:
    view = TransactionView("t", kind, None, "c", "m", amount, "USD", "", "", "", T0, None, "S", 1)
    view.children = [
        TransactionView(f"k{i}", k, "t", "c", "m", a, "USD", "", "", "", T0, None, "S", 2 + i)
        for i, (k, a) in enumerate(children)
    ]
    return view


@pytest.mark.parametrize(
    ("view", "status"),
    [
        (_tx("authorization", 100), "authorized"),
        (_tx("authorization", 100, ("capture", 40)), "partially_captured"),
        (_tx("authorization", 100, ("capture", 100)), "captured"),
        (_tx("authorization", 100, ("capture", 40), ("void", 60)), "voided"),
        (_tx("authorization", 100, ("expiry", 100)), "expired"),
        (_tx("purchase", 100), "posted"),
        (_tx("purchase", 100, ("refund", 30)), "partially_refunded"),
        (_tx("capture", 100, ("refund", 30), ("refund", 70)), "refunded"),
        (_tx("decline", 100), "declined"),
    ],
)
def test_transaction_status(view: TransactionView, status: str) -> None:
    assert derive_status(view) == status
