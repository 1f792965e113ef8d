"""Notification latency: event appended (JetStream ack) → signed webhook received, p50/p99.

Runs everything on loopback: a local nats-server and Postgres (or the ones named by
``JETLEDGER_NATS_URL`` / ``JETLEDGER_DATABASE_URL``), the notification service as a child process,
and an asyncio HTTP receiver in this process (same clock as the publisher). For each rate it
appends purchases at a steady pace for a fixed time, then waits for the stragglers; it stops by
itself. Not part of ``make test``::

    .venv/bin/python -m bench.notification_bench [--rates 200,1000] [--seconds 10] [--json]

``--json`` prints one JSON object: per rate, the latency percentiles, what was sent and received,
whether the service kept up (everything delivered, the last one within a second of the run), and
the targets.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nats
import psycopg

from bench.histories import Events
from bench.support import prepare_for
from contracts.codec import encode
from contracts.subjects import StreamNames, Subjects
from eventstore import EventStore
from services.localservers import free_port, local_or_external
from services.notification.preferences import PreferenceCommands
from services.security.webhookpolicy import WebhookUrlPolicy


class Receiver:
    """A minimal HTTP/1.1 keep-alive server recording when each notification id arrives."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.port = 0
        self.changed = asyncio.Event()

    async def start(self) -> asyncio.Server:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        return server

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                now = time.monotonic()
                headers = dict(
                    line.split(":", 1) for line in head.decode().split("\r\n")[1:] if ":" in line
                )
                lowered = {k.strip().lower(): v.strip() for k, v in headers.items()}
                await reader.readexactly(int(lowered.get("content-length", "0")))
                self.arrived.setdefault(lowered.get("webhook-id", ""), now)
                self.changed.set()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        writer.close()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def _breakdown(database_url: str, ids: list[str]) -> dict[str, float]:
    """Median ms from the event's decision time to the delivery row's commit, and from there to 2xx."""
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM"
            " d.created_at - n.occurred_at)) * 1000, percentile_cont(0.5) WITHIN GROUP"
            " (ORDER BY extract(epoch FROM d.delivered_at - d.created_at)) * 1000"
            " FROM notify_ops.deliveries d JOIN notify.notifications n USING (notification_id)"
            " WHERE d.notification_id = ANY(%s)",
            (ids,),
        )
        row = await cur.fetchone()
    return {"project_ms": float(row[0] or 0), "deliver_ms": float(row[1] or 0)} if row else {}


async def _run_rate(
    store: EventStore,
    streams: StreamNames,
    receiver: Receiver,
    rate: int,
    seconds: float,
    database_url: str,
) -> dict[str, float]:
    """Append purchases at ``rate``/s for ``seconds``; return latency statistics in ms."""
    cards = [Events(f"bench-{rate}-{i}") for i in range(20)]
    js = store.nc.jetstream()
    for card in cards:
        for event in (card.issue(), card.fund(10**12)):
            await js.publish(streams.subjects.card(card.card_id), encode(event))
    appended: dict[str, float] = {}
    total = int(rate * seconds)
    start = time.monotonic()

    async def append(n: int) -> None:
        card = cards[n % len(cards)]
        purchase = card.purchase(100 + n % 900, f"m-{n % 7}")
        sent_at = time.monotonic()
        ack = await js.publish(streams.subjects.card(card.card_id), encode(purchase))
        appended[f"{ack.stream}:{ack.seq}"] = sent_at

    # Steady pace: each append starts at its slot, without waiting for the previous one's ack
    # (an fsync each): the publisher must not be what limits the rate.
    pending: set[asyncio.Task[None]] = set()
    for n in range(total):
        delay = start + n / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(append(n))
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(30):  # the stragglers
            while not all(i in receiver.arrived for i in appended):
                receiver.changed.clear()
                await receiver.changed.wait()
    latencies = [
        (receiver.arrived[i] - t) * 1000 for i, t in appended.items() if i in receiver.arrived
    ]
    breakdown = await _breakdown(database_url, list(appended))
    last_arrival = max(receiver.arrived.get(i, 0.0) for i in appended)
    return {
        **breakdown,
        "rate": rate,
        "sent": total,
        "received": len(latencies),
        # kept up: everything arrived, the last one within a second of the last append
        "kept_up": float(len(latencies) == total and last_arrival - max(appended.values()) < 1.0),
        "achieved_rate": total / (max(appended.values()) - start),
        "p50_ms": _percentile(latencies, 50),
        "p90_ms": _percentile(latencies, 90),
        "p99_ms": _percentile(latencies, 99),
        "max_ms": max(latencies),
        "mean_ms": statistics.fmean(latencies),
    }


