"""The COPY payloads: formatted without per-field escaping only when that is provably the same."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from projections.ledger import store
from projections.ledger.rows import Rows

AT = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
text = st.text(alphabet=st.sampled_from("ab-_\t\n\r\\N ẞ"), max_size=6)


def _escaped(rows: Rows) -> list[bytes]:
    return [
        "".join(map(store._entry_line, rows.entries)).encode(),
        "".join(map(store._transaction_line, rows.transactions)).encode(),
        "".join(map(store._card_change_line, rows.card_changes)).encode(),
    ]


@given(ids=st.lists(text, min_size=3, max_size=3), free=text, parent=st.none() | text)
def test_payloads_equal_the_fully_escaped_ones(
    ids: list[str], free: str, parent: str | None
) -> None:
    rows = Rows()
    rows.entries.append(("S", 7, 0, ids[0], ids[1], ids[2], -5, "USD", "debit", 2**70, "t.v1", AT))
    rows.transactions.append(
        ("S", 7, ids[0], "purchase", parent, ids[1], ids[2], 5, "USD", free, free, free,
         "t.v1", AT, None if parent is None else AT)
    )  # fmt: skip
    rows.card_changes.append(("S", 7, ids[2], "USD", -5, None if parent else 9, AT))
    got = [payload for _, _, payload in store.payloads(rows)]
    assert got == _escaped(rows)


def test_a_tab_in_a_value_is_escaped_not_a_column() -> None:
    rows = Rows()
    rows.transactions.append(
        ("S", 1, "t1", "purchase", None, "c1", "m1", 5, "USD", "", "", "a\tb\\N", "t.v1", AT, None)
    )
    ((_, _, payload),) = store.payloads(rows)
    assert payload.count(b"\t") == 14
    assert b"a\\tb\\\\N" in payload
