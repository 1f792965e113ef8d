"""Concurrent purchases on one card across 2 and 4 intake processes (``bench/race_bench.py``).

No ABORTED (conflicts are retried until the caller's deadline), no overdraft, one outcome per id.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path

import pytest

from bench.race_bench import race
from services.localservers import free_port
from services.settings import Settings
from tests.e2e.support import service_env, spawn_service, wait_serving


@pytest.mark.parametrize(
    ("processes", "one_port"), [(2, False), (4, False), (2, True)], ids=["2", "4", "2-one-port"]
)
async def test_racing_purchases_on_one_card_never_abort_or_overdraw(
    settings: Settings, tmp_path: Path, processes: int, one_port: bool
) -> None:
    card_port = free_port()
    shared = free_port()
    # one_port: the processes share one listening port (SO_REUSEPORT), as behind one Service
    tx_ports = [shared if one_port else free_port() for _ in range(processes)]
    procs = [
        spawn_service(
            "services.card.main",
            service_env(settings, card_port=card_port, card_metrics_port=free_port()),
            tmp_path / "card.log",
        )
    ]
    for index, port in enumerate(tx_ports):
        env = service_env(
            settings,
            transaction_port=port,
            transaction_metrics_port=free_port(),
            card_service_addr=f"127.0.0.1:{card_port}",
            transaction_reuse_port=one_port,
        )
        procs.append(
            spawn_service("services.transaction.main", env, tmp_path / f"intake{index}.log")
        )
    try:
        await asyncio.gather(wait_serving(card_port, 60), *(wait_serving(p, 60) for p in tx_ports))
        for proc in procs:
            assert proc.poll() is None, "every process is serving (none failed to bind)"
        result = await race(settings, card_port, tx_ports, purchases=50)
        assert result.problems == [], result.problems
        assert "ABORTED" not in result.statuses
        assert result.statuses["FAILED_PRECONDITION"] > 0, "the limit should have refused some"
        assert all(proc.poll() is None for proc in procs), "a process exited (failed to bind?)"
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
