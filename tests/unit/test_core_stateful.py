"""Hypothesis drives the pure core through random card histories and checks it against a model.

The model is plain dicts and ints written here, sharing no logic with ``commands/``: it predicts
every outcome (accepted, the exact decline reason, or the exception) and the balances. The harness
plays the shell: it validates, answers retries from its own outcome record (command id +
fingerprint, as the stream's markers do), decides, and evolves. Time moves forward in random steps,
so holds lapse between and during operations.
"""

from __future__ import annotations

import importlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import hypothesis
import msgspec
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from commands import (
    EMPTY,
    AdjustBalance,
    AuthorizeTransaction,
    CaptureTransaction,
    CardState,
    CloseCard,
    Command,
    CreateTransaction,
    Decision,
    ExpireAuthorization,
    FreezeCard,
    FundCard,
    IssueCard,
    RefundTransaction,
    UnfreezeCard,
    UpdateCreditLimit,
    VoidTransaction,
    command_type,
    decide,
    evolve,
    expired_holds,
    fingerprint,
    fold,
    sweeper_command_id,
    validate,
)
from contracts.errors import AlreadyExists, LedgerError
from contracts.events import SourceEvent
from contracts.money import MAX_CARD_BALANCE

CARDS = ("c1", "c2", "c3")
# ``commands.evolve`` the module (the package exports a function of that name).
evolve_module: Any = importlib.import_module("commands.evolve")
WINDOW = 3  # the state's bounds, made tiny here so that histories outgrow them
MERCHANTS = ("m1", "m2")
CURRENCIES = ("USD", "EUR")
START = datetime(2030, 1, 1, tzinfo=UTC)

cards = st.sampled_from(("c1", "c2", "c1", "c2", "c3"))  # c3 is often not issued: NotFound
merchants = st.sampled_from(MERCHANTS)
currencies = st.sampled_from(CURRENCIES)
amounts = st.integers(1, 600)
# "" means: use the card's currency (the common case); otherwise a fixed one, often foreign.
currency_choice = st.sampled_from(["", "", "", "", "USD", "EUR"])


# --- the model ------------------------------------------------------------------------------------


@dataclass
class MHold:
    amount: int
    merchant: str
    expires: datetime
    captured: int = 0
    state: str = "open"  # open | voided | expired | captured


@dataclass
class MCard:
    kind: str
    currency: str
    limit: int
    status: str = "active"
    balance: int = 0
    holds: dict[str, MHold] = field(default_factory=dict)
    posted: dict[str, list[Any]] = field(default_factory=dict)  # id -> [amount, refunded, merchant]
    ended: list[str] = field(default_factory=list)  # ids of ended holds, oldest first

    def forget(self) -> None:
        """Keep the refund window and the ended holds to their bounds (docs/intake.md)."""
        while len(self.posted) > WINDOW:
            del self.posted[next(iter(self.posted))]
        for auth_id, h in self.holds.items():
            if h.state != "open" and auth_id not in self.ended:
                self.ended.append(auth_id)
        while len(self.ended) > WINDOW:
            del self.holds[self.ended.pop(0)]

    def pending(self, now: datetime) -> int:
        return sum(
            h.amount - h.captured
            for h in self.holds.values()
            if h.state == "open" and now < h.expires
        )

    def available(self, now: datetime) -> int:
        return self.balance + self.limit - self.pending(now)


Expected = tuple[str, str]  # ("accepted", "") | ("declined", reason) | ("error", exception name)


