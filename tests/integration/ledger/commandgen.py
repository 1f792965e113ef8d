"""Hypothesis command histories decided by the real pure core (``commands.decide``).

A history is a list of small "ops" that hypothesis shrinks well; ``run_ops`` turns them into
commands against each card's current state (picking real hold and posting ids), decides them with
a clock that moves forward, and returns every event in append order, with the command's outcome
marker subject after its events (as the intake appends them), so positions look like production.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from hypothesis import strategies as st

from commands import (
    EMPTY,
    AdjustBalance,
    AuthorizeTransaction,
    CaptureTransaction,
    CardState,
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
    decide,
    evolve,
    expired_holds,
    sweeper_command_id,
)
from contracts.errors import LedgerError
from contracts.events import SourceEvent
from services.intake import CommandHandler
from tests.ledgerkit import T0

CARDS = ("a", "b", "c")
CURRENCY = {"a": "USD", "b": "USD", "c": "EUR"}
KINDS = (
    "fund", "purchase", "authorize", "capture", "void", "expire", "refund", "limit", "adjust",
    "freeze", "unfreeze",
)  # fmt: skip

ops = st.lists(
    st.tuples(
        st.sampled_from(KINDS),
        st.sampled_from(CARDS),
        st.integers(min_value=1, max_value=5_000),
        st.integers(min_value=0, max_value=7),
    ),
    min_size=1,
    max_size=40,
)


@dataclass
class Run:
    """The events a history produced and the final pure-model state of each card."""

    appended: list[tuple[SourceEvent | None, str]] = field(default_factory=list)
    states: dict[str, CardState] = field(default_factory=dict)

    @property
    def events(self) -> list[SourceEvent]:
        return [e for e, _ in self.appended if e is not None]


def _command(
    kind: str, card: str, amount: int, pick: int, state: CardState, n: int
) -> Command | None:
    cid = f"{kind[:3]}{n}"
    cur = CURRENCY[card]
    holds = sorted(state.holds)
    posted = sorted(state.postings)
    match kind:
        case "fund":
            return FundCard(command_id=cid, card_id=card, amount=amount, currency=cur)
        case "purchase":
            return CreateTransaction(
                command_id=cid,
                card_id=card,
                merchant_id=f"m{pick % 3}",
                amount=amount,
                currency=cur,
            )
        case "authorize":
            return AuthorizeTransaction(
                command_id=cid, card_id=card, merchant_id=f"m{pick % 3}", amount=amount,
                currency=cur, expires_at=T0 + timedelta(days=365 * 10),
            )  # fmt: skip
        case "capture" if holds:
            return CaptureTransaction(
                command_id=cid, card_id=card, authorization_id=holds[pick % len(holds)],
                amount=amount,
            )  # fmt: skip
        case "void" if holds:
            return VoidTransaction(
                command_id=cid, card_id=card, authorization_id=holds[pick % len(holds)]
            )
        case "refund" if posted:
            return RefundTransaction(
                command_id=cid, card_id=card, original_transaction_id=posted[pick % len(posted)],
                amount=amount,
            )  # fmt: skip
        case "limit" if card == "b":
            return UpdateCreditLimit(command_id=cid, card_id=card, credit_limit=amount)
        case "adjust":
            signed = amount if pick % 2 else -amount
            return AdjustBalance(
                command_id=cid, card_id=card, amount=signed, currency=cur, reason="fix", actor="ops"
            )
        case "freeze":
            return FreezeCard(command_id=cid, card_id=card)
        case "unfreeze":
            return UnfreezeCard(command_id=cid, card_id=card)
    return None


def run_ops(history: list[tuple[str, str, int, int]]) -> Run:
    """Decide every op with the pure core; return the events and the final states."""
    run = Run()
    now = T0
    for card in CARDS:
        issue = IssueCard(
            command_id=f"issue{card}", card_id=card, cardholder_name="Holder",
            card_type="credit" if card == "b" else "debit", currency=CURRENCY[card], last4="1234",
            credit_limit=3_000 if card == "b" else 0,
        )  # fmt: skip
        _decide(run, card, issue, now)
    for n, (kind, card, amount, pick) in enumerate(history):
        now += timedelta(seconds=1)
        state = run.states[card]
        if kind == "expire":
            # Expiry needs a lapsed hold: jump the clock past the hold's expiry, as the sweeper would.
            if not state.holds:
                continue
            auth = sorted(state.holds)[pick % len(state.holds)]
            later = max(now, state.holds[auth].expires_at + timedelta(seconds=1))
            if auth in expired_holds(state, later):
                cmd = ExpireAuthorization(
                    command_id=sweeper_command_id(auth), card_id=card, authorization_id=auth
                )
                _decide(run, card, cmd, later)
                now = later
            continue
        command = _command(kind, card, amount, pick, state, n)
        if command is not None:
            _decide(run, card, command, now)
    return run


def _decide(run: Run, card: str, command: Command, now: object) -> None:
    state = run.states.get(card, EMPTY)
    try:
        decision = decide(state, command, now)  # type: ignore[arg-type]
    except LedgerError:
        return  # invalid for this state (e.g. nothing to refund): nothing is appended
    for event in decision.events:
        state = evolve(state, event)
        run.appended.append((event, ""))
    run.appended.append((None, command.command_id))  # the outcome marker comes after the events
    run.states[card] = state


async def run_ops_through_intake(
    history: list[tuple[str, str, int, int]], handler: CommandHandler, clock: list[datetime]
) -> dict[str, CardState]:
    """Submit every op through the real intake (compare-and-set, markers, group commit).

    ``clock`` is the handler's clock, a one-element list this moves forward. Returns the intake's
    own final state of each card (folded from the stream with the sequences it appended at).
    """
    clock[0] = T0
    for card in CARDS:
        await _submit(handler, _issue(card))
    for n, (kind, card, amount, pick) in enumerate(history):
        clock[0] += timedelta(seconds=1)
        state = await handler.cards.current(card)
        if kind == "expire":
            if not state.holds:
                continue
            auth = sorted(state.holds)[pick % len(state.holds)]
            clock[0] = max(clock[0], state.holds[auth].expires_at + timedelta(seconds=1))
            command: Command | None = ExpireAuthorization(
                command_id=sweeper_command_id(auth), card_id=card, authorization_id=auth
            )
        else:
            command = _command(kind, card, amount, pick, state, n)
        if command is not None:
            await _submit(handler, command)
    return {card: await handler.cards.current(card) for card in CARDS}


def _issue(card: str) -> IssueCard:
    return IssueCard(
        command_id=f"issue{card}", card_id=card, cardholder_name="Holder",
        card_type="credit" if card == "b" else "debit", currency=CURRENCY[card], last4="1234",
        credit_limit=3_000 if card == "b" else 0,
    )  # fmt: skip


async def _submit(handler: CommandHandler, command: Command) -> None:
    # Invalid for this state (e.g. a limit on a debit card): refused, nothing is appended.
    with contextlib.suppress(LedgerError):
        await handler.handle(command)
