"""Ledger projection benchmark: steady projection rate, rebuild rate, raw ceilings, lag p99.

Run ``python -m bench.ledger_bench [--events 120000] [--cards 1000]`` (not part of ``make test``).
It starts its own nats-server and Postgres on loopback (or uses JETLEDGER_NATS_URL /
JETLEDGER_DATABASE_URL), fills a fresh stream with valid card events in atomic batches, and prints:

- raw ceilings of the same run: ordered-consumer read rate, Postgres COPY rate (entry rows/s);
- steady projection rate: the live projector catching up the whole stream (batch 500);
- rebuild rate: ``jetledger replay ledger`` as a child process (events/s, peak RSS);
- projection lag at ~1,000 events/s: publish → visible in the tracking row, p50/p99.

Everything is bounded in count and time and talks to loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import nats
import psycopg
from nats.js import JetStreamContext, api

from contracts.codec import encode
from contracts.events import SourceEvent
from contracts.subjects import StreamNames, Subjects
from projections.ledger.metrics import LedgerMetrics
from projections.ledger.migrate import apply_migrations
from projections.ledger.projector import Projector, ProjectorConfig
from projections.ledger.source import replay
from projections.ledger.store import ENTRY_COLUMNS, tracking_position
from services.localservers import local_or_external
from tests.ledgerkit import History

os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")


def make_history(events: int, cards: int) -> list[SourceEvent]:
    """A valid history of about ``events`` events over ``cards`` cards (≈2 entries per event)."""
    h = History()
    for n in range(cards):
        h.issue(f"c{n}", limit=50_000 if n % 2 else 0)
        h.fund(f"c{n}", 10**9)
    r = 0
    while len(h.events) < events:
        for n in range(cards):
            card = f"c{n}"
            h.purchase(card, f"m{(n + r) % 50}", 100 + r % 900)
            if r % 4 == 0:
                auth = h.authorize(card, f"m{n % 50}", 500)
                if auth is not None:
                    h.capture(card, auth, 300, f"m{n % 50}")
                    h.release(card, auth)
        r += 1
    return h.events[:events]


async def publish_atomic(
    js: JetStreamContext, nc: Any, streams: StreamNames, events: list[SourceEvent]
) -> int:
    """Append events in atomic batches of 500 (one fsync each); return the last sequence."""
    last = 0
    for start in range(0, len(events), 500):
        chunk = events[start : start + 500]
        batch_id = uuid.uuid4().hex
        for i, e in enumerate(chunk, start=1):
            headers = {"Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(i)}
            subject = streams.subjects.card_event(e.card_id, e)
            if i == len(chunk):
                headers["Nats-Batch-Commit"] = "1"
                reply = await nc.request(subject, encode(e), timeout=10, headers=headers)
                ack = api.PubAck.from_response(__import__("json").loads(reply.data))
                last = ack.seq
            else:
                await nc.publish(subject, encode(e), headers=headers)
    return last


async def read_ceiling(js: JetStreamContext, streams: StreamNames) -> tuple[int, float]:
    """Read every card event with the ordered consumer, doing nothing else."""
    t0 = time.perf_counter()
    n = 0
    async for _ in replay(js, streams.source, streams.subjects.all_cards):
        n += 1
    return n, time.perf_counter() - t0


async def copy_ceiling(db: str, rows: int) -> float:
    """COPY ``rows`` entry-shaped rows into a scratch table; return rows/s."""
    from datetime import UTC, datetime

    at = datetime.now(UTC)
    data = [
        ("S", i, 0, f"tx{i}", "c1", "card-c1", -100, "USD", "debit", -100 * i, "t.v1", at)
        for i in range(rows)
    ]
    async with await psycopg.AsyncConnection.connect(db) as conn:
        await conn.execute("CREATE TEMP TABLE scratch (LIKE ledger.entries INCLUDING ALL)")
        t0 = time.perf_counter()
        async with conn.transaction(), conn.cursor() as cur:
            cols = ", ".join(ENTRY_COLUMNS)
            async with cur.copy(f"COPY scratch ({cols}) FROM STDIN") as copy:
                for row in data:
                    await copy.write_row(row)
        return rows / (time.perf_counter() - t0)


async def projection_rate(db: str, js: JetStreamContext, streams: StreamNames, last: int) -> float:
    """Run the live projector from 0 to ``last``; return events/s."""
    projector = Projector(
        db, js, streams, LedgerMetrics(), ProjectorConfig(batch=500, fetch_timeout=0.5)
    )
    stop = asyncio.Event()
    t0 = time.perf_counter()
    task = asyncio.create_task(projector.run(stop))
    async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
        while True:
            if await tracking_position(conn, "ledger", streams.source) >= last:
                break
            await asyncio.sleep(0.02)
    elapsed = time.perf_counter() - t0
    stop.set()
    await task
    return elapsed


def rebuild_child(db: str, nats_url: str, streams: StreamNames) -> tuple[float, int, str]:
    """Run ``jetledger replay ledger`` as a child; return seconds, its peak RSS (KiB), summary."""
    env = {
        **os.environ,
        "JETLEDGER_NATS_URL": nats_url,
        "JETLEDGER_DATABASE_URL": db,
        "JETLEDGER_STREAM": streams.source,
        "JETLEDGER_DERIVED_STREAM": streams.derived,
        "JETLEDGER_SUBJECT_PREFIX": streams.subjects.prefix,
    }
    exe = Path(sys.executable).parent / "jetledger"
    t0 = time.perf_counter()
    peak = 0
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen([str(exe), "replay", "ledger"], env=env, stdout=out, stderr=out)
        # The child's own high-water mark (rusage after fork would include the parent's pages).
        while proc.poll() is None:
            try:
                status_text = Path(f"/proc/{proc.pid}/status").read_text()
                peak = max(
                    peak,
                    *(
                        int(line.split()[1])
                        for line in status_text.splitlines()
                        if line.startswith("VmHWM")
                    ),
                )
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        elapsed = time.perf_counter() - t0
        out.seek(0)
        text = out.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(text)
    summary = [line for line in text.splitlines() if line.startswith("rebuilt")]
    return elapsed, peak, summary[-1] if summary else text[-300:]


async def lag_at_rate(
    db: str, js: JetStreamContext, nc: Any, streams: StreamNames, rate: int, seconds: float
) -> list[float]:
    """Publish ``rate`` events/s for ``seconds`` with the projector live; return per-event lags."""
    events = make_history(int(rate * seconds) + 10, 50)[100:]  # skip issue/fund already present
    projector = Projector(
        db, js, streams, LedgerMetrics(), ProjectorConfig(batch=500, fetch_timeout=0.2)
    )
    stop = asyncio.Event()
    task = asyncio.create_task(projector.run(stop))
    sent: list[tuple[int, float]] = []
    seen: list[tuple[float, int]] = []
    done = asyncio.Event()

    async def watch() -> None:
        async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
            while not done.is_set():
                seen.append(
                    (time.perf_counter(), await tracking_position(conn, "ledger", streams.source))
                )
                await asyncio.sleep(0.002)

    watcher = asyncio.create_task(watch())
    per_tick = max(1, rate // 100)
    t0 = time.perf_counter()
    for tick, start in enumerate(range(0, len(events), per_tick)):
        chunk = events[start : start + per_tick]
        now = time.perf_counter()
        acks = await asyncio.gather(
            *(
                js.publish(
                    streams.subjects.card_event(e.card_id, e), encode(e), stream=streams.source
                )
                for e in chunk
            )
        )
        sent.extend((a.seq, now) for a in acks)
        await asyncio.sleep(max(0.0, t0 + (tick + 1) / 100 - time.perf_counter()))
    last = max(s for s, _ in sent)
    while True:
        if seen and seen[-1][1] >= last:
            break
        await asyncio.sleep(0.01)
    done.set()
    await watcher
    stop.set()
    await task
    lags = []
    i = 0
    for seq, at in sorted(sent):
        while seen[i][1] < seq:
            i += 1
        lags.append(seen[i][0] - at)
    return lags


async def main_async(args: argparse.Namespace) -> None:
    """Run every measurement once and print the numbers."""
    token = uuid.uuid4().hex[:8]
    streams = StreamNames(f"BENCH{token}", f"BENCH{token}_DERIVED", Subjects(f"b{token}."))
    lag_streams = StreamNames(f"LAG{token}", f"LAG{token}_DERIVED", Subjects(f"l{token}."))
    with (
        tempfile.TemporaryDirectory(prefix="ledger-bench-") as tmp,
        local_or_external(
            os.environ.get("JETLEDGER_NATS_URL", ""),
            os.environ.get("JETLEDGER_DATABASE_URL", ""),
            Path(tmp),
        ) as servers,
    ):
        nc = await nats.connect(servers.nats_url)
        js = nc.jetstream()
        for s in (streams, lag_streams):
            await js.add_stream(api.StreamConfig(
                name=s.source, subjects=s.subjects.source_stream_subjects(), allow_atomic=True,
                allow_direct=True, deny_delete=True, deny_purge=True, discard=api.DiscardPolicy.NEW,
            ))  # fmt: skip
        dbs = []
        async with await psycopg.AsyncConnection.connect(
            servers.database_url, autocommit=True
        ) as conn:
            for name in (f"bench_{token}", f"lag_{token}"):
                await conn.execute(f"CREATE DATABASE {name}".encode())
                dbs.append(servers.database_url.rsplit("/", 1)[0] + "/" + name)
        db, lag_db = dbs
        for d in dbs:
            async with await psycopg.AsyncConnection.connect(d) as conn:
                await apply_migrations(conn)
        print(f"generating {args.events} events over {args.cards} cards …", flush=True)
        history = make_history(args.events, args.cards)
        t0 = time.perf_counter()
        last = await publish_atomic(js, nc, streams, history)
        print(
            f"append (atomic batches of 500):   {len(history) / (time.perf_counter() - t0):>10,.0f} events/s"
        )
        n, secs = await read_ceiling(js, streams)
        print(f"ceiling: ordered-consumer read:   {n / secs:>10,.0f} events/s ({n} events)")
        copy_rate = await copy_ceiling(db, 200_000)
        print(
            f"ceiling: Postgres COPY entries:   {copy_rate:>10,.0f} rows/s (≈{copy_rate / 2:,.0f} events/s at 2 legs/event)"
        )
        secs = await projection_rate(db, js, streams, last)
        print(
            f"steady projection (live, b=500):  {len(history) / secs:>10,.0f} events/s ({secs:.1f}s)"
        )
        secs, rss, summary = await asyncio.to_thread(rebuild_child, db, servers.nats_url, streams)
        print(
            f"rebuild (jetledger replay ledger): {len(history) / secs:>9,.0f} events/s wall incl. start-up; peak RSS {rss / 1024:.0f} MiB"
        )
        print(f"  {summary}")
        await publish_atomic(js, nc, lag_streams, make_history(100, 50))
        lags = await lag_at_rate(lag_db, js, nc, lag_streams, args.rate, args.seconds)
        q = statistics.quantiles(lags, n=100)
        print(
            f"lag at {args.rate} events/s for {args.seconds:.0f}s: p50 {q[49] * 1000:.1f} ms, p99 {q[98] * 1000:.1f} ms, max {max(lags) * 1000:.1f} ms"
        )
        await nc.close()
    print(
        f"bench process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
    )


def main() -> None:
    """Parse arguments and run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=120_000)
    parser.add_argument("--cards", type=int, default=1_000)
    parser.add_argument("--rate", type=int, default=1_000, help="events/s for the lag measurement")
    parser.add_argument("--seconds", type=float, default=10.0)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
