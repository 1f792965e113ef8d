"""``jetledger events tail``: read the event stream itself, straight from JetStream.

The stream is the source of truth, so this reads it directly (an ordered consumer through
``EventStore.replay``), not a projection. Subject filters are relative to the configured prefix,
e.g. ``--subject card.alice`` (every event of one card) or ``'card.*'``. Webhook secrets, which
preference events carry, are masked.

This module also registers ``balance`` and ``entries`` (``services/cli/accounts.py``) when no
earlier area did: it is the last area ``services/cli/main.py`` loads.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
from typing import TYPE_CHECKING, Any

import msgspec
from rich.text import Text

from contracts.errors import InvalidArgument
from eventstore import StoredMessage
from services.cli import accounts
from services.cli.output import console, money
from services.dev.state import running_settings
from services.settings import Settings
from services.wiring import command_store

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

_SECRET_KEYS = frozenset({"secret"})


def register(subparsers: Subparsers) -> None:
    """Add ``events tail`` (and ``balance``/``entries`` if still missing)."""
    area = subparsers.add_parser("events", help="read the event stream directly")
    actions = area.add_subparsers(dest="action", metavar="ACTION", required=True)
    tail = actions.add_parser("tail", help="the last events of the stream (and follow it)")
    tail.add_argument(
        "--subject", action="append", default=[], help="subject filter, e.g. card.alice or 'card.*'"
    )
    tail.add_argument("--last", type=int, default=20, metavar="N", help="show the last N events")
    tail.add_argument("--from-seq", type=int, default=0, metavar="N", help="start at sequence N")
    tail.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    tail.add_argument(
        "--max", type=int, default=0, metavar="N", help="with --follow: stop after N new events"
    )
    tail.add_argument(
        "--derived", action="store_true", help="the derived stream (ledger.entry_created)"
    )
    tail.add_argument("--json", action="store_true", help="one JSON object per line")
    tail.set_defaults(handler=tail_events)
    accounts.register(subparsers)


def tail_events(args: argparse.Namespace, settings: Settings) -> int:
    """Print events from the stream."""
    settings = running_settings(settings)
    if not settings.nats_url:
        raise InvalidArgument("set JETLEDGER_NATS_URL (or start `jetledger dev` first)")
    if args.last < 1 or args.from_seq < 0 or args.max < 0:
        raise InvalidArgument("--last must be at least 1; --from-seq and --max not negative")
    return asyncio.run(_tail(args, settings))


async def _tail(args: argparse.Namespace, settings: Settings) -> int:
    async with command_store(settings) as store:
        stream = settings.derived_stream if args.derived else settings.stream
        prefix = settings.subject_prefix
        filters = [s if prefix and s.startswith(prefix) else prefix + s for s in args.subject]
        last = await store.last_sequence(stream)
        start = args.from_seq or 1
        if not args.from_seq and not filters:
            start = max(1, last - args.last + 1)  # no filter: the window is exact
        window: collections.deque[StoredMessage] | None = None
        if not args.from_seq:
            window = collections.deque(maxlen=args.last)
        async for message in store.replay(start, filters, stream=stream):
            if window is not None:
                window.append(message)
            else:
                _show(message, settings, args.json)
        for message in window or ():
            _show(message, settings, args.json)
        if args.follow:
            shown = 0
            following = store.replay(last + 1, filters, stream=stream, follow=True)
            async with contextlib.aclosing(following) as messages:  # --max leaves it early
                async for message in messages:
                    _show(message, settings, args.json)
                    shown += 1
                    if shown == args.max:
                        break
    return 0


def _decode(message: StoredMessage) -> dict[str, Any]:
    try:
        data = msgspec.json.decode(message.data)
    except msgspec.DecodeError:
        return {"type": "(undecodable)", "size": len(message.data)}
    if not isinstance(data, dict):
        return {"type": "(not an object)"}
    return {k: ("••••" if k in _SECRET_KEYS else v) for k, v in data.items()}


def _show(message: StoredMessage, settings: Settings, as_json: bool) -> None:
    event = _decode(message)
    subject = message.subject.removeprefix(settings.subject_prefix)
    if as_json:
        record = {
            "stream": message.stream,
            "sequence": message.sequence,
            "subject": subject,
            "time": message.time.isoformat(),
            "event": event,
        }
        print(json.dumps(record, default=str), flush=True)
        return
    line = Text.assemble(
        (f"{message.sequence:>7} ", "bold"),
        (message.time.strftime("%H:%M:%S "), "dim"),
        (f"{subject:<44} ", "cyan"),
        (f"{event.get('type', '')!s:<28} ", "magenta"),
        describe(event),
    )
    console().print(line, soft_wrap=True)


def describe(event: dict[str, Any]) -> str:
    """A few words about an event: card, amount, merchant, outcome, reason."""
    parts: list[str] = []
    currency = str(event.get("currency") or "")
    for key in ("card_id", "account_id", "outcome", "command_type"):
        if event.get(key):
            parts.append(f"{key.removesuffix('_id')}={event[key]}")
    for key in ("amount", "released", "balance_after"):
        if isinstance(event.get(key), int) and currency:
            parts.append(f"{key}={money(event[key], currency)}")
    for key in ("merchant_id", "authorization_id", "original_transaction_id", "reason"):
        if event.get(key):
            parts.append(f"{key.removesuffix('_id')}={event[key]}")
    return " ".join(parts)
