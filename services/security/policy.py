"""The one table of who may call what: every RPC of the four services, plus health and reflection.

Each rule names the roles that may call the method and, for card-scoped callers, which cards a
request touches. A caller scoped to one card may only make requests that name that card alone; a
request that is not about one card (listing every card, a merchant's balance, the operator-wide
notification default) is refused to it. ``tests/unit/security/test_policy.py`` proves the table
covers every method in the protos and nothing else.

Some requests decide the role they need: a ``SubmitTransactions`` carrying a ``fund`` or an
``adjust`` needs the operator role as the unary ``FundCard``/``AdjustBalance`` do, and a preference
or webhook change on the operator default (no card) needs the operator role.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from jetledger.card.v1 import card_pb2
from jetledger.ledger.v1 import ledger_pb2
from jetledger.notification.v1 import notification_pb2
from jetledger.transaction.v1 import transaction_pb2
from services.security.identity import ALL_ROLES, Identity, Role

Cards = tuple[str, ...] | None  # the cards a request names; None = not about one card
Needs = tuple[frozenset[Role], ...]  # each set must share a role with the caller's

CARD_ADMIN: Final = frozenset({Role.CARD_ADMIN})
PAYMENTS: Final = frozenset({Role.PAYMENTS})
OPERATOR: Final = frozenset({Role.OPERATOR})
READ: Final = frozenset({Role.READER, Role.OPERATOR})
CARD_READ: Final = frozenset({Role.READER, Role.OPERATOR, Role.CARD_ADMIN, Role.PAYMENTS})
OUTCOME_READ: Final = frozenset({Role.READER, Role.OPERATOR, Role.PAYMENTS})
CARD_OR_OPERATOR: Final = frozenset({Role.CARD_ADMIN, Role.OPERATOR})


def _not_card(request: Any) -> Cards:
    del request
    return None


def _card_id(request: Any) -> Cards:
    return (request.card_id,)


def _card_or_all(request: Any) -> Cards:
    """``card_id`` empty means every card (lists) or the operator default (preferences)."""
    return (request.card_id,) if request.card_id else None


def _account(request: Any) -> Cards:
    kind, _, rest = request.account_id.partition("-")
    return (rest,) if kind == "card" and rest else None


def _submitted_cards(request: Any) -> Cards:
    return tuple(
        getattr(item, item.WhichOneof("command") or "create").card_id for item in request.commands
    )


_OPERATOR_KINDS: Final = frozenset({"fund", "adjust"})


def _submitted_needs(request: Any) -> Needs:
    kinds = {item.WhichOneof("command") for item in request.commands}
    needs: list[frozenset[Role]] = []
    if kinds & _OPERATOR_KINDS:
        needs.append(OPERATOR)
    if kinds - _OPERATOR_KINDS or not kinds:
        needs.append(PAYMENTS)
    return tuple(needs)


def _scope_change_needs(request: Any) -> Needs:
    return (CARD_OR_OPERATOR,) if request.card_id else (OPERATOR,)


@dataclass(frozen=True, slots=True)
class Rule:
    """Who may call one method."""

    roles: frozenset[Role]
    cards: Callable[[Any], Cards] = _not_card
    needs: Callable[[Any], Needs] | None = None  # when the request decides the roles it needs
    public: bool = False  # no credential needed (health only)
    streaming_request: bool = False  # reflection: a stream of requests, no card to check

    def check(self, identity: Identity, request: Any) -> str | None:
        """``None`` if ``identity`` may make ``request``, else why not (one line)."""
        needs = self.needs(request) if self.needs is not None else (self.roles,)
        for roles in needs:
            if not identity.has_any(roles):
                wanted = " or ".join(sorted(roles))
                return f"{identity.name} lacks the role this call needs ({wanted})"
        if identity.card and not self.streaming_request:
            cards = self.cards(request)
            if cards is None:
                return f"{identity.name} is scoped to card {identity.card}; this call is not"
            others = sorted({c for c in cards if c != identity.card})
            if others:
                return f"{identity.name} is scoped to card {identity.card}, not {others[0]}"
        return None


def _path(descriptor: Any, service: str, method: str) -> str:
    return f"/{descriptor.services_by_name[service].full_name}/{method}"


_CARD = card_pb2.DESCRIPTOR
_TX = transaction_pb2.DESCRIPTOR
_LEDGER = ledger_pb2.DESCRIPTOR
_NOTIFY = notification_pb2.DESCRIPTOR

HEALTH_SERVICE: Final = "grpc.health.v1.Health"
REFLECTION_SERVICES: Final = (
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
)

RULES: Final[dict[str, Rule]] = {
    # card service
    _path(_CARD, "CardService", "GetCard"): Rule(CARD_READ, _card_id),
    _path(_CARD, "CardService", "ListCards"): Rule(
        frozenset({Role.READER, Role.OPERATOR, Role.CARD_ADMIN})
    ),
    _path(_CARD, "CardService", "IssueCard"): Rule(CARD_ADMIN, _card_id),
    _path(_CARD, "CardService", "FreezeCard"): Rule(CARD_ADMIN, _card_id),
    _path(_CARD, "CardService", "UnfreezeCard"): Rule(CARD_ADMIN, _card_id),
    _path(_CARD, "CardService", "UpdateCreditLimit"): Rule(CARD_ADMIN, _card_id),
    _path(_CARD, "CardService", "CloseCard"): Rule(CARD_ADMIN, _card_id),
    # transaction service
    _path(_TX, "TransactionService", "CreateTransaction"): Rule(PAYMENTS, _card_id),
    _path(_TX, "TransactionService", "AuthorizeTransaction"): Rule(PAYMENTS, _card_id),
    _path(_TX, "TransactionService", "CaptureTransaction"): Rule(PAYMENTS, _card_id),
    _path(_TX, "TransactionService", "VoidTransaction"): Rule(PAYMENTS, _card_id),
    _path(_TX, "TransactionService", "RefundTransaction"): Rule(PAYMENTS, _card_id),
    _path(_TX, "TransactionService", "FundCard"): Rule(OPERATOR, _card_id),
    _path(_TX, "TransactionService", "AdjustBalance"): Rule(OPERATOR, _card_id),
    _path(_TX, "TransactionService", "SubmitTransactions"): Rule(
        PAYMENTS, _submitted_cards, needs=_submitted_needs
    ),
    # an outcome names its card only once read: not offered to card-scoped callers
    _path(_TX, "TransactionService", "GetCommandOutcome"): Rule(OUTCOME_READ),
    # ledger service
    _path(_LEDGER, "LedgerService", "GetBalance"): Rule(READ, _account),
    _path(_LEDGER, "LedgerService", "ListEntries"): Rule(READ, _account),
    _path(_LEDGER, "LedgerService", "GetTransaction"): Rule(READ),
    # notification service
    _path(_NOTIFY, "NotificationService", "ListNotifications"): Rule(READ, _card_or_all),
    _path(_NOTIFY, "NotificationService", "WatchNotifications"): Rule(READ, _card_or_all),
    _path(_NOTIFY, "NotificationService", "GetPreferences"): Rule(READ | CARD_ADMIN, _card_or_all),
    _path(_NOTIFY, "NotificationService", "SetPreferences"): Rule(
        CARD_OR_OPERATOR, _card_or_all, needs=_scope_change_needs
    ),
    _path(_NOTIFY, "NotificationService", "SetWebhookEndpoint"): Rule(
        CARD_OR_OPERATOR, _card_or_all, needs=_scope_change_needs
    ),
    _path(_NOTIFY, "NotificationService", "RemoveWebhookEndpoint"): Rule(
        CARD_OR_OPERATOR, _card_or_all, needs=_scope_change_needs
    ),
    _path(_NOTIFY, "NotificationService", "ListDeliveries"): Rule(OPERATOR, _card_or_all),
    # health answers anyone (load balancers, probes): it tells SERVING or not, nothing else
    f"/{HEALTH_SERVICE}/Check": Rule(frozenset(), public=True),
    f"/{HEALTH_SERVICE}/Watch": Rule(frozenset(), public=True),
    # reflection describes the API to any authenticated caller (grpcurl list/describe)
    **{
        f"/{name}/ServerReflectionInfo": Rule(ALL_ROLES, streaming_request=True)
        for name in REFLECTION_SERVICES
    },
}


def rule_for(method: str) -> Rule | None:
    """The rule of a full method path (``/package.Service/Method``), or ``None`` (refuse)."""
    return RULES.get(method)
