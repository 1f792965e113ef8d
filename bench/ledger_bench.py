"""Ledger projection benchmark: ceilings, steady projection, rebuild, lag — one run, one machine.

Run ``python -m bench.ledger_bench [--events 120000] [--cards 1000] [--json]`` (not part of
``make test``). It starts its own nats-server and Postgres on loopback (or uses
JETLEDGER_NATS_URL / JETLEDGER_DATABASE_URL), fills a fresh stream with valid card events in atomic
batches, and measures, in this order:

- ceilings of the same run: a nats-py ordered consumer reading the stream and doing nothing else
  (the client the read side used to be bound by), the event store's reader doing nothing else, and
  Postgres COPY of a prepared entries payload (rows/s, and events/s at this history's legs/event);
- steady projection: the live runner projecting the whole stream from 0 (batch 500 growing to 5,000 under
  load, as the service; relay on); the CPU an event of each process in every phase;
- rebuild: ``jetledger replay ledger`` as a child process (wall time including start-up, its own
  rate, resident memory by half-way and at the end: flat means bounded);
- lag at a steady rate: publish → visible in the tracking row, p50/p99.

``--json`` prints one JSON object with every figure, the ceilings and the targets. Everything is
bounded in count and time and talks to loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
import psycopg
from nats.js import api

from bench.histories import History
from bench.support import tree_cpu_seconds
from contracts.codec import encode
from contracts.events import SourceEvent
from contracts.subjects import StreamNames, Subjects
from eventstore import EventStore, OutgoingMessage
from eventstore.loop import run_loop
from projections import tracking
from projections.ledger.metrics import LedgerMetrics
from projections.ledger.migrate import apply_migrations
from projections.ledger.projection import LedgerProjection
from projections.ledger.store import ENTRY_COLUMNS, copy_text
from projections.metrics import ProjectionMetrics
from projections.runner import ProjectionRunner, RunnerConfig
from services.localservers import local_or_external

os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")

TARGETS = {
    "rebuild_events_per_s": 40_000,
    "rebuild_vs_copy": 0.3,
    "steady_events_per_s": 15_000,
    "lag_p99_ms_at_1000_per_s": 50.0,
}


def cpu_now(servers: Any) -> dict[str, float]:
    """CPU seconds so far of this process, its ended children (the rebuild), Postgres, nats-server."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    pg, ns = getattr(servers, "postgres", None), getattr(servers, "nats", None)
    return {
        "bench": time.process_time(),
        "rebuild": children.ru_utime + children.ru_stime,
        "postgres": tree_cpu_seconds(None if pg is None else pg.pid),
        "nats": tree_cpu_seconds(None if ns is None else ns.pid),
    }


def cpu_per_event(
    servers: Any, before: dict[str, float], events: int, *parts: str
) -> dict[str, float]:
    """µs of CPU an event since ``before`` for each of ``parts``, and the rate those figures allow
    on two otherwise idle cores (each part on one core at most, all of them sharing two)."""
    after = cpu_now(servers)
    out = {f"{k}_us": 1e6 * (after[k] - before[k]) / events for k in parts}
    busiest, total = max(out.values()), sum(out.values())
    out["cpu_bound_events_per_s_2_cores"] = 1e6 / max(busiest, total / 2, 1e-9)
    return out


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


async def fill(store: EventStore, events: list[SourceEvent]) -> int:
    """Append events in atomic batches of 500 (one fsync each); return the last sequence."""
    subjects = store.names.subjects
    last = 0
    for start in range(0, len(events), 500):
        chunk = events[start : start + 500]
        positions = await store.append_batch(
            [OutgoingMessage(subjects.card(e.card_id), encode(e)) for e in chunk]
        )
        last = positions[-1].sequence
    return last


