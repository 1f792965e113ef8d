"""Durable append throughput: raw nats-py vs. the group-commit writer, on one local nats-server.

``python -m bench.eventstore_bench`` (or ``make bench``) starts its own nats-server
(``sync_interval: always``, loopback, store in a temporary directory) and measures, in one run:

1. raw nats-py, one durable publish at a time (each waits for its ack, so for its fsync);
2. raw nats-py ADR-50 atomic batches of 100 messages, one batch at a time;
3. ``GroupCommitWriter`` fed by 200 concurrent appenders, each appending one-event commands with
   their outcome marker (2 messages a unit, both under compare-and-set), as the intake does.

Every phase is bounded in messages and in seconds. Messages carry 200-byte payloads.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import nats
from nats.aio.client import Client as NATS
from rich.console import Console
from rich.table import Table

from contracts.subjects import StreamNames, Subjects
from eventstore import EventStore, Expectation, GroupCommitWriter, OutgoingMessage, headers
from services.localservers import LocalNats

PAYLOAD = b"x" * 200


@dataclass
class Result:
    """What one phase measured."""

    name: str
    messages: int
    seconds: float
    units: int = 0
    latencies: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    @property
    def unit_rate(self) -> float:
        return self.units / self.seconds


async def fresh_store(nc: NATS, tag: str) -> EventStore:
    """Provision streams of this phase's own (production configuration)."""
    tag = f"{tag}{uuid.uuid4().hex[:6]}"
    store = EventStore(nc, StreamNames(f"BENCH_{tag}", f"BENCH_{tag}_D", Subjects(f"b{tag}.")))
    await store.ensure_streams()
    return store


async def raw_single(nc: NATS, seconds: float, limit: int) -> Result:
    """One durable publish at a time with plain nats-py."""
    store = await fresh_store(nc, "single")
    js = nc.jetstream()
    subject = store.names.subjects.card("c1")
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while count < limit and time.perf_counter() < deadline:
        await js.publish(subject, PAYLOAD)
        count += 1
    return Result("raw publish, one at a time", count, time.perf_counter() - start)


async def raw_batches(nc: NATS, seconds: float, limit: int, size: int = 100) -> Result:
    """Atomic batches of ``size`` built by hand with plain nats-py, one batch at a time."""
    store = await fresh_store(nc, "batch")
    subject = store.names.subjects.card("c1")
    count = 0
    batch = 0
    latencies: list[float] = []
    start = time.perf_counter()
    deadline = start + seconds
    while count < limit and time.perf_counter() < deadline:
        batch += 1
        batch_id = f"bench-{batch}"
        sent = time.perf_counter()
        for seq in range(1, size):
            await nc.publish(
                subject,
                PAYLOAD,
                headers={headers.BATCH_ID: batch_id, headers.BATCH_SEQUENCE: str(seq)},
            )
        reply = await nc.request(
            subject,
            PAYLOAD,
            timeout=10,
            headers={
                headers.BATCH_ID: batch_id,
                headers.BATCH_SEQUENCE: str(size),
                headers.BATCH_COMMIT: headers.BATCH_COMMIT_STORE,
            },
        )
        if b'"error"' in reply.data:
            raise RuntimeError(f"batch failed: {reply.data!r}")
        latencies.append(time.perf_counter() - sent)
        count += size
    return Result(
        f"raw atomic batches of {size}", count, time.perf_counter() - start, latencies=latencies
    )


