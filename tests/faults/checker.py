"""The campaign's checker: what the system must have done, proven from the outside.

It reads the source and derived streams with its own NATS consumer, the projections' tables with
plain SQL, and the workload's log; it imports no production decision or projection code (its fold
of balances is its own). Checks:

- every decided command is in the stream exactly once (found by the command id its card event
  carries), with the sequence the caller was told, and in every projection exactly once (ledger
  transactions and entries, notifications); a refused command left nothing;
- every command with an unknown outcome, retried with the same id, got one consistent answer
  (the retries, and GetCommandOutcome where the API has it);
- Σ of all balances = 0; no card ever beyond its limit (posted + limit − pending ≥ 0 after every
  event); the ledger's balances == this independent fold, entries == the events' legs;
- the derived stream holds exactly the entries table (by entry id, no duplicates) and every
  projection is at the stream head;
- every notification of a card with a webhook was delivered at least once, every delivery of one
  notification under one idempotency key, and no key shared by two notifications.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import nats
import psycopg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from tests.faults.workload import DECIDED, REJECTED, Op

MONEY_TYPES = {
    "card.funded.v1",
    "card.adjusted.v1",
    "transaction.created.v1",
    "transaction.authorized.v1",
    "transaction.captured.v1",
    "transaction.voided.v1",
    "transaction.expired.v1",
    "transaction.refunded.v1",
    "transaction.declined.v1",
}


@dataclass
class StreamMessage:
    sequence: int
    subject: str
    body: dict[str, Any]


@dataclass
class Findings:
    """What the checker found: per command id and global anomalies (each a line of text)."""

    lost: set[str] = field(default_factory=set)
    duplicated: set[str] = field(default_factory=set)
    anomalies: list[tuple[str, str]] = field(default_factory=list)  # (command id or "", what)

    def anomaly(self, what: str, op_id: str = "") -> None:
        self.anomalies.append((op_id, what))

    @property
    def ok(self) -> bool:
        return not self.lost and not self.duplicated and not self.anomalies


async def read_stream(nats_url: str, stream: str, subjects: str) -> list[StreamMessage]:
    """Every message of ``stream`` under ``subjects``, in order, through our own consumer."""
    nc = await nats.connect(nats_url.split(","), connect_timeout=5)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        last = int(info.state.last_seq)
        out: list[StreamMessage] = []
        if last == 0:
            return out
        sub = await js.pull_subscribe(
            subjects,
            stream=stream,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.ALL,
                ack_policy=AckPolicy.NONE,
                inactive_threshold=60,
            ),
        )
        seen = 0
        while seen < last:
            try:
                batch = await sub.fetch(1000, timeout=2)
            except nats.errors.TimeoutError:
                break
            for msg in batch:
                seen = msg.metadata.sequence.stream
                out.append(StreamMessage(seen, msg.subject, json.loads(msg.data)))
        await sub.unsubscribe()
        return out
    finally:
        await nc.close()


@dataclass
class Tables:
    """The projections' rows the checker needs, by plain SQL."""

    ledger_tx: Counter[int]  # stream_sequence -> rows in ledger.transactions
    entries: dict[tuple[int, int], tuple[str, int, int]]  # (seq, leg) -> (account, amount, after)
    entry_dups: int
    balances: dict[str, tuple[int, int]]  # account -> (posted, pending)
    ledger_position: int
    relay_position: int
    notifications: Counter[int]  # sequence -> rows with sub 0
    notification_cards: dict[str, tuple[str, int]]  # notification id -> (card, sequence)
    notify_position: int


def read_tables(database_url: str, stream: str) -> Tables:
    with psycopg.connect(database_url, autocommit=True) as conn:
        tx_rows = conn.execute(
            "SELECT stream_sequence, transaction_id FROM ledger.transactions WHERE stream = %s",
            (stream,),
        ).fetchall()
        ledger_tx: Counter[int] = Counter(int(s) for s, _ in tx_rows)
        entries: dict[tuple[int, int], tuple[str, int, int]] = {}
        dups = 0
        for seq, leg, account, amount, after in conn.execute(
            "SELECT stream_sequence, leg_index, account_id, amount, balance_after"
            " FROM ledger.entries WHERE stream = %s",
            (stream,),
        ):
            key = (int(seq), int(leg))
            dups += key in entries
            entries[key] = (str(account), int(amount), int(after))
        balances = {
            str(a): (int(p), int(q))
            for a, p, q in conn.execute("SELECT account_id, posted, pending FROM ledger.balances")
        }
        position = conn.execute(
            "SELECT coalesce(max(last_sequence), 0) FROM ledger.tracking WHERE stream = %s",
            (stream,),
        ).fetchone()
        relay = conn.execute(
            "SELECT coalesce(max(last_sequence), 0) FROM ledger_ops.relay_position"
            " WHERE stream = %s",
            (stream,),
        ).fetchone()
        notes = conn.execute(
            "SELECT notification_id, card_id, sequence, sub FROM notify.notifications"
            " WHERE stream = %s",
            (stream,),
        ).fetchall()
        notify_position = conn.execute(
            "SELECT coalesce(max(last_sequence), 0) FROM notify.tracking WHERE stream = %s",
            (stream,),
        ).fetchone()
    return Tables(
        ledger_tx=ledger_tx,
        entries=entries,
        entry_dups=dups,
        balances=balances,
        ledger_position=int(position[0]) if position else 0,
        relay_position=int(relay[0]) if relay else 0,
        notifications=Counter(int(seq) for _, _, seq, sub in notes if int(sub) == 0),
        notification_cards={str(n): (str(c), int(seq)) for n, c, seq, _ in notes},
        notify_position=int(notify_position[0]) if notify_position else 0,
    )


