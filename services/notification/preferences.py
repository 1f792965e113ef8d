"""Preference commands: validate, then append the preference event and its outcome marker.

Preferences are decisions, so they live on the stream (docs/architecture.md, §1) and a rebuild keeps them. Each
command carries a client id and is idempotent forever (docs/architecture.md, invariant 5): its outcome marker on
``command.<id>`` is appended in the same atomic batch as the event, expecting an empty subject, so
the same id with the same request replays the original result, with another request it is
``ALREADY_EXISTS``.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import msgspec

from contracts.codec import decode_marker, encode, event_type
from contracts.errors import AlreadyExists, Conflict, InvalidArgument
from contracts.events import (
    CommandRecorded,
    NotificationKind,
    NotificationPreferencesSet,
    NotifyEvent,
    WebhookEndpointRemoved,
    WebhookEndpointSet,
)
from contracts.ids import check_id
from contracts.money import MAX_AMOUNT
from eventstore import EventStore, Expectation, OutgoingMessage, WrongLastSequence
from eventstore.integrity import Keyring
from projections.notifications.core import ALL_KINDS
from services.security import secretbox
from services.security.webhookpolicy import WebhookUrlPolicy

MIN_SECRET_LENGTH: Final = 16
_canonical: Final = msgspec.json.Encoder(order="sorted")


@dataclass(frozen=True, slots=True)
class CommandResult:
    """The recorded outcome of a preference command."""

    command_id: str
    stream_sequence: int
    stream: str
    replayed: bool


class PreferenceCommands:
    """Turns preference requests into events on the source stream.

    ``url_policy`` refuses webhook URLs of internal addresses (``services.security.webhookpolicy``);
    ``secret_keys`` seals every webhook secret before it reaches the event (and so the table):
    ``services.security.secretbox``, with the endpoint's scope and id as associated data.
    """

    def __init__(
        self,
        store: EventStore,
        *,
        url_policy: WebhookUrlPolicy | None = None,
        secret_keys: Keyring | None = None,
    ) -> None:
        self.store = store
        self.url_policy = WebhookUrlPolicy() if url_policy is None else url_policy
        self.secret_keys = secret_keys

    async def set_preferences(
        self,
        command_id: str,
        card_id: str,
        kinds: tuple[str, ...] | None,
        low_balance_threshold: int | None,
        low_balance_percent: int | None,
    ) -> CommandResult:
        """Replace a scope's preferences (``card_id`` empty: the operator default)."""
        _check_scope(command_id, card_id)
        checked_kinds = None if kinds is None else _check_kinds(kinds)
        if low_balance_threshold is not None and not 0 <= low_balance_threshold <= MAX_AMOUNT:
            raise InvalidArgument(f"low_balance_threshold must be 0..{MAX_AMOUNT} minor units")
        if low_balance_percent is not None and not 0 <= low_balance_percent <= 100:
            raise InvalidArgument("low_balance_percent must be 0..100")
        event = NotificationPreferencesSet(
            card_id=card_id,
            command_id=command_id,
            at=datetime.now(UTC),
            kinds=checked_kinds,
            low_balance_threshold=low_balance_threshold,
            low_balance_percent=low_balance_percent,
        )
        return await self._append(event, _request_of(event))

    async def set_webhook(
        self, command_id: str, card_id: str, endpoint_id: str, url: str, secret: str
    ) -> tuple[CommandResult, str]:
        """Add or replace a webhook endpoint; return the result and any generated secret."""
        _check_scope(command_id, card_id)
        check_id(endpoint_id, "endpoint_id")
        if secret and len(secret) < MIN_SECRET_LENGTH:
            raise InvalidArgument(f"secret must have at least {MIN_SECRET_LENGTH} characters")
        await self.url_policy.check(url)  # form, and every address the host resolves to now
        generated = "" if secret else "whsec_" + secrets.token_urlsafe(32)
        plain = secret or generated
        stored = plain
        if self.secret_keys is not None:
            stored = secretbox.seal(
                self.secret_keys, plain, secretbox.endpoint_context(card_id, endpoint_id)
            )
        event = WebhookEndpointSet(
            card_id=card_id,
            command_id=command_id,
            at=datetime.now(UTC),
            endpoint_id=endpoint_id,
            url=url,
            secret=stored,
        )
        # The request as sent (an empty secret means "generate one") is what a retry repeats.
        request = {**_request_of(event), "secret": secret}
        result = await self._append(event, request)
        return result, "" if result.replayed else generated

    async def remove_webhook(
        self, command_id: str, card_id: str, endpoint_id: str
    ) -> CommandResult:
        """Remove a webhook endpoint (its pending deliveries are cancelled)."""
        _check_scope(command_id, card_id)
        check_id(endpoint_id, "endpoint_id")
        event = WebhookEndpointRemoved(
            card_id=card_id, command_id=command_id, at=datetime.now(UTC), endpoint_id=endpoint_id
        )
        return await self._append(event, _request_of(event))

    async def _append(self, event: NotifyEvent, request: dict[str, Any]) -> CommandResult:
        subjects = self.store.names.subjects
        marker = CommandRecorded(
            command_id=event.command_id,
            command_type=event_type(event),
            fingerprint=hashlib.sha256(_canonical.encode(request)).hexdigest(),
            outcome="accepted",
            card_id=event.card_id,
            at=event.at,
            event_types=(event_type(event),),
        )
        marker_subject = subjects.command_marker(event.command_id)
        try:
            positions = await self.store.append_batch(
                [
                    OutgoingMessage(subjects.notify_event(event.card_id, event), encode(event)),
                    # The marker is the commit: it must be the first message on its subject.
                    OutgoingMessage(
                        marker_subject, encode(marker), expect=Expectation(marker_subject, 0)
                    ),
                ]
            )
        except WrongLastSequence:
            found = await self.store.last_by_subject(marker_subject)
            if found is None:
                raise Conflict("the command's atomic batch was refused; retry") from None
            if decode_marker(found.data).fingerprint != marker.fingerprint:
                raise AlreadyExists(
                    f"command id {event.command_id} was used for a different command"
                ) from None
            return CommandResult(event.command_id, found.sequence, found.stream, True)
        last = positions[-1]
        return CommandResult(event.command_id, last.sequence, last.stream, False)


def _check_scope(command_id: str, card_id: str) -> None:
    check_id(command_id, "command_id")
    if card_id:
        check_id(card_id, "card_id")


def _check_kinds(kinds: tuple[str, ...]) -> tuple[NotificationKind, ...]:
    unknown = [k for k in kinds if k not in ALL_KINDS]
    if unknown:
        raise InvalidArgument(f"unknown notification kinds: {unknown}")
    return tuple(k for k in ALL_KINDS if k in kinds)  # canonical order, no repeats


def _request_of(event: NotifyEvent) -> dict[str, Any]:
    """The normalised request: the event without its id and decision time, its type included."""
    raw = msgspec.to_builtins(event)
    assert isinstance(raw, dict)
    raw.pop("command_id")
    raw.pop("at")
    return raw