async def writer_phase(
    nc: NATS, seconds: float, limit: int, appenders: int, max_batch: int, max_inflight: int
) -> Result:
    """``appenders`` concurrent commands, each a money event (family CAS) plus its marker."""
    store = await fresh_store(nc, "writer")
    subjects = store.names.subjects
    writer = GroupCommitWriter(store, max_batch=max_batch, max_inflight=max_inflight)
    latencies: list[float] = []
    units = 0
    stop_at = time.perf_counter() + seconds

    async def appender(card: int) -> None:
        nonlocal units
        version = 0
        command = 0
        family = event_subject = subjects.card(f"c{card}")
        while units < limit // 2 and time.perf_counter() < stop_at:
            command += 1
            marker = subjects.command_marker(f"k{card}x{command}")
            unit = [
                OutgoingMessage(event_subject, PAYLOAD, expect=Expectation(family, version)),
                OutgoingMessage(marker, PAYLOAD, expect=Expectation(marker, 0)),
            ]
            sent = time.perf_counter()
            positions = await writer.submit(unit)
            latencies.append(time.perf_counter() - sent)
            version = positions[0].sequence
            units += 1

    start = time.perf_counter()
    await asyncio.gather(*(appender(i) for i in range(appenders)))
    await writer.close()
    elapsed = time.perf_counter() - start
    stats = writer.stats
    assert await store.last_sequence() == stats.messages, "the stream holds what was acked"
    return Result(
        f"GroupCommitWriter, {appenders} appenders",
        stats.messages,
        elapsed,
        units=units,
        latencies=latencies,
        note=f"{stats.messages / max(stats.batches, 1):.0f} msgs/batch, "
        f"max_batch={max_batch}, max_inflight={max_inflight}, "
        f"failed batches {stats.failed_batches}, bisections {stats.bisections}, "
        f"retried after rejection {stats.rejected_retries}",
    )


def percentile(values: list[float], q: float) -> float:
    """Return the q-quantile of ``values`` (0 when empty)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(args: argparse.Namespace) -> None:
    console = Console()
    base = Path(args.store_dir) if args.store_dir else None
    with tempfile.TemporaryDirectory(prefix="jetledger-bench-", dir=base) as tmp:
        server = LocalNats(store_dir=Path(tmp) / "nats").start()
        try:
            nc = await nats.connect(server.url)
            sync = server.varz()["jetstream"]
            assert isinstance(sync, dict)
            console.print(
                f"nats-server {server.varz()['version']} at {server.url}, store {tmp} "
                f"(sync_always={sync['config'].get('sync_always')}), {os.cpu_count()} CPUs"
            )
            single = await raw_single(nc, args.seconds, args.limit)
            batch = await raw_batches(nc, args.seconds, args.limit)
            writer = await writer_phase(
                nc, args.seconds, args.limit, args.appenders, args.max_batch, args.max_inflight
            )
            await nc.close()
        finally:
            server.stop()

    table = Table(title="durable appends (messages/s; 200-byte payloads)")
    for column in ("phase", "msgs/s", "units/s", "msgs", "seconds", "p50 ms", "p99 ms", "note"):
        table.add_column(column, justify="left" if column in ("phase", "note") else "right")
    for r in (single, batch, writer):
        table.add_row(
            r.name,
            f"{r.rate:,.0f}",
            f"{r.unit_rate:,.0f}" if r.units else "",
            f"{r.messages:,}",
            f"{r.seconds:.2f}",
            f"{percentile(r.latencies, 0.5) * 1000:.1f}" if r.latencies else "",
            f"{percentile(r.latencies, 0.99) * 1000:.1f}" if r.latencies else "",
            r.note,
        )
    console.print(table)
    console.print(
        f"writer / raw batch-100 = {writer.rate / batch.rate:.2f} (target >= 0.5); "
        f"writer / raw single = {writer.rate / single.rate:.1f}x (target >= 3x)"
    )
    if batch.latencies:
        console.print(
            f"raw batch-100 commit latency: mean {statistics.mean(batch.latencies) * 1000:.1f} ms"
        )


def main() -> None:
    """Run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=4.0, help="time bound of each phase")
    parser.add_argument("--limit", type=int, default=200_000, help="message bound of each phase")
    parser.add_argument("--appenders", type=int, default=200)
    parser.add_argument("--max-batch", type=int, default=500)
    parser.add_argument("--max-inflight", type=int, default=4)
    parser.add_argument("--store-dir", default="", help="where to put the server's store")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
