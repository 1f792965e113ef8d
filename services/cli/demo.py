"""``jetledger demo`` (what ``make demo`` runs): the whole system, a scripted story, proof, exit.

Starts the dev system in a fresh temporary data directory on free ports (so it is repeatable and
never collides with a running ``jetledger dev``), plays ``services/cli/scenario.py`` through gRPC,
prints the story, the balances and the notifications as tables, runs the ledger's ``verify`` and
the notifications' independent fold, shows each process's resident memory, stops everything and
exits 0 — or 1 when a number is not what the story promises or a verification fails.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from services.cli import ledger as ledger_cli
from services.cli.clients import connect
from services.cli.output import money, position
from services.cli.scenario import ScenarioResult, check, run_scenario
from services.dev import SERVICES, DevSystem, with_free_ports
from services.security.config import secure_locally
from services.settings import Settings

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

_MARKS = {"accepted": "[green]✓ accepted[/]", "declined": "[red]✗ declined[/]",
          "replayed": "[yellow]↺ replayed[/]"}  # fmt: skip


def register(subparsers: Subparsers) -> None:
    """Add ``demo``."""
    demo = subparsers.add_parser(
        "demo", help="start everything, play a day on two cards, verify, stop (make demo)"
    )
    demo.add_argument(
        "--keep", action="store_true", help="keep the temporary data directory afterwards"
    )
    demo.set_defaults(handler=run)


@dataclass
class DemoReport:
    """What the demo did, for tests: the scenario's result, the checks, memory and timings."""

    result: ScenarioResult
    problems: list[str] = field(default_factory=list)
    rss_kib: dict[str, int] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    started_in: float = 0.0
    seconds: float = 0.0
    data_dir: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def run(args: argparse.Namespace, settings: Settings) -> int:
    """The ``demo`` command: exit 0 when every check holds."""
    report = run_demo(secure_locally(settings), Console(highlight=False), keep=args.keep)
    return 0 if report.ok else 1


def run_demo(settings: Settings, out: Console, *, keep: bool = False) -> DemoReport:
    """Start the system in a temporary directory, play the story, verify, stop; report."""
    began = time.monotonic()
    data_dir = Path(tempfile.mkdtemp(prefix="jetledger-demo-"))
    settings = dataclasses.replace(with_free_ports(settings), data_dir=data_dir)
    # On servers of your own (JETLEDGER_NATS_URL/…_DATABASE_URL) earlier runs left their cards:
    # give this run's ids a suffix so the story plays the same every time.
    external = bool(settings.nats_url or settings.database_url)
    suffix = f"-{uuid.uuid4().hex[:6]}" if external else ""
    out.rule("[bold]jetledger demo[/] — a day on two cards")
    system = DevSystem(settings, fresh=True)
    failed = True
    try:
        with out.status("starting NATS, Postgres and the four services …"):
            system.start()
        started_in = time.monotonic() - began
        _show_system(out, system, started_in)
        with connect(system.settings) as clients, out.status("playing the story over gRPC …"):
            result = run_scenario(clients, suffix=suffix)
        report = DemoReport(result, check(result, suffix), started_in=started_in)
        _show_story(out, result)
        _show_balances(out, result)
        _show_notifications(out, result)
        report.problems += _verify(out, system.settings)
        report.rss_kib, report.pids = system.rss(), system.pids()
        _show_memory(out, report.rss_kib)
        failed = False
    finally:
        with out.status("stopping the services, NATS and Postgres …"):
            system.stop()
        if keep or failed:
            out.print(f"data and logs kept in {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)
    report.seconds = time.monotonic() - began
    report.data_dir = data_dir if keep else None
    for problem in report.problems:
        out.print(f"[bold red]problem:[/] {problem}")
    verdict = "[bold green]all checks hold[/]" if report.ok else "[bold red]checks failed[/]"
    out.print(f"{verdict} — demo done in {report.seconds:.1f}s; every process stopped.")
    return report


def _show_system(out: Console, system: DevSystem, seconds: float) -> None:
    s = system.settings
    ports = ", ".join(f"{name} :{getattr(s, f'{name}_port')}" for name in SERVICES)
    out.print(
        f"System up in {seconds:.1f}s — gRPC services {ports} on {s.host}; NATS {s.nats_url}"
        f" (stream {s.stream}, sync_interval: always); Postgres {s.database_url}"
    )
    if s.security:
        out.print(
            "Security on: TLS on every gRPC and NATS hop, a bearer token with roles on every call"
            " (the story plays as the operator), a NATS user per service (docs/security.md)\n"
        )
    else:
        out.print(
            "[yellow]Security off (JETLEDGER_SECURITY=off): plaintext, no authentication[/]\n"
        )


def _show_story(out: Console, result: ScenarioResult) -> None:
    table = Table("#", "what happens", "outcome", "recorded at", title="The story",
                  title_justify="left")  # fmt: skip
    for number, step in enumerate(result.steps, 1):
        outcome = _MARKS[step.outcome]
        if step.outcome != "accepted":
            outcome += f" — {step.detail}"
        table.add_row(str(number), step.text, outcome, position(result.stream, step.position))
    out.print(table)


def _show_balances(out: Console, result: ScenarioResult) -> None:
    table = Table("account", "posted", "pending", "available", title="Balances (ledger service,"
                  f" read-your-writes at ≥ {position(result.stream, result.position)})",
                  title_justify="left")  # fmt: skip
    totals: dict[str, int] = {}
    for b in result.balances.values():
        table.add_row(
            b.account_id,
            money(b.posted, b.currency),
            money(b.pending, b.currency),
            money(b.available, b.currency),
        )
        totals[b.currency] = totals.get(b.currency, 0) + b.posted
    out.print(table)
    sums = ", ".join(f"{money(total, currency)}" for currency, total in sorted(totals.items()))
    out.print(f"Σ posted over every account = {sums} (double entry: every leg has a twin)\n")


def _show_notifications(out: Console, result: ScenarioResult) -> None:
    table = Table("kind", "count", "latest", title="Notifications (notification service)",
                  title_justify="left")  # fmt: skip
    for kind, count in sorted(result.notifications.items()):
        if kind != "posted":
            table.add_row(kind, str(count), result.latest_message.get(kind, ""))
    out.print(table)
    posted = result.notifications.get("posted", 0)
    out.print(f"… plus {posted} 'posted' notices, one per ledger entry on a card account\n")


def _verify(out: Console, settings: Settings) -> list[str]:
    """``jetledger verify``: both projections against independent folds of the streams."""
    out.print("[bold]jetledger verify[/] — the tables against independent folds of the stream:")
    return asyncio.run(ledger_cli.check_projections(settings, out))


def _show_memory(out: Console, rss: dict[str, int]) -> None:
    parts = [f"{name} {kib / 1024:.0f} MB" for name, kib in rss.items()]
    out.print(f"\nResident memory after the story: {' · '.join(parts)} (Postgres: the postmaster)")