class Model:
    """What the ledger should do, written as plainly as possible."""

    def __init__(self) -> None:
        self.cards: dict[str, MCard] = {}
        self.accounts: Counter[tuple[str, str]] = Counter()  # (account, currency) -> balance
        self.recorded: dict[str, tuple[Command, Expected]] = {}  # id -> (payload, outcome)

    def expect(self, cmd: Command, now: datetime) -> Expected:
        """The outcome of submitting ``cmd``: a retry gets the recorded one."""
        previous = self.recorded.get(cmd.command_id)
        if previous is not None:
            same = _payload(previous[0]) == _payload(cmd)
            return previous[1] if same else ("error", "AlreadyExists")
        return self.fresh(cmd, now)

    def fresh(self, cmd: Command, now: datetime) -> Expected:
        """The outcome of deciding ``cmd`` now, whatever was recorded under its id."""
        if isinstance(cmd, IssueCard):
            return ("error", "AlreadyExists") if cmd.card_id in self.cards else ("accepted", "")
        card = self.cards.get(cmd.card_id)
        if card is None:
            return ("error", "NotFound")
        if isinstance(cmd, AuthorizeTransaction) and cmd.expires_at and cmd.expires_at <= now:
            return ("error", "InvalidArgument")  # e.g. a retry after the hold's expiry
        reason = self._reason(card, cmd, now)
        if reason.startswith("!"):
            return ("error", reason[1:])
        return ("declined", reason) if reason else ("accepted", "")

    def _reason(self, card: MCard, cmd: Command, now: datetime) -> str:
        """The decline reason ("" to accept, "!Name" for an exception), in the documented order."""
        if isinstance(cmd, ExpireAuthorization):
            h = card.holds.get(cmd.authorization_id)
            if h is None:
                return "authorization_not_found"
            if h.state != "open":
                return "authorization_not_open"
            return "" if now >= h.expires else "!InvalidArgument"
        if card.status == "closed":
            return "card_closed"
        currency = getattr(cmd, "currency", "")
        if isinstance(cmd, CreateTransaction | AuthorizeTransaction):
            if card.status == "frozen":
                return "card_frozen"
            if currency != card.currency:
                return "currency_mismatch"
            return "insufficient_funds" if cmd.amount > card.available(now) else ""
        if currency and currency != card.currency:
            return "currency_mismatch"
        if isinstance(cmd, FundCard):
            return "balance_limit_exceeded" if card.balance + cmd.amount > MAX_CARD_BALANCE else ""
        if isinstance(cmd, AdjustBalance):
            if -cmd.amount > card.available(now):
                return "insufficient_funds"
            return "balance_limit_exceeded" if card.balance + cmd.amount > MAX_CARD_BALANCE else ""
        if isinstance(cmd, CaptureTransaction | VoidTransaction):
            h = card.holds.get(cmd.authorization_id)
            if h is None:
                return "authorization_not_found"
            lapsed = h.state == "expired" or (h.state == "open" and now >= h.expires)
            if isinstance(cmd, VoidTransaction):
                if lapsed:
                    return "authorization_expired"
                return "" if h.state == "open" else "authorization_not_open"
            if h.state == "voided":
                return "authorization_not_open"
            if lapsed:
                return "authorization_expired"
            too_much = cmd.amount > h.amount - h.captured
            return "capture_exceeds_authorization" if too_much else ""
        if isinstance(cmd, RefundTransaction):
            p = card.posted.get(cmd.original_transaction_id)
            if p is None:
                return "transaction_not_found"
            if cmd.amount > p[0] - p[1]:
                return "refund_exceeds_captured"
            return "balance_limit_exceeded" if card.balance + cmd.amount > MAX_CARD_BALANCE else ""
        if isinstance(cmd, FreezeCard):
            return "card_already_frozen" if card.status == "frozen" else ""
        if isinstance(cmd, UnfreezeCard):
            return "" if card.status == "frozen" else "card_not_frozen"
        if isinstance(cmd, UpdateCreditLimit):
            if card.kind != "credit":
                return "limit_not_applicable"
            short = card.balance + cmd.credit_limit - card.pending(now) < 0
            return "limit_below_utilisation" if short else ""
        assert isinstance(cmd, CloseCard)
        return "balance_not_zero" if card.balance or card.pending(now) else ""

    def releases(self, cmd: Command) -> int | None:
        """What a void or an expiry of ``cmd``'s hold would release (None for other commands)."""
        if not isinstance(cmd, VoidTransaction | ExpireAuthorization):
            return None
        card = self.cards.get(cmd.card_id)
        h = card.holds.get(cmd.authorization_id) if card else None
        return h.amount - h.captured if h else None

    def legs(self, cmd: Command) -> Counter[tuple[str, str]]:
        """The money an accepted ``cmd`` moves, by (account, currency); empty for no money."""
        card = self.cards.get(cmd.card_id)
        moves: Counter[tuple[str, str]] = Counter()
        if card is None:
            return moves

        def move(other: str, amount: int) -> None:
            moves[(f"card-{cmd.card_id}", card.currency)] += amount
            moves[(other, card.currency)] -= amount

        match cmd:
            case FundCard():
                move("house-funding", cmd.amount)
            case AdjustBalance():
                move("house-adjustments", cmd.amount)
            case CreateTransaction():
                move(f"merchant-{cmd.merchant_id}", -cmd.amount)
            case CaptureTransaction():
                move(f"merchant-{card.holds[cmd.authorization_id].merchant}", -cmd.amount)
            case RefundTransaction():
                move(f"merchant-{card.posted[cmd.original_transaction_id][2]}", cmd.amount)
        return moves

    def apply(self, cmd: Command, now: datetime) -> None:
        """Change the model as an accepted ``cmd`` does."""
        if isinstance(cmd, IssueCard):
            self.cards[cmd.card_id] = MCard(cmd.card_type, cmd.currency, cmd.credit_limit)
            return
        card = self.cards[cmd.card_id]
        moves = self.legs(cmd)
        self.accounts.update(moves)
        card.balance += moves[(f"card-{cmd.card_id}", card.currency)]
        match cmd:
            case CreateTransaction():
                card.posted[cmd.command_id] = [cmd.amount, 0, cmd.merchant_id]
            case AuthorizeTransaction():
                assert cmd.expires_at is not None
                card.holds[cmd.command_id] = MHold(cmd.amount, cmd.merchant_id, cmd.expires_at)
            case CaptureTransaction():
                h = card.holds[cmd.authorization_id]
                card.posted[cmd.command_id] = [cmd.amount, 0, h.merchant]
                h.captured += cmd.amount
                if h.captured == h.amount:
                    h.state = "captured"
            case VoidTransaction():
                card.holds[cmd.authorization_id].state = "voided"
            case ExpireAuthorization():
                card.holds[cmd.authorization_id].state = "expired"
            case RefundTransaction():
                card.posted[cmd.original_transaction_id][1] += cmd.amount
            case FreezeCard():
                card.status = "frozen"
            case UnfreezeCard():
                card.status = "active"
            case UpdateCreditLimit():
                card.limit = cmd.credit_limit
            case CloseCard():
                card.status = "closed"
        card.forget()

    def check_accepted(self, cmd: Command, decision: Decision) -> None:
        """Compare an accepted decision's money and releases with what the model expects."""
        actual: Counter[tuple[str, str]] = Counter()
        for event in decision.events:
            for leg in getattr(event, "legs", ()):
                actual[(leg.account_id, leg.currency)] += leg.amount
        assert _nonzero(actual) == _nonzero(self.legs(cmd)), cmd
        releases = self.releases(cmd)
        if releases is not None:
            assert [getattr(e, "released", None) for e in decision.events] == [releases]