TARGETS = {"p99_ms_at_200_per_s": 100.0, "keeps_up_at_per_s": 1000}


async def main(rates: list[int], seconds: float, as_json: bool = False) -> None:
    """Start everything, measure each rate, print a table (or one JSON object)."""
    say = (lambda *_, **__: None) if as_json else print
    results: list[dict[str, float]] = []
    with (
        tempfile.TemporaryDirectory(prefix="jetledger-bench-") as tmp,
        local_or_external(
            os.environ.get("JETLEDGER_NATS_URL", ""),
            os.environ.get("JETLEDGER_DATABASE_URL", ""),
            Path(tmp),
        ) as servers,
    ):
        streams = StreamNames("BENCH", "BENCH_DERIVED", Subjects("bench."))
        nc = await nats.connect(servers.nats_url)
        store = EventStore(nc, streams)
        await store.ensure_streams()
        receiver = Receiver()
        server = await receiver.start()
        local = WebhookUrlPolicy.from_setting("127.0.0.0/8,::1/128")  # the receiver is local
        await PreferenceCommands(store, url_policy=local).set_webhook(
            "bench-hook",
            "",
            "bench",
            f"http://127.0.0.1:{receiver.port}/hook",
            "bench-secret-0123456789",
        )
        env = {
            **os.environ,
            "JETLEDGER_NATS_URL": servers.nats_url,
            "JETLEDGER_DATABASE_URL": servers.database_url,
            "JETLEDGER_STREAM": streams.source,
            "JETLEDGER_DERIVED_STREAM": streams.derived,
            "JETLEDGER_SUBJECT_PREFIX": streams.subjects.prefix,
            "JETLEDGER_NOTIFICATION_PORT": str(free_port()),
            "JETLEDGER_NOTIFICATION_METRICS_PORT": str(free_port()),
            "JETLEDGER_LOG_LEVEL": "WARNING",
            "JETLEDGER_WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8,::1/128",
            "JETLEDGER_SECURITY": "off",  # a plain local NATS
        }
        await asyncio.to_thread(prepare_for, "services.notification.main", {**os.environ, **env})
        service = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.notification.main", env=env, stderr=subprocess.DEVNULL
        )
        try:
            await asyncio.sleep(3.0)  # start-up: imports, schema, consumers
            await _run_rate(
                store, streams, receiver, rates[0], 2.0, servers.database_url
            )  # warm-up
            say(
                f"{'rate/s':>7} {'sent':>6} {'recv':>6} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8}"
            )
            for rate in rates:
                cpu = _cpu_seconds(service.pid)
                r = await _run_rate(store, streams, receiver, rate, seconds, servers.database_url)
                r["cpu_ms"] = (_cpu_seconds(service.pid) - cpu) * 1000 / r["sent"]
                results.append(r)
                say(
                    f"{r['rate']:>7.0f} {r['sent']:>6.0f} {r['received']:>6.0f} {r['p50_ms']:>8.1f}"
                    f" {r['p90_ms']:>8.1f} {r['p99_ms']:>8.1f} {r['max_ms']:>8.1f}"
                    f"   (achieved {r['achieved_rate']:.0f}/s; median: event→row"
                    f" {r['project_ms']:.1f} ms, row→2xx {r['deliver_ms']:.1f} ms;"
                    f" service CPU {r['cpu_ms']:.2f} ms a notification)",
                    flush=True,
                )
            if as_json:
                print(json.dumps({"rates": results, "targets": TARGETS}))
        finally:
            service.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(service.wait(), 15)
            if service.returncode is None:
                service.kill()
                await service.wait()
            server.close()
            await nc.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="200,1000", help="comma-separated appends per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each rate")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    asyncio.run(main([int(r) for r in args.rates.split(",")], args.seconds, args.json))