def final_answer(op: Op) -> tuple[str, str, int]:
    """The command's decided answer: the first decided one, original or retried."""
    if op.decided:
        return op.status, op.outcome, op.sequence
    for answer in op.retries:
        if answer[0] in DECIDED or answer[0] in REJECTED:
            return answer
    return op.status, op.outcome, op.sequence


def check(
    log: list[Op],
    source: list[StreamMessage],
    derived: list[StreamMessage],
    tables: Tables,
    stream: str,
    prefix: str,
    heads: tuple[int, int],
    deliveries: dict[str, set[str]] | None = None,
    webhook_cards: set[str] | None = None,
) -> Findings:
    found = Findings()
    card_events = [
        m for m in source if m.subject.startswith(f"{prefix}card.") and "command_id" in m.body
    ]
    by_command: dict[str, list[StreamMessage]] = defaultdict(list)
    for message in card_events:
        by_command[str(message.body["command_id"])].append(message)
    card_head, notify_head = heads
    # A command's reply may name the last message of its atomic batch (an outcome marker, when the
    # store writes one) rather than its card event: both positions are the command's.
    marker_at = {
        str(m.body["command_id"]): m.sequence
        for m in source
        if m.subject.startswith(f"{prefix}command.") and "command_id" in m.body
    }

    # -- commands: stream and projections, exactly once -----------------------------------------
    known = {op.op_id for op in log}
    for op in log:
        status, outcome, sequence = final_answer(op)
        events = by_command.get(op.op_id, [])
        if status in REJECTED:
            if events:
                found.anomaly(f"refused ({status}) yet recorded at {events[0].sequence}", op.op_id)
            continue
        if status not in DECIDED:
            found.anomaly(f"outcome still unknown after retries ({status})", op.op_id)
            continue
        if not events:
            found.lost.add(op.op_id)
            continue
        if len(events) > 1:
            found.duplicated.add(op.op_id)
        event = events[0]
        if sequence and sequence not in {event.sequence, marker_at.get(op.op_id)}:
            found.anomaly(f"told sequence {sequence}, stream has {event.sequence}", op.op_id)
        declined = event.body.get("type") == "transaction.declined.v1"
        if declined != (outcome == "declined"):
            found.anomaly(f"told {outcome}, stream has {event.body.get('type')}", op.op_id)
        answers = {(a[1], a[2]) for a in op.retries if a[0] in DECIDED | {"OUTCOME"} and a[1]}
        if op.decided:
            answers.add((op.outcome, op.sequence))
        if len({a[0] for a in answers}) > 1 or len({a[1] for a in answers if a[1]}) > 1:
            found.anomaly(f"inconsistent answers to one id: {sorted(answers)}", op.op_id)
        if event.body.get("type") in MONEY_TYPES:
            rows = tables.ledger_tx.get(event.sequence, 0)
            if rows == 0:
                found.lost.add(op.op_id)
                found.anomaly(f"not in ledger.transactions (seq {event.sequence})", op.op_id)
            elif rows > 1:
                found.duplicated.add(op.op_id)
            legs = event.body.get("legs") or []
            for index, leg in enumerate(legs):
                row = tables.entries.get((event.sequence, index))
                if row is None:
                    found.lost.add(op.op_id)
                    found.anomaly(f"entry {event.sequence}:{index} missing", op.op_id)
                elif (row[0], row[1]) != (leg["account_id"], int(leg["amount"])):
                    found.anomaly(f"entry {event.sequence}:{index} differs from its leg", op.op_id)
            if tables.notifications.get(event.sequence, 0) != 1:
                count = tables.notifications.get(event.sequence, 0)
                (found.lost if count == 0 else found.duplicated).add(op.op_id)
                found.anomaly(f"{count} notifications for seq {event.sequence}", op.op_id)
    for command_id in by_command:
        if command_id not in known and not command_id.startswith("expire"):
            found.anomaly(f"stream holds a command nobody sent: {command_id}")
    if tables.entry_dups:
        found.anomaly(f"{tables.entry_dups} duplicated (sequence, leg) rows in ledger.entries")

    # -- money: an independent fold -------------------------------------------------------------
    posted: Counter[str] = Counter()
    pending: Counter[str] = Counter()
    holds: dict[str, int] = {}
    limits: dict[str, int] = {}
    expected_entries: set[tuple[int, int, str, int]] = set()
    for message in card_events:
        body, kind = message.body, message.body.get("type")
        card = f"card-{body['card_id']}"
        if kind == "card.issued.v1":
            limits[card] = int(body.get("credit_limit", 0))
        if kind == "card.limit_changed.v1":
            limits[card] = int(body["new_limit"])
        if kind == "transaction.authorized.v1":
            holds[body["command_id"]] = int(body["amount"])
            pending[card] += int(body["amount"])
        if kind == "transaction.captured.v1":
            pending[card] -= int(body["amount"])
            holds[body["authorization_id"]] -= int(body["amount"])
        if kind in {"transaction.voided.v1", "transaction.expired.v1"}:
            pending[card] -= int(body["released"])
            holds[body["authorization_id"]] -= int(body["released"])
        for index, leg in enumerate(body.get("legs") or []):
            posted[leg["account_id"]] += int(leg["amount"])
            expected_entries.add((message.sequence, index, leg["account_id"], int(leg["amount"])))
        if posted[card] + limits.get(card, 0) - pending[card] < 0:
            found.anomaly(
                f"{card} beyond its limit after seq {message.sequence}: posted {posted[card]},"
                f" pending {pending[card]}, limit {limits.get(card, 0)}",
                str(body["command_id"]),
            )
    if negative := [h for h, left in holds.items() if left < 0]:
        found.anomaly(f"{len(negative)} holds captured or released beyond their amount")
    if sum(posted.values()) != 0:
        found.anomaly(f"Σ of the folded balances is {sum(posted.values())}, not 0")
    table_sum = sum(p for p, _ in tables.balances.values())
    if table_sum != 0:
        found.anomaly(f"Σ of ledger.balances.posted is {table_sum}, not 0")
    for account in set(posted) | set(tables.balances):
        table_posted, table_pending = tables.balances.get(account, (0, 0))
        if table_posted != posted.get(account, 0):
            found.anomaly(f"{account}: ledger posted {table_posted}, fold {posted.get(account, 0)}")
        if account.startswith("card-") and table_pending != pending.get(account, 0):
            found.anomaly(f"{account}: ledger pending {table_pending}, fold {pending[account]}")
    have = {(s, i, a, amount) for (s, i), (a, amount, _) in tables.entries.items()}
    if have != expected_entries:
        found.anomaly(
            f"ledger.entries != the events' legs: {len(expected_entries - have)} missing,"
            f" {len(have - expected_entries)} extra"
        )

    # -- derived stream == entries table --------------------------------------------------------
    published: Counter[str] = Counter()
    derived_rows: dict[str, tuple[int, int]] = {}
    for message in derived:
        entry_id = str(message.body["entry_id"])
        published[entry_id] += 1
        derived_rows[entry_id] = (int(message.body["amount"]), int(message.body["balance_after"]))
    table_rows = {
        f"{stream}:{s}:{i}": (amount, after)
        for (s, i), (_, amount, after) in tables.entries.items()
    }
    if dup := [e for e, n in published.items() if n > 1]:
        found.anomaly(f"derived stream: {len(dup)} entries published more than once")
    if missing := set(table_rows) - set(derived_rows):
        found.anomaly(f"derived stream misses {len(missing)} entries of the table")
    if extra := set(derived_rows) - set(table_rows):
        found.anomaly(f"derived stream has {len(extra)} entries the table lacks")
    if differ := [
        e for e in set(table_rows) & set(derived_rows) if table_rows[e] != derived_rows[e]
    ]:
        found.anomaly(f"derived stream differs from the table on {len(differ)} entries")

    # -- positions ----------------------------------------------------------------------------------
    if tables.ledger_position < card_head:
        found.anomaly(f"ledger at {tables.ledger_position}, last card event {card_head}")
    if tables.notify_position < notify_head:
        found.anomaly(f"notifications at {tables.notify_position}, last event {notify_head}")

    # -- webhooks: at least once, one idempotency key each ------------------------------------------
    if deliveries is not None and webhook_cards:
        keys_of: dict[str, set[str]] = defaultdict(set)
        for key, notification_ids in deliveries.items():
            for notification_id in notification_ids:
                keys_of[notification_id].add(key)
            if len(notification_ids) > 1:
                found.anomaly(
                    f"idempotency key {key} used for {len(notification_ids)} notifications"
                )
        hooked: dict[str, int] = {}  # card -> sequence of its first webhook registration
        for message in source:
            for card in webhook_cards:
                if message.subject.startswith(f"{prefix}notify.card.{card}."):
                    hooked.setdefault(card, message.sequence)
        for notification_id, (card, sequence) in tables.notification_cards.items():
            if card not in hooked or sequence <= hooked[card]:
                continue  # no endpoint yet when it was made
            if not keys_of.get(notification_id):
                found.anomaly(f"notification {notification_id} never delivered")
            elif len(keys_of[notification_id]) > 1:
                found.anomaly(f"notification {notification_id} delivered under several keys")
    return found
