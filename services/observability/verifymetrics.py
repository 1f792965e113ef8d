"""The result of ``jetledger verify`` as metrics, for the ``verify`` CronJob and its alert.

A CronJob's process is gone before Prometheus could scrape it, so the result is handed on: pushed
to a Prometheus Pushgateway (``--pushgateway URL``, push-add under job ``jetledger-verify``) or
written in the text format for node-exporter's textfile collector (``--metrics-file PATH``,
written to a temporary file and renamed, so a scrape never reads half a file). docs/metrics.md.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Final

from prometheus_client import CollectorRegistry, Gauge, pushadd_to_gateway, write_to_textfile

JOB: Final = "jetledger-verify"


def verify_registry(
    problems: int | None, seconds: float, *, at: float | None = None
) -> CollectorRegistry:
    """The verify run's series; ``problems`` is ``None`` when verify could not run at all."""
    registry = CollectorRegistry()
    Gauge(
        "jetledger_verify_success",
        "1 if the last verify run found the projections equal to the stream, else 0.",
        registry=registry,
    ).set(1 if problems == 0 else 0)
    Gauge(
        "jetledger_verify_problems",
        "Problems the last verify run found (-1: it could not run, e.g. NATS or Postgres away).",
        registry=registry,
    ).set(-1 if problems is None else problems)
    Gauge(
        "jetledger_verify_last_run_timestamp_seconds",
        "When the last verify run ended (Unix time).",
        registry=registry,
    ).set(time.time() if at is None else at)
    Gauge(
        "jetledger_verify_duration_seconds",
        "How long the last verify run took.",
        registry=registry,
    ).set(seconds)
    return registry


def report_verify(
    problems: int | None,
    seconds: float,
    *,
    metrics_file: str = "",
    pushgateway: str = "",
) -> None:
    """Write and/or push the run's result (nothing when neither is asked for)."""
    if not metrics_file and not pushgateway:
        return
    registry = verify_registry(problems, seconds)
    if metrics_file:
        target = Path(metrics_file)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_to_textfile(str(target), registry)  # temp file + rename: atomic for the scraper
    if pushgateway:
        pushadd_to_gateway(pushgateway, job=JOB, registry=registry, timeout=10)
