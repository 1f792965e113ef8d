"""``jetledger dev``: run the whole system on this machine until Ctrl-C (or SIGTERM).

Starts NATS and Postgres from their PyPI wheels (or uses ``JETLEDGER_NATS_URL`` /
``JETLEDGER_DATABASE_URL``), the four services as supervised child processes on the configured
ports, prints every endpoint, shows the services' JSON logs as readable lines, restarts a crashed
service with backoff, and stops everything in order. Data stays in ``JETLEDGER_DATA_DIR``
(``.jetledger``) between runs unless ``--fresh``.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.text import Text

from services.dev import SERVICES, DevSystem
from services.dev.logs import LEVEL_ORDER, LogFollower, level_at_least, readable
from services.security.config import secure_locally
from services.settings import Settings

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

_STYLES = {"error": "bold red", "warning": "yellow", "info": "green"}


def register(subparsers: Subparsers) -> None:
    """Add ``dev``."""
    dev = subparsers.add_parser(
        "dev", help="run NATS, Postgres and the four services locally until Ctrl-C"
    )
    dev.add_argument("--fresh", action="store_true", help="delete the data of earlier runs first")
    dev.add_argument("--data-dir", type=Path, default=None, help="default: JETLEDGER_DATA_DIR")
    dev.add_argument(
        "--log-level",
        choices=LEVEL_ORDER,
        default="info",
        help="show service log lines at this level and above (default info)",
    )
    dev.set_defaults(handler=run_dev)


class _Signals:
    """SIGINT/SIGTERM: abort a start-up in progress, or ask the supervision loop to stop."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.running = False
        self._previous: dict[int, Any] = {}

    def __call__(self, _signum: int, _frame: FrameType | None) -> None:
        if not self.running:
            raise KeyboardInterrupt  # DevSystem.start() cleans up what it started, then re-raises
        self.stop.set()

    def install(self) -> None:
        """Handle SIGINT and SIGTERM here, remembering the handlers they replace."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self)

    def restore(self) -> None:
        """Put the previous handlers back (``main(["dev"])`` may run inside another program)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def run_dev(args: argparse.Namespace, settings: Settings) -> int:
    """Run the dev system until a signal; exit 0 after a clean stop."""
    if args.data_dir is not None:
        settings = dataclasses.replace(settings, data_dir=args.data_dir)
    settings = secure_locally(settings)
    out = Console(highlight=False)

    def notify(level: str, message: str) -> None:
        out.print(f"[{_STYLES.get(level, '')}]dev: {message}[/]")

    signals = _Signals()
    signals.install()
    system = DevSystem(settings, fresh=args.fresh, notify=notify)
    began = time.monotonic()
    try:
        with out.status("starting NATS, Postgres and the four services"):
            system.start()
        signals.running = True
        show_endpoints(out, system, time.monotonic() - began)
        follower = LogFollower()
        for name in SERVICES:
            follower.follow(name, system.log_dir / f"{name}.log")
        while not signals.stop.wait(0.25):
            system.poll()
            for name, line in follower.read():
                level, text = readable(name, line)
                if level_at_least(level, args.log_level):
                    out.print(text, soft_wrap=True)
    finally:
        # Also reached when a signal aborts the start-up; stop() is safe on a partial system,
        # and a second Ctrl-C from here on only sets the event: the shutdown is never cut short.
        signals.running = True
        out.print("[dim]dev: stopping the services, then NATS and Postgres …")
        system.stop()
        signals.restore()
    out.print(f"dev: stopped; data kept in {system.data.root}")
    return 0


def grpcurl_flags(settings: Settings) -> str:
    """How grpcurl reaches the services: TLS against the local CA with the operator's token."""
    if not settings.security:
        return "-plaintext"
    return (
        '-cacert "$JETLEDGER_TLS_CA_FILE" -H "authorization: Bearer $(cat "$JETLEDGER_TOKEN_FILE")"'
    )


_LABELS = {"nats": "NATS", "nats_monitor": "NATS monitor", "postgres": "Postgres"}


def _label(name: str) -> tuple[str, str]:
    """An endpoint's label and whose pid goes beside it: ``card`` → (``card gRPC``, ``card``),
    ``card_metrics`` → (``card metrics``, ``""``): a process's pid is shown once."""
    if name in _LABELS:
        return _LABELS[name], "" if name.endswith("_monitor") else name
    service, _, kind = name.partition("_")
    return f"{service} {kind or 'gRPC'}", "" if kind else service


def show_endpoints(out: Console, system: DevSystem, seconds: float) -> None:
    """Print where everything listens, and how to reach it from another terminal."""
    s = system.settings
    endpoints = system.endpoints()
    pids = system.pids()
    rows: list[tuple[str, str, str]] = []
    for name, address in endpoints.items():
        label, owner = _label(name)
        external = owner in ("nats", "postgres") and owner not in pids
        rows.append((label, address, "(external)" if external else str(pids.get(owner, ""))))
    out.print(
        f"[bold green]jetledger dev is up[/] in {seconds:.1f}s — data in {system.data.root}"
        " (kept between runs; --fresh starts over)",
        soft_wrap=True,
    )
    # Aligned lines rather than a rich Table: a table narrower than its content crops cells, and
    # an endpoint is copied whole. With soft wrapping a narrow terminal folds a line, never cuts it.
    label_width = max(len(label) for label, _, _ in rows) + 2
    address_width = max(len(address) for _, address, _ in rows) + 2
    for label, address, pid in rows:
        line = Text.assemble((label.ljust(label_width), "bold"), address)
        if pid:
            line.append(" " * (address_width - len(address)))
            line.append(f"pid {pid}" if pid.isdigit() else pid, style="dim")
        out.print(line, soft_wrap=True)
    out.print(
        f"logs: {system.log_dir}/<service>.log (JSON lines; shown below, readable)", soft_wrap=True
    )
    out.print(
        "from another terminal:\n"
        f"  source {system.data.env_file}   [dim]# these endpoints as JETLEDGER_* variables[/]\n"
        "  jetledger card list\n"
        f"  grpcurl {grpcurl_flags(s)} {s.host}:{s.card_port} list\n"
        "Ctrl-C stops everything.",
        soft_wrap=True,
    )
