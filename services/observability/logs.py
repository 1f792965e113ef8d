"""JSON log lines: the command a line is about, the trace it belongs to, tracebacks as JSON.

A line logged while a command is handled carries ``command_id`` without each call site passing it:
``about_command`` sets it for the current task (a ``ContextVar``), ``ContextFilter`` copies it, and
the current span's ``trace_id``/``span_id``, onto every record. Every text value, nested ones
included, passes through ``mask_card_numbers`` (as every other output of jetledger does), except
the trace's own hex ids.

A line of plain values (text, numbers) costs ~25 µs to format (it was ~45): msgspec encodes it,
and only if the whole line may hold something shaped like a card number (a one-pass byte check,
then a regex scan: ``contracts.ids.needs_masking``) is it encoded again with each text value
masked. A line carrying anything else (a traceback, a dict, bytes
— which msgspec would write as base64, hiding digits from the scan) takes the masked path at once.
That matters where a line is a product, not a diagnostic: the notification service writes one per
notification.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
import traceback
from collections.abc import Iterator
from contextvars import ContextVar
from types import TracebackType
from typing import Any, Final

import msgspec
from opentelemetry import trace

from contracts.ids import mask_card_numbers, needs_masking

COMMAND_ID: Final[ContextVar[str | None]] = ContextVar("jetledger_command_id", default=None)
MAX_FRAMES: Final = 30  # the innermost frames of a traceback; the rest is counted, not listed


@contextlib.contextmanager
def about_command(command_id: str | None) -> Iterator[None]:
    """Every line logged inside this block (in this task) carries ``command_id``."""
    if not command_id:
        yield
        return
    token = COMMAND_ID.set(command_id)
    try:
        yield
    finally:
        COMMAND_ID.reset(token)


class ContextFilter(logging.Filter):
    """Adds ``command_id`` (when a command is being handled) and ``trace_id``/``span_id`` (when a
    span is recording) to records that do not carry them already."""

    def filter(self, record: logging.LogRecord) -> bool:
        command_id = COMMAND_ID.get()
        if command_id is not None and not hasattr(record, "command_id"):
            record.command_id = command_id
        span = trace.get_current_span().get_span_context()
        if span.is_valid and not hasattr(record, "trace_id"):
            record.trace_id = format(span.trace_id, "032x")
            record.span_id = format(span.span_id, "016x")
        return True


def exception_json(
    exc_type: type[BaseException] | None,
    exc: BaseException | None,
    tb: TracebackType | None,
    *,
    depth: int = 0,
) -> dict[str, Any]:
    """A traceback as data: type, message, frames (innermost last) and the cause's, if any."""
    frames = traceback.extract_tb(tb)
    listed = frames[-MAX_FRAMES:]
    out: dict[str, Any] = {
        "type": exc_type.__name__ if exc_type is not None else "",
        "message": str(exc) if exc is not None else "",
        "frames": [
            {"file": f.filename, "line": f.lineno, "function": f.name, "code": f.line or ""}
            for f in listed
        ],
    }
    if len(frames) > len(listed):
        out["frames_omitted"] = len(frames) - len(listed)
    cause = None
    if exc is not None:
        cause = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    if cause is not None and depth < 3:
        out["cause"] = exception_json(type(cause), cause, cause.__traceback__, depth=depth + 1)
    return out


def masked(value: Any) -> Any:
    """``value`` with every string in it, however nested, passed through ``mask_card_numbers``."""
    if isinstance(value, str):
        return mask_card_numbers(value)
    if isinstance(value, dict):
        return {key: masked(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [masked(item) for item in value]
    return value


class JsonFormatter(logging.Formatter):
    """One JSON object per line; extra fields (command_id, trace_id, …) are carried through."""

    _skip = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message"}

    _second: tuple[int, str] = (-1, "")  # the last second formatted, and its text

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second[0]:  # a busy service logs many lines a second
            self._second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        payload: dict[str, Any] = {
            "ts": f"{self._second[1]}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        payload.update({k: v for k, v in record.__dict__.items() if k not in self._skip})
        if record.exc_info and record.exc_info[0] is not None:
            payload["exc"] = exception_json(*record.exc_info)
        if record.stack_info:
            payload["stack"] = record.stack_info
        ids = _trace_ids(payload)
        if _PLAIN.issuperset(map(type, payload.values())):
            line = _encoder.encode(payload).decode()
            if not needs_masking(line):
                return line[:-1] + ids + "}"
        line = json.dumps(masked(payload), default=lambda value: mask_card_numbers(str(value)))
        return line[:-1] + ids + "}"


def _trace_ids(payload: dict[str, Any]) -> str:
    """Take ``trace_id``/``span_id`` out of ``payload`` and return them as JSON members (with a
    leading comma), when they are the lowercase hex ids a trace carries.

    They are ours, not text from outside, and a random 128-bit id in hex has a run of 13+ decimal
    digits often enough (about one trace in 25) for the card-number mask to garble it and break
    the link from a log line to its trace. Anything else under those keys stays in ``payload`` and
    is masked like every other value.
    """
    out = ""
    for key, pattern in _TRACE_IDS:
        value = payload.get(key)
        if isinstance(value, str) and pattern.fullmatch(value):
            del payload[key]
            out += f',"{key}":"{value}"'
    return out


# What msgspec and the scan see alike: exact types (a str or int subclass takes the masked path).
_PLAIN: Final = frozenset({str, int, float, bool, type(None)})
_encoder: Final = msgspec.json.Encoder()
_TRACE_IDS: Final = (
    ("trace_id", re.compile(r"[0-9a-f]{32}")),
    ("span_id", re.compile(r"[0-9a-f]{16}")),
)
