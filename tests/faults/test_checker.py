"""The campaign's checker can fail: each kind of damage, made by hand, is reported."""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

from tests.faults.checker import Findings, StreamMessage, Tables, check
from tests.faults.workload import Op

STREAM = "S"
PREFIX = "p."


def card_issued(seq: int, card: str, limit: int = 100) -> StreamMessage:
    body = {"type": "card.issued.v1", "card_id": card, "command_id": f"issue-{card}"}
    return StreamMessage(seq, f"{PREFIX}card.{card}", {**body, "credit_limit": limit})


def purchase(seq: int, card: str, command_id: str, amount: int) -> StreamMessage:
    legs = [
        {"account_id": f"card-{card}", "amount": -amount, "currency": "USD"},
        {"account_id": "merchant-m", "amount": amount, "currency": "USD"},
    ]
    body: dict[str, Any] = {
        "type": "transaction.created.v1",
        "card_id": card,
        "command_id": command_id,
        "amount": amount,
        "legs": legs,
    }
    return StreamMessage(seq, f"{PREFIX}card.{card}", body)


def op(op_id: str, seq: int, kind: str = "purchase", status: str = "OK") -> Op:
    return Op(op_id, kind, "c1", "CreateTransaction", None, 0.0, 0.0, status, "accepted", seq)


def healthy() -> tuple[list[Op], list[StreamMessage], list[StreamMessage], Tables]:
    source = [card_issued(1, "c1"), purchase(2, "c1", "buy-1", 30)]
    log = [op("issue-c1", 1, kind="issue"), op("buy-1", 2)]
    entries = {(2, 0): ("card-c1", -30, -30), (2, 1): ("merchant-m", 30, 30)}
    derived = [
        StreamMessage(
            1,
            "p.ledger.entry_created.card-c1",
            {"entry_id": "S:2:0", "amount": -30, "balance_after": -30},
        ),
        StreamMessage(
            2,
            "p.ledger.entry_created.merchant-m",
            {"entry_id": "S:2:1", "amount": 30, "balance_after": 30},
        ),
    ]
    tables = Tables(
        ledger_tx=Counter({2: 1}),
        entries=entries,
        entry_dups=0,
        balances={"card-c1": (-30, 0), "merchant-m": (30, 0)},
        ledger_position=2,
        relay_position=2,
        notifications=Counter({2: 1}),
        notification_cards={"S:2": ("c1", 2)},
        notify_position=2,
    )
    return log, source, derived, tables


def run(
    log: list[Op], source: list[StreamMessage], derived: list[StreamMessage], tables: Tables
) -> Findings:
    return check(log, source, derived, tables, STREAM, PREFIX, (2, 2), {"k": {"S:2"}}, {"c1"})


def test_a_healthy_run_has_no_findings() -> None:
    assert run(*healthy()).ok


def test_an_acknowledged_command_missing_from_the_stream_is_lost() -> None:
    log, source, derived, tables = healthy()
    log.append(op("buy-2", 3))
    assert run(log, source, derived, tables).lost == {"buy-2"}


def test_a_command_recorded_twice_is_duplicated() -> None:
    log, source, derived, tables = healthy()
    source.append(purchase(3, "c1", "buy-1", 30))
    found = run(log, source, derived, tables)
    assert "buy-1" in found.duplicated


def test_a_projection_that_skipped_an_event_is_caught() -> None:
    log, source, derived, tables = healthy()
    tables = dataclasses.replace(tables, ledger_tx=Counter(), entries={}, notifications=Counter())
    found = run(log, source, derived, tables)
    assert "buy-1" in found.unprojected
    assert not found.lost
    assert any("derived stream has" in what for _, what in found.anomalies)


def test_inconsistent_answers_to_one_id_are_an_anomaly() -> None:
    log, source, derived, tables = healthy()
    log[1].retries.append(("FAILED_PRECONDITION", "declined", 9))
    assert any("inconsistent" in what for _, what in run(log, source, derived, tables).anomalies)


def test_an_unbalanced_ledger_and_a_card_beyond_its_limit_are_caught() -> None:
    log, source, derived, tables = healthy()
    source.append(purchase(3, "c1", "buy-3", 500))
    log.append(op("buy-3", 3))
    tables.balances["card-c1"] = (-530, 0)
    found = run(log, source, derived, tables)
    whats = [what for _, what in found.anomalies]
    assert any("beyond its limit" in w for w in whats)
    assert any("merchant-m: ledger posted 30, fold 530" in w for w in whats)


def test_an_entry_published_twice_or_never_is_caught() -> None:
    log, source, derived, tables = healthy()
    whats = [w for _, w in run(log, source, [*derived, derived[0]], tables).anomalies]
    assert any("more than once" in w for w in whats)
    whats = [w for _, w in run(log, source, derived[:1], tables).anomalies]
    assert any("misses 1" in w for w in whats)


def test_an_undelivered_webhook_is_caught() -> None:
    log, source, derived, tables = healthy()
    source.append(StreamMessage(0, f"{PREFIX}notify.card.c1.webhook_set", {}))
    found = check(log, source, derived, tables, STREAM, PREFIX, (2, 2), {}, {"c1"})
    assert any("never delivered" in w for _, w in found.anomalies)
