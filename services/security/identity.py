"""Who is calling: roles, an optional card scope, and the acting identity of the current RPC.

An identity is what a verified credential (a bearer token, see ``tokens``) stands for. Roles are
coarse on purpose — they follow who does what in a card business, not the RPC list:

- ``card_admin``: issue, freeze, unfreeze, re-limit and close cards; a card's webhooks/preferences;
- ``payments``: create, authorize, capture, void and refund (what a merchant acquirer sends);
- ``operator``: fund, adjust, the operator-wide notification default and its webhooks, deliveries;
- ``reader``: every query (cards, balances, entries, transactions, notifications, outcomes).

A caller may hold several roles, and may be scoped to one card: then every request it makes must
name that card and no other (a cardholder's app, a card's own integration).

The interceptor puts the identity of the RPC being served in a context variable, so handlers (and,
through them, the events they append) can say who acted without threading it through every call.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from contracts.ids import check_id
from eventstore import integrity
from eventstore.integrity import bind_actor, unbind_actor


class Role(StrEnum):
    """What a caller may do (see the module docstring)."""

    CARD_ADMIN = "card_admin"
    PAYMENTS = "payments"
    OPERATOR = "operator"
    READER = "reader"


ALL_ROLES: Final = frozenset(Role)


@dataclass(frozen=True, slots=True)
class Identity:
    """A verified caller: a name (recorded as the acting identity), its roles, its card scope."""

    name: str
    roles: frozenset[Role]
    card: str = ""  # "" = every card; else the one card this caller may act on

    def __post_init__(self) -> None:
        check_id(self.name, "identity name")
        if self.card:
            check_id(self.card, "identity card scope")

    def has_any(self, roles: frozenset[Role]) -> bool:
        """Tell whether the caller holds at least one of ``roles``."""
        return not self.roles.isdisjoint(roles)

    def may_touch(self, card_id: str) -> bool:
        """Tell whether a request naming ``card_id`` is inside this caller's scope."""
        return not self.card or self.card == card_id


def parse_roles(names: list[str] | tuple[str, ...]) -> frozenset[Role]:
    """Turn role names into ``Role``s; an unknown name is an error, never silently dropped."""
    try:
        return frozenset(Role(name) for name in names)
    except ValueError as exc:
        known = ", ".join(sorted(ALL_ROLES))
        raise ValueError(f"unknown role in {list(names)!r} (known: {known})") from exc


# The identity of the RPC being served, set by the interceptor for the handler's task.
_CURRENT: Final[contextvars.ContextVar[Identity | None]] = contextvars.ContextVar(
    "jetledger_identity", default=None
)
# What events record when security is off (debugging) or no RPC is being served (the sweeper).
ANONYMOUS: Final = "anonymous"
SYSTEM: Final = integrity.SYSTEM


def current_identity() -> Identity | None:
    """The verified caller of the RPC being served, or ``None`` outside one (or security off)."""
    return _CURRENT.get()


def acting_name(default: str = SYSTEM) -> str:
    """The name to record as the acting identity of what is being done now."""
    found = _CURRENT.get()
    return default if found is None else found.name


@dataclass(frozen=True, slots=True)
class Binding:
    """What ``bind`` changed, for ``unbind`` to restore."""

    identity: contextvars.Token[Identity | None]
    actor: contextvars.Token[str | None]


def bind(identity: Identity | None) -> Binding:
    """Make ``identity`` the current one (the interceptor calls this; tests may too).

    Its name also becomes the event store's acting identity (``eventstore.integrity``), so every
    event appended while serving this call records who made it, under the event's MAC.
    """
    return Binding(_CURRENT.set(identity), bind_actor(None if identity is None else identity.name))


def unbind(binding: Binding) -> None:
    """Restore the identity that was current before ``bind``."""
    unbind_actor(binding.actor)
    _CURRENT.reset(binding.identity)
