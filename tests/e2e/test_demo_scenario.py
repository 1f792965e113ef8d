"""``make demo`` in the suite: ``jetledger demo`` on its own NATS, Postgres and four service
processes, with the story's final balances and notification counts checked number by number.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from typing import Any

import pytest

from services.cli import demo as demo_cli
from services.cli.demo import DemoReport, run_demo
from services.cli.main import main
from services.cli.scenario import EXPECTED_OUTCOMES, EXPECTED_POSTED
from services.dev.state import is_alive
from services.settings import ENV_PREFIX

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def demo() -> tuple[DemoReport, str]:
    """``jetledger demo`` through ``main``, exactly as ``make demo`` runs it, with its report."""
    reports: list[DemoReport] = []

    def keep_report(*args: Any, **kwargs: Any) -> DemoReport:
        reports.append(run_demo(*args, **kwargs))
        return reports[-1]

    out = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out):
        for key in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
            patch.delenv(key)  # local servers in a temporary directory, free ports
        patch.setenv("COLUMNS", "140")
        patch.setattr(demo_cli, "run_demo", keep_report)
        status = main(["demo"])
    report = reports[0]
    assert status == (0 if report.ok else 1)
    return report, out.getvalue()


def test_the_demo_passes_its_own_checks_and_verify(demo: tuple[DemoReport, str]) -> None:
    report, output = demo
    assert report.ok, report.problems
    assert "OK LEDGER up to sequence" in output and "OK notifications" in output
    assert "all checks hold" in output
    assert "Security on: TLS on every gRPC and NATS hop" in output  # make demo runs secure


def test_final_balances(demo: tuple[DemoReport, str]) -> None:
    balances = demo[0].result.balances
    assert {a: b.posted for a, b in balances.items()} == EXPECTED_POSTED
    assert balances["card-alice"].available == 100_50  # debit: what is left
    assert balances["card-bob"].available == 500_00 - 69_99  # credit: limit minus what is owed
    assert all(b.pending == 0 for b in balances.values())  # the hold was captured, then voided
    assert sum(b.posted for b in balances.values()) == 0


def test_notification_counts(demo: tuple[DemoReport, str]) -> None:
    assert demo[0].result.notifications == {
        "funding": 1,
        "purchase": 2,
        "hold": 1,
        "capture": 1,
        "void": 1,
        "refund": 1,
        "decline": 2,  # insufficient funds, frozen card; the retried decline is not a new one
        "posted": 5,  # one per entry on a card account: 3 for Alice, 2 for Bob
    }


def test_outcomes_declines_and_retries(demo: tuple[DemoReport, str]) -> None:
    result = demo[0].result
    assert [s.outcome for s in result.steps] == EXPECTED_OUTCOMES
    assert "insufficient_funds" in result.step("Alice tries").detail
    assert "card_frozen" in result.step("Someone tries").detail
    retried = result.step("The coffee shop")
    assert retried.position == result.step("Alice buys a coffee").position
    assert result.step("Alice retries").position == result.step("Alice tries").position


def test_everything_stopped_and_nothing_secret_printed(demo: tuple[DemoReport, str]) -> None:
    report, output = demo
    assert set(report.rss_kib) == {"card", "transaction", "ledger", "notification", "nats",
                                   "postgres"}  # fmt: skip
    assert not any(is_alive(pid) for pid in report.pids.values())
    assert report.data_dir is None  # the temporary directory is gone
    assert re.search(r"\d{13,19}", output) is None  # never a card number
    assert "cvv" not in output.lower()
