"""Opaque tokens: watch cursors (a position per stream) and keyset page tokens.

A watch cursor holds, for every stream the projection consumes, the ``(sequence, sub)`` of the last
notification delivered from it. Each stream's notifications are committed in sequence order by the
single writer, so "everything after (sequence, sub) in this stream" never skips a row that becomes
visible later: a reconnecting watcher resumes with no gap and no repeat. Being positions in the
streams (not row ids), cursors stay valid across a rebuild, and name their stream (docs/architecture.md, §5).
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Final, TypeVar

import msgspec

from contracts.errors import InvalidArgument

_VERSION: Final = 1


class Cursor(msgspec.Struct, frozen=True):
    """Per stream, the (sequence, sub) of the last notification seen; absent streams start at 0."""

    positions: dict[str, tuple[int, int]] = msgspec.field(default_factory=dict)
    v: int = _VERSION

    def after(self, stream: str) -> tuple[int, int]:
        """The position in ``stream`` after which notifications are still to be read."""
        return self.positions.get(stream, (0, -1))

    def advanced(self, stream: str, sequence: int, sub: int) -> Cursor:
        """Return a cursor that has also seen ``(sequence, sub)`` of ``stream``."""
        return Cursor({**self.positions, stream: (sequence, sub)})


class PageToken(msgspec.Struct, frozen=True):
    """The keyset of the last row of a page: (occurred_at, notification_id)."""

    occurred_at: datetime
    notification_id: str
    v: int = _VERSION


def encode_token(value: Cursor | PageToken) -> str:
    """Encode a cursor or page token as URL-safe text."""
    return base64.urlsafe_b64encode(msgspec.json.encode(value)).decode().rstrip("=")


def decode_cursor(text: str) -> Cursor:
    """Decode a watch cursor (empty text is the start); raise ``InvalidArgument`` if malformed."""
    return Cursor() if not text else _decode(text, Cursor, "cursor")


def decode_page_token(text: str) -> PageToken | None:
    """Decode a page token (empty text is the first page); raise ``InvalidArgument`` if malformed."""
    return None if not text else _decode(text, PageToken, "page_token")


_T = TypeVar("_T", Cursor, PageToken)


def _decode(text: str, kind: type[_T], what: str) -> _T:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        value = msgspec.json.decode(raw, type=kind)
    except (binascii.Error, ValueError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise InvalidArgument(f"malformed {what}") from exc
    if value.v != _VERSION:
        raise InvalidArgument(f"unsupported {what} version {value.v}")
    return value