def _payload(cmd: Command) -> Command:
    return msgspec.structs.replace(cmd, command_id="")


# --- the machine ----------------------------------------------------------------------------------


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        # Tiny bounds, so that refunds, captures and voids of forgotten ids are explored too.
        self.bounds = (evolve_module.REFUNDABLE_POSTINGS, evolve_module.CLOSED_HOLDS_KEPT)
        evolve_module.REFUNDABLE_POSTINGS = evolve_module.CLOSED_HOLDS_KEPT = WINDOW
        self.now = START
        self.model = Model()
        self.states: dict[str, CardState] = {}
        self.events: dict[str, list[SourceEvent]] = {card: [] for card in CARDS}
        self.outcomes: dict[str, tuple[str, Decision]] = {}  # the shell's markers
        self.sequence = 0
        self.serial = 0
        self.submitted: list[Command] = []
        # the card each authorization or posting id was made on ("" for ids that never were)
        self.auth_ids: dict[str, str] = {"unknown-auth": ""}
        self.posting_ids: dict[str, str] = {"unknown-tx": ""}

    # -- the harness: the shell around decide/evolve, with idempotency by id + fingerprint --

    def submit(self, cmd: Command) -> Decision:
        cmd = validate(cmd)
        previous = self.outcomes.get(cmd.command_id)
        if previous is not None:
            if previous[0] != fingerprint(cmd):
                raise AlreadyExists(cmd.command_id)
            return previous[1]
        state = self.states.get(cmd.card_id, EMPTY)
        decision = decide(state, cmd, self.now)
        for event in decision.events:
            self.sequence += 1
            state = evolve(state, event, self.sequence)
            self.events[cmd.card_id].append(event)
            for currency, total in _leg_sums(event).items():
                assert total == 0, (currency, event)
        self.states[cmd.card_id] = state
        self.outcomes[cmd.command_id] = (fingerprint(cmd), decision)
        return decision

    def check(self, cmd: Command) -> bool:
        """Submit ``cmd`` and compare with the model's prediction, then let the model follow."""
        expected = self.model.expect(cmd, self.now)
        replay = cmd.command_id in self.model.recorded
        count = sum(len(events) for events in self.events.values())
        try:
            decision = self.submit(cmd)
            actual: Expected = (decision.outcome, decision.reason)
            if actual == ("accepted", "") and not replay:
                self.model.check_accepted(cmd, decision)
        except LedgerError as exc:
            actual = ("error", type(exc).__name__)
        assert actual == expected, (cmd, self.now)
        hypothesis.event(
            f"{command_type(cmd)}: {'replayed ' if replay else ''}{actual[0]} {actual[1]}"
        )
        self.submitted.append(cmd)
        if replay or actual[0] == "error":
            assert sum(len(events) for events in self.events.values()) == count  # nothing appended
            return False
        self.model.recorded[cmd.command_id] = (cmd, expected)
        if actual[0] == "accepted":
            self.model.apply(cmd, self.now)
        return actual[0] == "accepted"

    def next_id(self) -> str:
        self.serial += 1
        return f"tx-{self.serial}"

    def pick(self, data: st.DataObject, ids: dict[str, str]) -> tuple[str, str]:
        """Draw an id and, usually, the card it belongs to (else any card: not found there)."""
        target = data.draw(st.sampled_from(list(reversed(ids))))  # newest first, unknown last
        owner = ids[target] or CARDS[0]
        return target, data.draw(st.sampled_from([owner, owner, owner, *CARDS]))

    def near(self, data: st.DataObject, left: int) -> int:
        """Draw a positive amount around ``left`` (what is still allowed), boundaries included.

        Steering by the model's numbers only chooses inputs; the model still predicts outcomes.
        Off-by-one mistakes live at ``left`` and ``left + 1``, which random amounts rarely hit.
        """
        mode = data.draw(st.sampled_from(["under", "under", "exact", "one_over", "over"]))
        if mode == "under":
            return data.draw(st.integers(1, max(1, left)))
        offset = {"exact": 0, "one_over": 1}.get(mode) or data.draw(st.integers(2, 300))
        return max(1, left + offset)

    def available(self, card: str) -> int:
        known = self.model.cards.get(card)
        return known.available(self.now) if known else 100

    def currency(self, card: str, choice: str) -> str:
        known = self.model.cards.get(card)
        return choice or (known.currency if known else "USD")

    # -- rules --

    @initialize(kind=st.sampled_from(["debit", "credit", "prepaid"]), currency=currencies,
                limit=st.integers(0, 2000), funds=st.integers(1, 3000))  # fmt: skip
    def open_cards(self, kind: str, currency: str, limit: int, funds: int) -> None:
        # Two cards exist from the start (c3 only if a rule issues it), so most steps reach the
        # rules rather than NotFound: c1 with funds, c2 a credit card living on its limit (so
        # pending often exceeds posted, where limit cuts and closing have their edges).
        self.issue("c1", kind, currency, limit if kind == "credit" else 0)
        self.fund("c1", funds, "")
        self.issue("c2", "credit", currency, 100 + limit)

    # Steps equal to hold lifetimes, so holds are often seen exactly at their expiry (inclusive).
    @rule(seconds=st.sampled_from([0, 1, 60, 600, 3600]) | st.integers(0, 3600))
    def advance(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)

    @rule(card=cards, kind=st.sampled_from(["debit", "credit", "prepaid"]), currency=currencies,
          limit=st.integers(0, 2000))  # fmt: skip
    def issue(self, card: str, kind: str, currency: str, limit: int) -> None:
        self.check(
            IssueCard(
                command_id=self.next_id(),
                card_id=card,
                cardholder_name="Holder",
                card_type=kind,  # type: ignore[arg-type]
                currency=currency,
                credit_limit=limit if kind == "credit" else 0,
                last4="1234",
            )
        )

    @rule(card=cards, amount=st.integers(1, 1000), choice=currency_choice)
    def fund(self, card: str, amount: int, choice: str) -> None:
        currency = self.currency(card, choice)
        self.check(
            FundCard(command_id=self.next_id(), card_id=card, amount=amount, currency=currency)
        )

    @rule(card=cards, merchant=merchants, data=st.data(), choice=currency_choice)
    def purchase(self, card: str, merchant: str, data: st.DataObject, choice: str) -> None:
        amount = self.near(data, self.available(card))
        command_id = self.next_id()
        command = CreateTransaction(
            command_id=command_id,
            card_id=card,
            merchant_id=merchant,
            amount=amount,
            currency=self.currency(card, choice),
        )
        if self.check(command):
            self.posting_ids[command_id] = card

    @rule(card=cards, merchant=merchants, data=st.data(), choice=currency_choice,
          ttl=st.sampled_from([1, 60, 600, 3600]) | st.integers(1, 7200))  # fmt: skip
    def authorize(
        self, card: str, merchant: str, data: st.DataObject, ttl: int, choice: str
    ) -> None:
        amount = self.near(data, self.available(card))
        command_id = self.next_id()
        command = AuthorizeTransaction(
            command_id=command_id,
            card_id=card,
            merchant_id=merchant,
            amount=amount,
            currency=self.currency(card, choice),
            expires_at=self.now + timedelta(seconds=ttl),
        )
        if self.check(command):
            self.auth_ids[command_id] = card

    @precondition(lambda self: len(self.auth_ids) > 1)  # a hold exists (unknown ids still drawn)
    @rule(data=st.data(), currency=st.sampled_from(["", "", "", "USD", "EUR"]))
    def capture(self, data: st.DataObject, currency: str) -> None:
        command_id = self.next_id()
        auth, card = self.pick(data, self.auth_ids)
        held = self.model.cards[card].holds.get(auth) if card in self.model.cards else None
        amount = self.near(data, held.amount - held.captured if held else 0)
        command = CaptureTransaction(
            command_id=command_id,
            card_id=card,
            authorization_id=auth,
            amount=amount,
            currency=currency,
        )
        if self.check(command):
            self.posting_ids[command_id] = card

    @precondition(lambda self: len(self.auth_ids) > 1)
    @rule(data=st.data())
    def void(self, data: st.DataObject) -> None:
        auth, card = self.pick(data, self.auth_ids)
        self.check(VoidTransaction(command_id=self.next_id(), card_id=card, authorization_id=auth))

    @precondition(lambda self: len(self.auth_ids) > 1)
    @rule(data=st.data())
    def expire(self, data: st.DataObject) -> None:
        auth, card = self.pick(data, self.auth_ids)
        command_id = sweeper_command_id(auth)
        self.check(ExpireAuthorization(command_id=command_id, card_id=card, authorization_id=auth))

    @rule()
    def sweep(self) -> None:
        for card, state in self.states.items():
            mcard = self.model.cards[card]
            lapsed = sorted(
                (h.expires, key)
                for key, h in mcard.holds.items()
                if h.state == "open" and self.now >= h.expires
            )
            due = expired_holds(state, self.now)
            assert due == [key for _, key in lapsed]
            for auth in due:
                command_id = sweeper_command_id(auth)
                self.check(
                    ExpireAuthorization(command_id=command_id, card_id=card, authorization_id=auth)
                )

    @precondition(lambda self: len(self.posting_ids) > 1)
    @rule(data=st.data(), choice=st.sampled_from(["", "", "", "EUR"]))
    def refund(self, data: st.DataObject, choice: str) -> None:
        original, card = self.pick(data, {**self.auth_ids, **self.posting_ids})
        posted = self.model.cards[card].posted.get(original) if card in self.model.cards else None
        amount = self.near(data, posted[0] - posted[1] if posted else 0)
        self.check(
            RefundTransaction(
                command_id=self.next_id(),
                card_id=card,
                original_transaction_id=original,
                amount=amount,
                currency=choice,
            )
        )

    @rule(card=cards, data=st.data(), kind=st.sampled_from(["debit", "credit", "settle"]))
    def adjust(self, card: str, data: st.DataObject, kind: str) -> None:
        known = self.model.cards.get(card)
        if kind == "settle":
            # Bring posted to zero (a payout, or a repayment), so closing meets both of its
            # conditions, or only the pending one, often enough.
            if known is None or known.balance == 0:
                return
            if known.balance < 0:
                repay = FundCard(command_id=self.next_id(), card_id=card,
                                 amount=-known.balance, currency=known.currency)  # fmt: skip
                self.check(repay)
                return
            amount = -known.balance
        else:
            amount = (
                data.draw(amounts) if kind == "credit" else -self.near(data, self.available(card))
            )
        currency = known.currency if known else "USD"
        self.check(
            AdjustBalance(
                command_id=self.next_id(),
                card_id=card,
                amount=amount,
                currency=currency,
                reason="correction",
                actor="ops",
            )
        )

    # One rule for the card lifecycle, so freezes and closes do not crowd out the money.
    @rule(card=cards, action=st.sampled_from(["freeze", "unfreeze", "unfreeze", "close"]))
    def lifecycle(self, card: str, action: str) -> None:
        command_id = self.next_id()
        if action == "freeze":
            self.check(FreezeCard(command_id=command_id, card_id=card, reason="suspicious"))
        elif action == "unfreeze":
            self.check(UnfreezeCard(command_id=command_id, card_id=card))
        else:
            self.check(CloseCard(command_id=command_id, card_id=card))

    @rule(card=cards, data=st.data(), step=st.sampled_from([-1, 0, 1, None]))
    def change_limit(self, card: str, data: st.DataObject, step: int | None) -> None:
        known = self.model.cards.get(card)
        lowest = known.pending(self.now) - known.balance if known else 0  # the limit at available 0
        limit = data.draw(st.integers(0, 3000)) if step is None else max(0, lowest + step)
        self.check(UpdateCreditLimit(command_id=self.next_id(), card_id=card, credit_limit=limit))

    @rule(data=st.data(), changed=st.booleans(), card=cards)
    def retry(self, data: st.DataObject, changed: bool, card: str) -> None:
        """Re-submit an earlier command: the same (a replay) or with another card (a conflict)."""
        if not self.submitted:
            return
        earlier = data.draw(st.sampled_from(self.submitted))
        if changed and earlier.card_id != card:
            earlier = msgspec.structs.replace(earlier, card_id=card)
        self.check(earlier)

    # -- invariants --

    @invariant()
    def every_currency_sums_to_zero_over_all_accounts(self) -> None:
        balances: Counter[tuple[str, str]] = Counter()
        for events in self.events.values():
            for event in events:
                for leg in getattr(event, "legs", ()):
                    balances[(leg.account_id, leg.currency)] += leg.amount
        for currency in CURRENCIES:
            assert sum(v for (_, cur), v in balances.items() if cur == currency) == 0
        # every account's balance, cards, merchants and house accounts alike
        assert _nonzero(balances) == _nonzero(self.model.accounts)

    @invariant()
    def cards_match_the_model_and_never_overdraw(self) -> None:
        for card, state in self.states.items():
            mcard = self.model.cards[card]
            assert state.available(self.now) >= 0
            assert state.available(self.now) == mcard.available(self.now)
            assert (state.posted, state.status, state.credit_limit) == (
                mcard.balance,
                mcard.status,
                mcard.limit,
            )
            # What the card remembers is exactly the model's bounded window, in the same order.
            assert list(state.postings) == list(mcard.posted)
            assert list(state.closed_holds) == mcard.ended
            assert set(state.holds) == {i for i, h in mcard.holds.items() if h.state == "open"}

    @invariant()
    def running_hold_totals_match_the_open_holds(self) -> None:
        """``held`` is what the open holds hold; ``next_expiry`` is never after the earliest."""
        for state in self.states.values():
            holds = state.holds.values()
            assert state.held == sum(hold.remaining for hold in holds)
            if not holds:
                assert state.next_expiry is None
            else:
                assert state.next_expiry is not None
                assert state.next_expiry <= min(hold.expires_at for hold in holds)

    @invariant()
    def every_boundary_is_decided_as_the_model_says(self) -> None:
        """Ask, without applying, the questions that sit exactly on each limit of each card.

        Random walks rarely stand on a boundary; probing at every step puts every reachable state
        at its edges: spend exactly available and one more, capture exactly what is held and one
        more, refund exactly what is refundable and one more, set the limit at utilisation and one
        below, and void, expire and close.
        """
        for card, state in self.states.items():
            known = self.model.cards[card]
            for cmd in self.probes(card, known):
                expected = self.model.fresh(cmd, self.now)
                try:
                    decision = decide(state, cmd, self.now)
                    actual: Expected = (decision.outcome, decision.reason)
                except LedgerError as exc:
                    actual = ("error", type(exc).__name__)
                assert actual == expected, (cmd, self.now)
                if actual[0] == "accepted":
                    self.model.check_accepted(cmd, decision)

    def probes(self, card: str, known: MCard) -> list[Command]:
        ids = (f"probe-{n}" for n in range(10**6))  # never recorded: decided fresh
        spend = known.available(self.now)
        lowest = known.pending(self.now) - known.balance
        base = {"card_id": card}
        probes: list[Command] = [CloseCard(command_id=next(ids), **base)]
        for amount in {max(1, spend), spend + 1}:
            probes.append(CreateTransaction(command_id=next(ids), merchant_id="m1", amount=amount,
                                            currency=known.currency, **base))  # fmt: skip
            probes.append(AdjustBalance(command_id=next(ids), amount=-amount, currency=known.currency,
                                        reason="probe", actor="probe", **base))  # fmt: skip
        for limit in {max(0, lowest), max(0, lowest - 1)}:
            probes.append(UpdateCreditLimit(command_id=next(ids), credit_limit=limit, **base))
        for auth, hold in known.holds.items():
            for amount in {max(1, hold.amount - hold.captured), hold.amount - hold.captured + 1}:
                probes.append(CaptureTransaction(command_id=next(ids), authorization_id=auth,
                                                 amount=amount, **base))  # fmt: skip
            probes.append(VoidTransaction(command_id=next(ids), authorization_id=auth, **base))
            probes.append(ExpireAuthorization(command_id=sweeper_command_id(auth),
                                              authorization_id=auth, **base))  # fmt: skip
        for original, (amount, refunded, _) in known.posted.items():
            for value in {max(1, amount - refunded), amount - refunded + 1}:
                probes.append(RefundTransaction(command_id=next(ids), original_transaction_id=original,
                                                amount=value, **base))  # fmt: skip
        return probes

    def teardown(self) -> None:
        evolve_module.REFUNDABLE_POSTINGS, evolve_module.CLOSED_HOLDS_KEPT = self.bounds

    @invariant()
    def folding_the_stream_gives_the_live_state(self) -> None:
        for card, state in self.states.items():
            assert fold(self.events[card]) == msgspec.structs.replace(state, version=0)


def _nonzero(counter: Counter[tuple[str, str]]) -> dict[tuple[str, str], int]:
    return {key: value for key, value in counter.items() if value}


def _leg_sums(event: SourceEvent) -> Counter[str]:
    sums: Counter[str] = Counter()
    for leg in getattr(event, "legs", ()):
        sums[leg.currency] += leg.amount
    return sums


LedgerMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=50, deadline=None)
TestLedgerMachine = LedgerMachine.TestCase