async def nats_py_ceiling(nc: Any, store: EventStore) -> float:
    """Read every card event with a nats-py ordered pull consumer, doing nothing else."""
    js = nc.jetstream()
    names = store.names
    config = api.ConsumerConfig(
        ack_policy=api.AckPolicy.NONE,
        deliver_policy=api.DeliverPolicy.ALL,
        filter_subject=names.subjects.all_cards,
        mem_storage=True,
        inactive_threshold=30.0,
    )
    sub = await js.pull_subscribe("", stream=names.source, config=config)
    total = await store.last_sequence()
    seen = 0
    started = time.perf_counter()
    while seen < total:
        msgs = await sub.fetch(1000, timeout=5)
        seen += len(msgs)
        if msgs[-1].metadata.num_pending == 0:
            break
    elapsed = time.perf_counter() - started
    await sub.unsubscribe()
    return seen / elapsed


async def reader_ceiling(store: EventStore) -> float:
    """Read every card event with the event store's reader, doing nothing else."""
    started = time.perf_counter()
    seen = 0
    async for got in store.replay_batches(0, [store.names.subjects.all_cards], server_filter=False):
        seen += len(got.messages)
    return seen / (time.perf_counter() - started)


async def copy_ceiling(db: str, rows: int) -> float:
    """COPY a prepared payload of ``rows`` entry rows into a scratch table; return rows/s."""
    at = datetime.now(UTC)
    payload = copy_text(
        ("S", i, 0, f"tx{i}", "c1", "card-c1", -100, "USD", "debit", -100 * i, "t.v1", at)
        for i in range(rows)
    )
    async with await psycopg.AsyncConnection.connect(db) as conn:
        await conn.execute("CREATE TEMP TABLE scratch (LIKE ledger.entries INCLUDING ALL)")
        started = time.perf_counter()
        async with conn.transaction(), conn.cursor() as cur:
            cols = ", ".join(ENTRY_COLUMNS)
            async with cur.copy(f"COPY scratch ({cols}) FROM STDIN".encode()) as copy:
                await copy.write(payload)
        return rows / (time.perf_counter() - started)


def runner(db: str, store: EventStore, batch: int = 500) -> ProjectionRunner:
    """The live ledger projection, as the service builds it."""
    metrics = LedgerMetrics()
    return ProjectionRunner(
        LedgerProjection(db, store, metrics),
        store,
        db,
        ProjectionMetrics(metrics.registry),
        RunnerConfig(batch=batch, max_batch=10 * batch),  # as the service: 500 growing to 5,000
    )


async def steady_rate(db: str, store: EventStore, last: int, events: int) -> float:
    """Run the live projection from 0 to ``last``; return events/s."""
    live = runner(db, store)
    stop = asyncio.Event()
    started = time.perf_counter()
    task = asyncio.create_task(live.run(stop))
    async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
        while await tracking.position(conn, "ledger", store.names.source) < last:
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
    elapsed = time.perf_counter() - started
    stop.set()
    await task
    return events / elapsed


def _rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields.get("VmRSS", 0), fields.get("VmHWM", 0)


def rebuild_child(db: str, nats_url: str, streams: StreamNames) -> dict[str, Any]:
    """Run ``jetledger replay ledger`` as a child: wall time, RSS along the way, its summary."""
    env = {
        **os.environ,
        "JETLEDGER_SECURITY": "off",  # a plain local NATS
        "JETLEDGER_NATS_URL": nats_url,
        "JETLEDGER_DATABASE_URL": db,
        "JETLEDGER_STREAM": streams.source,
        "JETLEDGER_DERIVED_STREAM": streams.derived,
        "JETLEDGER_SUBJECT_PREFIX": streams.subjects.prefix,
        "COLUMNS": "200",
    }
    exe = Path(sys.executable).parent / "jetledger"
    started = time.perf_counter()
    samples: list[tuple[float, int]] = []
    peak = 0
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen([str(exe), "replay", "ledger"], env=env, stdout=out, stderr=out)
        while proc.poll() is None:
            try:
                rss, hwm = _rss_kib(proc.pid)
                samples.append((time.perf_counter() - started, rss))
                peak = max(peak, hwm)
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        out.seek(0)
        text = out.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(text)
    summary = [line for line in text.splitlines() if line.startswith("rebuilt")]
    half = [rss for at, rss in samples if at <= elapsed / 2] or [0]
    reported = 0.0
    if summary and "(" in summary[-1]:
        reported = float(summary[-1].split("(")[1].split(" events/s")[0].replace(",", ""))
    return {
        "seconds": elapsed,
        "reported_events_per_s": reported,
        "rss_mib_at_half": max(half) / 1024,
        "rss_mib_peak": peak / 1024,
        "summary": summary[-1] if summary else text[-300:],
    }


