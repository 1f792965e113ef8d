"""The access table covers every RPC of the four services, and each rule means what it says."""

from __future__ import annotations

from typing import Any

import pytest

from jetledger.card.v1 import card_pb2
from jetledger.ledger.v1 import ledger_pb2
from jetledger.notification.v1 import notification_pb2
from jetledger.transaction.v1 import transaction_pb2 as tx
from services.security.identity import ALL_ROLES, Identity, Role
from services.security.policy import HEALTH_SERVICE, REFLECTION_SERVICES, RULES, rule_for

PROTOS = (card_pb2, tx, ledger_pb2, notification_pb2)


def proto_methods() -> set[str]:
    """Every method of every service declared in the four protos."""
    return {
        f"/{service.full_name}/{method.name}"
        for module in PROTOS
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }


def test_the_table_covers_every_rpc_in_the_protos_and_nothing_else() -> None:
    methods = proto_methods()
    assert len(methods) == 26
    assert methods <= set(RULES), f"no rule for {sorted(methods - set(RULES))}"
    infrastructure = {f"/{HEALTH_SERVICE}/Check", f"/{HEALTH_SERVICE}/Watch"} | {
        f"/{name}/ServerReflectionInfo" for name in REFLECTION_SERVICES
    }
    assert set(RULES) - methods == infrastructure


def test_an_unknown_method_has_no_rule() -> None:
    assert rule_for("/jetledger.card.v1.CardService/DeleteEverything") is None


def test_only_health_is_public() -> None:
    public = {method for method, rule in RULES.items() if rule.public}
    assert public == {f"/{HEALTH_SERVICE}/Check", f"/{HEALTH_SERVICE}/Watch"}


def who(*roles: Role, card: str = "") -> Identity:
    return Identity("caller", frozenset(roles), card)


def check(method: str, identity: Identity, request: Any) -> str | None:
    rule = rule_for(method)
    assert rule is not None
    return rule.check(identity, request)


TX = "/jetledger.transaction.v1.TransactionService/"
CARD = "/jetledger.card.v1.CardService/"
NOTIFY = "/jetledger.notification.v1.NotificationService/"
LEDGER = "/jetledger.ledger.v1.LedgerService/"


@pytest.mark.parametrize(
    ("method", "allowed"),
    [
        (CARD + "IssueCard", {Role.CARD_ADMIN}),
        (CARD + "GetCard", {Role.CARD_ADMIN, Role.PAYMENTS, Role.OPERATOR, Role.READER}),
        (TX + "CreateTransaction", {Role.PAYMENTS}),
        (TX + "RefundTransaction", {Role.PAYMENTS}),
        (TX + "FundCard", {Role.OPERATOR}),
        (TX + "AdjustBalance", {Role.OPERATOR}),
        (LEDGER + "GetBalance", {Role.READER, Role.OPERATOR}),
        (NOTIFY + "ListDeliveries", {Role.OPERATOR}),
    ],
)
def test_each_role_gets_exactly_what_its_rule_names(method: str, allowed: set[Role]) -> None:
    rule = rule_for(method)
    assert rule is not None
    request: Any = type("Request", (), {"card_id": "alice", "account_id": "card-alice"})()
    for role in ALL_ROLES:
        refused = check(method, who(role), request)
        assert (refused is None) == (role in allowed), (method, role, refused)


def test_a_submitted_fund_needs_the_operator_role_like_the_unary_call() -> None:
    fund = tx.TransactionCommand(fund=tx.FundCardRequest(card_id="alice"))
    create = tx.TransactionCommand(create=tx.CreateTransactionRequest(card_id="alice"))
    only_payments = tx.SubmitTransactionsRequest(commands=[create])
    with_fund = tx.SubmitTransactionsRequest(commands=[create, fund])
    assert check(TX + "SubmitTransactions", who(Role.PAYMENTS), only_payments) is None
    assert check(TX + "SubmitTransactions", who(Role.PAYMENTS), with_fund) is not None
    assert check(TX + "SubmitTransactions", who(Role.OPERATOR), with_fund) is not None
    assert check(TX + "SubmitTransactions", who(Role.OPERATOR, Role.PAYMENTS), with_fund) is None


def test_operator_wide_webhooks_need_the_operator_role() -> None:
    everyone = notification_pb2.SetWebhookEndpointRequest(card_id="")
    one_card = notification_pb2.SetWebhookEndpointRequest(card_id="alice")
    assert check(NOTIFY + "SetWebhookEndpoint", who(Role.CARD_ADMIN), everyone) is not None
    assert check(NOTIFY + "SetWebhookEndpoint", who(Role.OPERATOR), everyone) is None
    assert check(NOTIFY + "SetWebhookEndpoint", who(Role.CARD_ADMIN), one_card) is None
    removal = notification_pb2.RemoveWebhookEndpointRequest(card_id="")
    assert check(NOTIFY + "RemoveWebhookEndpoint", who(Role.CARD_ADMIN), removal) is not None


def test_a_card_scoped_caller_touches_its_own_card_only() -> None:
    alice = who(Role.PAYMENTS, Role.READER, card="alice")
    mine = tx.CreateTransactionRequest(card_id="alice")
    theirs = tx.CreateTransactionRequest(card_id="bob")
    assert check(TX + "CreateTransaction", alice, mine) is None
    assert "bob" in (check(TX + "CreateTransaction", alice, theirs) or "")
    mixed = tx.SubmitTransactionsRequest(
        commands=[tx.TransactionCommand(create=mine), tx.TransactionCommand(create=theirs)]
    )
    assert check(TX + "SubmitTransactions", alice, mixed) is not None
    own_balance = ledger_pb2.GetBalanceRequest(account_id="card-alice")
    merchant = ledger_pb2.GetBalanceRequest(account_id="merchant-coffee")
    assert check(LEDGER + "GetBalance", alice, own_balance) is None
    assert check(LEDGER + "GetBalance", alice, merchant) is not None
    every_card = notification_pb2.ListNotificationsRequest(card_id="")
    assert check(NOTIFY + "ListNotifications", alice, every_card) is not None
    assert (
        check(CARD + "ListCards", who(Role.READER, card="alice"), card_pb2.ListCardsRequest())
        is not None
    )


def test_reflection_is_open_to_any_authenticated_caller_even_card_scoped() -> None:
    for name in REFLECTION_SERVICES:
        rule = rule_for(f"/{name}/ServerReflectionInfo")
        assert rule is not None
        assert rule.check(who(Role.READER, card="alice"), None) is None
