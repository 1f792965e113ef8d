"""TigerBeetle, the performance peer, measured the way ``bench/intake_bench.py`` measures jetledger.

Formats a fresh single-replica data file in a temporary folder, starts the given ``tigerbeetle``
binary on a free loopback port, creates accounts, and times three phases through the official
Python client (``tigerbeetle`` on PyPI, pinned in the dev extras):

- ``seq_1x1``: one transfer per request, one at a time (latency p50/p99);
- ``async32x1``: 32 concurrent single-transfer requests (``ClientAsync``);
- ``seq_batch100``: 100 transfers per request, one request at a time.

Then it reads the server's RSS, stops it by pid and deletes the folder. Never run it at the same
time as jetledger's phases: the caller runs one after the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from services.localservers import free_port


@dataclass
class Phase:
    """One phase's throughput and latency quantiles (ms)."""

    per_s: float
    p50_ms: float
    p99_ms: float


@dataclass
class PeerResult:
    """What the peer measured."""

    seq_1x1: Phase
    async32x1: Phase
    seq_batch100: Phase
    rss_mb: float


def _quantiles(latencies: list[float]) -> tuple[float, float]:
    if len(latencies) < 2:
        value = latencies[0] * 1000 if latencies else 0.0
        return value, value
    q = statistics.quantiles(latencies, n=100)
    return q[49] * 1000, q[98] * 1000


def _rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _failed(results: Sequence[object]) -> list[object]:
    """The results that are not a success (0.17 answers every item, with a status)."""
    return [r for r in results if getattr(getattr(r, "status", None), "name", "") != "CREATED"]


def _format(binary: str, data_file: Path) -> bool:
    """Format the data file; return whether ``--development`` (no Direct IO) was needed."""
    base = [binary, "format", "--cluster=0", "--replica=0", "--replica-count=1"]
    done = subprocess.run([*base, str(data_file)], capture_output=True, text=True, check=False)
    if done.returncode == 0:
        return False
    data_file.unlink(missing_ok=True)
    subprocess.run([*base, "--development", str(data_file)], capture_output=True, check=True)
    return True


def _transfers(n: int, accounts: int, rng: random.Random, tb: object) -> list[object]:
    out = []
    for _ in range(n):
        debit = rng.randrange(1, accounts + 1)
        credit = rng.randrange(1, accounts)
        credit += credit >= debit
        out.append(
            tb.Transfer(  # type: ignore[attr-defined]
                id=tb.id(),  # type: ignore[attr-defined]
                debit_account_id=debit,
                credit_account_id=credit,
                amount=1,
                ledger=1,
                code=1,
            )
        )
    return out


def run_peer(binary: str, duration: float = 5.0, accounts: int = 10_000) -> PeerResult:
    """Run the three phases against a fresh server; stop it and delete its data afterwards."""
    import tigerbeetle as tb

    folder = Path(tempfile.mkdtemp(prefix="jetledger-tb-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        data_file = folder / "0_0.tigerbeetle"
        development = _format(binary, data_file)
        port = free_port()
        command = [binary, "start", f"--addresses=127.0.0.1:{port}"]
        if development:
            command.append("--development")
        with (folder / "server.log").open("ab") as log:
            proc = subprocess.Popen(
                [*command, str(data_file)], stdout=log, stderr=subprocess.STDOUT
            )
        address = f"127.0.0.1:{port}"
        client = tb.ClientSync(cluster_id=0, replica_addresses=address)
        try:
            # The first request waits until the server is up (it allocates its memory first).
            errors = _failed(
                client.create_accounts(
                    [tb.Account(id=i, ledger=1, code=1) for i in range(1, min(accounts, 8000) + 1)]
                )
            )
            if accounts > 8000:
                errors += _failed(
                    client.create_accounts(
                        [tb.Account(id=i, ledger=1, code=1) for i in range(8001, accounts + 1)]
                    )
                )
            if errors:
                raise RuntimeError(f"TigerBeetle refused accounts: {errors[:3]}")
            rng = random.Random(42)
            seq = _sync_phase(client, tb, 1, duration, accounts, rng)
            batch = _sync_phase(client, tb, 100, duration, accounts, rng)
        finally:
            client.close()
        concurrent = asyncio.run(_async_phase(tb, address, 32, duration, accounts, rng))
        return PeerResult(seq, concurrent, batch, _rss_mb(proc.pid))
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


def _sync_phase(
    client: object, tb: object, size: int, duration: float, accounts: int, rng: random.Random
) -> Phase:
    latencies: list[float] = []
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < duration:
        batch = _transfers(size, accounts, rng, tb)
        t0 = time.perf_counter()
        errors = _failed(client.create_transfers(batch))  # type: ignore[attr-defined]
        latencies.append(time.perf_counter() - t0)
        if errors:
            raise RuntimeError(f"TigerBeetle refused transfers: {errors[:3]}")
        done += size
    p50, p99 = _quantiles(latencies)
    return Phase(done / (time.perf_counter() - started), p50, p99)


async def _async_phase(
    tb: object, address: str, workers: int, duration: float, accounts: int, rng: random.Random
) -> Phase:
    client = tb.ClientAsync(cluster_id=0, replica_addresses=address)  # type: ignore[attr-defined]
    latencies: list[float] = []
    started = time.perf_counter()
    stop_at = started + duration

    async def worker() -> None:
        while time.perf_counter() < stop_at:
            batch = _transfers(1, accounts, rng, tb)
            t0 = time.perf_counter()
            errors = _failed(await client.create_transfers(batch))
            latencies.append(time.perf_counter() - t0)
            if errors:
                raise RuntimeError(f"TigerBeetle refused transfers: {errors[:3]}")

    try:
        await asyncio.gather(*(worker() for _ in range(workers)))
    finally:
        await client.close()
    p50, p99 = _quantiles(latencies)
    return Phase(len(latencies) / (time.perf_counter() - started), p50, p99)
