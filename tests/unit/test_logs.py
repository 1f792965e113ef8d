"""JSON log lines: the command's id on every line logged while it is handled, tracebacks as JSON
objects (masked like every other text), the trace's id when a span records."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.observability.logs import ContextFilter, JsonFormatter, about_command
from services.observability.tracing import tracer_provider
from services.runtime import setup_logging


def capture() -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    logger = logging.getLogger(f"test.logs.{id(out)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, out


def lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def fail(pan: str) -> None:
    try:
        int("not a number")
    except ValueError as exc:
        raise RuntimeError(f"card {pan} refused") from exc


def test_lines_about_a_command_carry_its_id_and_tracebacks_are_json() -> None:
    logger, out = capture()
    logger.info("before")
    with about_command("cmd-42"):
        logger.info("deciding")
        try:
            fail("4111 1111 1111 1111")
        except RuntimeError:
            logger.exception("command failed")
        logger.info("explicit wins", extra={"command_id": "other"})
    logger.info("after")
    before, deciding, failed, explicit, after = lines(out)
    assert "command_id" not in before and "command_id" not in after
    assert deciding["command_id"] == failed["command_id"] == "cmd-42"
    assert explicit["command_id"] == "other"
    exc = failed["exc"]
    assert exc["type"] == "RuntimeError"
    assert exc["message"] == "card ****1111 refused"  # masked, as every text value
    assert exc["frames"][-1]["function"] == "fail"
    assert all({"file", "line", "function", "code"} <= set(f) for f in exc["frames"])
    assert exc["cause"]["type"] == "ValueError"
    assert "4111" not in out.getvalue()


def test_lines_inside_a_span_carry_its_trace(monkeypatch: pytest.MonkeyPatch) -> None:
    provider = tracer_provider("test", SimpleSpanProcessor(InMemorySpanExporter()))
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)
    logger, out = capture()
    with trace.get_tracer("test").start_as_current_span("work") as span:
        logger.info("inside")
    logger.info("outside")
    inside, outside = lines(out)
    assert inside["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert inside["span_id"] == format(span.get_span_context().span_id, "016x")
    assert "trace_id" not in outside


def test_digits_inside_bytes_or_nested_values_are_masked_too() -> None:
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "plain", (), None)
    record.__dict__.update(
        raw=b"4111111111111111",  # msgspec alone would write base64: no digits to scan
        nested={"ids": ["tx-4111 1111 1111 1111"]},
    )
    line = JsonFormatter().format(record)
    assert "4111111111111111" not in line and "4111 1111" not in line
    parsed = json.loads(line)
    assert parsed["raw"] == "b'****1111'"
    assert parsed["nested"] == {"ids": ["tx-****1111"]}


class _Keep(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__()
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_service_logging_writes_json_lines_without_gathering_the_caller(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("_srcfile", "logThreads", "logProcesses", "logMultiprocessing"):
        monkeypatch.setattr(logging, name, getattr(logging, name))  # restored afterwards
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)
    setup_logging("test")
    records: list[logging.LogRecord] = []
    root.addHandler(_Keep(records))
    logging.getLogger("jetledger.test").info("hello", extra={"card_id": "c-1"})
    (record,) = records
    # nobody reads the caller's frame, thread or process: not gathered (the logging HOWTO's
    # "Optimization"), which is a quarter of a log call
    assert (record.lineno, record.thread, record.process) == (0, None, None)
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert (line["msg"], line["card_id"], line["level"]) == ("hello", "c-1", "info")


def test_trace_ids_are_never_masked_but_other_values_under_their_keys_are() -> None:
    logger, out = capture()
    digits = "1234567890123456"  # a run of 16 decimal digits: card-number shaped
    trace_id, span_id = digits + "abcdef0123456789", digits
    logger.info("plain", extra={"trace_id": trace_id, "span_id": span_id})
    logger.info("card 4111111111111111", extra={"trace_id": trace_id, "span_id": span_id})
    logger.info("forged", extra={"trace_id": "pan 4111111111111111"})
    plain, carded, forged = lines(out)
    assert (plain["trace_id"], plain["span_id"]) == (trace_id, span_id)
    assert (carded["trace_id"], carded["span_id"]) == (trace_id, span_id)
    assert carded["msg"] == "card ****1111"
    assert forged["trace_id"] == "pan ****1111"


def test_each_line_is_stamped_with_its_own_second_and_millisecond() -> None:
    formatter = JsonFormatter()
    stamps = []
    for second, msecs in (
        (1_764_770_400, 500),
        (1_764_770_400, 999),
        (1_764_770_401, 250),
        (1_764_770_400, 1),
    ):
        record = logging.LogRecord("t", logging.INFO, "", 0, "m", (), None)
        record.created, record.msecs = second + msecs / 1000, float(msecs)
        stamps.append(json.loads(formatter.format(record))["ts"])
    assert stamps == [
        "2025-12-03T14:00:00.500Z",
        "2025-12-03T14:00:00.999Z",
        "2025-12-03T14:00:01.250Z",
        "2025-12-03T14:00:00.001Z",
    ]