async def lag_at_rate(db: str, store: EventStore, rate: int, seconds: float) -> dict[str, float]:
    """Publish ``rate`` events/s for ``seconds`` with the projection live; return lag stats."""
    events = make_history(int(rate * seconds) + 110, 50)[100:]  # the issues/fundings are in
    live = runner(db, store)
    stop = asyncio.Event()
    task = asyncio.create_task(live.run(stop))
    subjects = store.names.subjects
    sent: list[tuple[int, float]] = []
    seen: list[tuple[float, int]] = []
    done = asyncio.Event()

    async def watch() -> None:
        async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
            while not done.is_set():
                position = await tracking.position(conn, "ledger", store.names.source)
                seen.append((time.perf_counter(), position))
                await asyncio.sleep(0.002)

    await asyncio.sleep(1.0)  # the runner takes the lease and subscribes
    watcher = asyncio.create_task(watch())
    per_tick = max(1, rate // 100)
    started = time.perf_counter()
    for tick, start in enumerate(range(0, len(events), per_tick)):
        chunk = events[start : start + per_tick]
        now = time.perf_counter()
        positions = await asyncio.gather(
            *(store.append(OutgoingMessage(subjects.card(e.card_id), encode(e))) for e in chunk)
        )
        sent.extend((p.sequence, now) for p in positions)
        await asyncio.sleep(max(0.0, started + (tick + 1) / 100 - time.perf_counter()))
    last = max(s for s, _ in sent)
    while not seen or seen[-1][1] < last:  # noqa: ASYNC110 - the watcher appends
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
    q = statistics.quantiles(lags, n=100)
    return {"p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000, "max_ms": max(lags) * 1000}


def _cpu_line(cpu: dict[str, float], first: str) -> str:
    parts = ", ".join(
        f"{first if k in ('bench_us', 'rebuild_us') else k[:-3]} {v:.1f}"
        for k, v in cpu.items()
        if k.endswith("_us")
    )
    bound = cpu["cpu_bound_events_per_s_2_cores"]
    return f"  CPU µs an event: {parts}; on 2 idle cores that allows ≈{bound:,.0f} events/s"


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run every measurement once; return the figures."""
    token = uuid.uuid4().hex[:8]
    streams = StreamNames(f"BENCH{token}", f"BENCH{token}_DERIVED", Subjects(f"b{token}."))
    lag_streams = StreamNames(f"LAG{token}", f"LAG{token}_DERIVED", Subjects(f"l{token}."))
    out: dict[str, Any] = {"events": args.events, "cards": args.cards}
    say = (lambda *_: None) if args.json else print
    with (
        tempfile.TemporaryDirectory(prefix="ledger-bench-") as tmp,
        local_or_external(
            os.environ.get("JETLEDGER_NATS_URL", ""),
            os.environ.get("JETLEDGER_DATABASE_URL", ""),
            Path(tmp),
        ) as servers,
    ):
        nc = await nats.connect(servers.nats_url)
        store, lag_store = EventStore(nc, streams), EventStore(nc, lag_streams)
        for s in (store, lag_store):
            await s.ensure_streams()
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
        say(f"generating {args.events} events over {args.cards} cards …")
        history = make_history(args.events, args.cards)
        legs = sum(len(getattr(e, "legs", ())) for e in history) / len(history)
        started = time.perf_counter()
        last = await fill(store, history)
        out["append_events_per_s"] = len(history) / (time.perf_counter() - started)
        say(f"append (atomic batches of 500):    {out['append_events_per_s']:>10,.0f} events/s")
        before = cpu_now(servers)
        copy_rows = await copy_ceiling(db, 200_000)
        out["cpu"] = {"copy_per_row": cpu_per_event(servers, before, 200_000, "postgres")}
        nats_py = await nats_py_ceiling(nc, store)
        before = cpu_now(servers)
        reader = await reader_ceiling(store)
        out["cpu"]["reader"] = cpu_per_event(servers, before, len(history), "bench", "nats")
        out["ceilings"] = {
            "nats_py_read_events_per_s": nats_py,
            "reader_read_events_per_s": reader,
            "postgres_copy_rows_per_s": copy_rows,
            "postgres_copy_events_per_s": copy_rows / legs,
        }
        c = out["ceilings"]
        say(f"ceiling: nats-py ordered consumer: {c['nats_py_read_events_per_s']:>10,.0f} events/s")
        say(f"ceiling: event store reader:       {c['reader_read_events_per_s']:>10,.0f} events/s")
        say(
            f"ceiling: Postgres COPY entries:    {copy_rows:>10,.0f} rows/s"
            f" (≈{c['postgres_copy_events_per_s']:,.0f} events/s at {legs:.2f} legs/event)"
        )
        say(
            f"  CPU: reader {out['cpu']['reader']['bench_us']:.1f} µs an event"
            f" (nats-server {out['cpu']['reader']['nats_us']:.1f});"
            f" COPY {out['cpu']['copy_per_row']['postgres_us']:.1f} µs of Postgres a row"
        )
        before = cpu_now(servers)
        out["steady_events_per_s"] = await steady_rate(db, store, last, len(history))
        out["cpu"]["steady"] = cpu_per_event(
            servers, before, len(history), "bench", "postgres", "nats"
        )
        say(f"steady projection (live, b≤5000): {out['steady_events_per_s']:>10,.0f} events/s")
        say(_cpu_line(out["cpu"]["steady"], "runner (bench process)"))
        before = cpu_now(servers)
        rebuild = await asyncio.to_thread(rebuild_child, db, servers.nats_url, streams)
        out["cpu"]["rebuild"] = cpu_per_event(
            servers, before, len(history), "rebuild", "postgres", "nats"
        )
        rebuild["events_per_s"] = len(history) / rebuild["seconds"]
        out["rebuild"] = rebuild
        out["rebuild_vs_copy"] = rebuild["reported_events_per_s"] / c["postgres_copy_events_per_s"]
        say(
            f"rebuild (jetledger replay ledger): {rebuild['reported_events_per_s']:>10,.0f} events/s"
            f" ({rebuild['events_per_s']:,.0f} wall incl. start-up);"
            f" {out['rebuild_vs_copy']:.2f}× the COPY ceiling;"
            f" RSS {rebuild['rss_mib_at_half']:.0f} MiB by half-way, peak {rebuild['rss_mib_peak']:.0f}"
        )
        say(_cpu_line(out["cpu"]["rebuild"], "rebuild (child + its reader)"))
        await fill(lag_store, make_history(100, 50))
        out["lag"] = await lag_at_rate(lag_db, lag_store, args.rate, args.seconds)
        out["lag"]["rate"] = args.rate
        say(
            f"lag at {args.rate}/s for {args.seconds:.0f}s: p50 {out['lag']['p50_ms']:.1f} ms,"
            f" p99 {out['lag']['p99_ms']:.1f} ms, max {out['lag']['max_ms']:.1f} ms"
        )
        await nc.close()
    out["targets"] = TARGETS
    return out


def main() -> None:
    """Parse arguments, run the benchmark, print the figures (or one JSON object)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--events", type=int, default=120_000)
    parser.add_argument("--cards", type=int, default=1_000)
    parser.add_argument("--rate", type=int, default=1_000, help="events/s for the lag measurement")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    figures = run_loop(measure(args))  # the projection runs on the services' loop
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
