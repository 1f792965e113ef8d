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
from rich.table import Table

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

    def __call__(self, signum: int, frame: FrameType | None) -> None:
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


def show_endpoints(out: Console, system: DevSystem, seconds: float) -> None:
    """Print where everything listens, and how to reach it from another terminal."""
    s = system.settings
    table = Table("", "listens on", "also", "pid", box=None, padding=(0, 2, 0, 0))
    pids = system.pids()
    for name in SERVICES:
        port, metrics = getattr(s, f"{name}_port"), getattr(s, f"{name}_metrics_port")
        table.add_row(
            name, f"{s.host}:{port} gRPC", f"metrics :{metrics}/metrics", str(pids.get(name, ""))
        )
    monitor = f"monitor {system.nats.monitor_url}" if system.nats else "(external)"
    table.add_row("NATS", s.nats_url, monitor, str(pids.get("nats", "")))
    table.add_row(
        "Postgres",
        s.database_url,
        "" if system.postgres else "(external)",
        str(pids.get("postgres", "")),
    )
    out.print(
        f"[bold green]jetledger dev is up[/] in {seconds:.1f}s — data in {system.data.root}"
        " (kept between runs; --fresh starts over)"
    )
    out.print(table)
    out.print(f"logs: {system.log_dir}/<service>.log (JSON lines; shown below, readable)")
    out.print(
        "from another terminal:\n"
        f"  source {system.data.env_file}   [dim]# these endpoints as JETLEDGER_* variables[/]\n"
        "  jetledger card list\n"
        f"  grpcurl {grpcurl_flags(s)} {s.host}:{s.card_port} list\n"
        "Ctrl-C stops everything."
    )
