"""The fault campaign: a running system, a workload, a nemesis, a settle, a checker, a table.

``run_campaign(profile, root)`` starts the whole system (``jetledger dev``'s processes: NATS or a
3-node NATS cluster, Postgres, the four services), a webhook receiver, the open-loop workload and
the nemesis; when every scheduled fault is injected and healed and the workload has issued its
commands, it settles (every process up, every unknown outcome retried with its id, every
projection at the stream head), runs the independent checker plus ``verify`` and a replay
comparison, and returns a report whose table it prints::

    python -m tests.faults.campaign --profile long      # what `make faults` runs
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import nats
import psycopg
from aiohttp import web

from eventstore import EventStore
from projections.ledger.rebuild import Rebuild, compare_schemas
from projections.ledger.verify import verify
from services.dev.ports import with_free_ports
from services.dev.system import DevSystem
from services.localcluster import LocalCluster
from services.localservers import LocalPostgres
from services.settings import Settings
from tests.faults.checker import Findings, StreamMessage, check, read_stream, read_tables
from tests.faults.nemesis import CLUSTER_FAULTS, SINGLE_NODE_FAULTS, Fault, Nemesis
from tests.faults.workload import DECIDED, Op, Workload


@dataclass(frozen=True)
class Profile:
    name: str
    cluster: bool
    rate: float  # commands per second, open loop
    commands: int  # at least this many commands
    cards: int
    faults_per_kind: int
    gap: float  # seconds of plain load before each fault
    downtime: float  # seconds a killed process stays down
    kinds: tuple[str, ...] = ()

    @property
    def fault_kinds(self) -> tuple[str, ...]:
        return self.kinds or (CLUSTER_FAULTS if self.cluster else SINGLE_NODE_FAULTS)


PROFILES = {
    "short-single": Profile("short-single", False, 30, 900, 24, 1, 1.5, 0.5),
    "short-cluster": Profile("short-cluster", True, 30, 500, 16, 2, 1.5, 0.5),
    "long-single": Profile("long-single", False, 100, 50_000, 400, 20, 1.0, 1.0),
    "long-cluster": Profile("long-cluster", True, 100, 50_000, 400, 20, 2.0, 1.0),
}


@dataclass
class Row:
    kind: str
    faults: int = 0
    operations: int = 0
    lost: int = 0
    duplicated: int = 0
    anomalies: int = 0
    not_decided: int = 0  # answered UNAVAILABLE, DEADLINE_EXCEEDED, … (retried afterwards)
    recovery: list[float] = field(default_factory=list)

    def cells(self) -> list[str]:
        rec = (
            f"{statistics.median(self.recovery):.2f} / {max(self.recovery):.2f}"
            if self.recovery
            else "-"
        )
        return [
            self.kind,
            str(self.faults),
            str(self.operations),
            str(self.lost),
            str(self.duplicated),
            str(self.anomalies),
            str(self.not_decided),
            rec,
        ]


HEADER = [
    "fault type",
    "faults",
    "operations",
    "lost",
    "duplicated",
    "anomalies",
    "unknown→retried",
    "recovery s (median / max)",
]


@dataclass
class Report:
    profile: Profile
    rows: list[Row]
    findings: Findings
    verify_ok: bool
    verify_problems: list[str]
    replay_equal: bool
    commands: int
    duration: float
    failovers: list[float]
    fault_errors: list[str]

    @property
    def ok(self) -> bool:
        return self.findings.ok and self.verify_ok and self.replay_equal and not self.fault_errors

    def table(self) -> str:
        lines = [HEADER, *(r.cells() for r in self.rows)]
        widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
        out = [" | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
        out.insert(1, "-+-".join("-" * w for w in widths))
        total = Row(
            "total",
            sum(r.faults for r in self.rows),
            sum(r.operations for r in self.rows),
            len(self.findings.lost),
            len(self.findings.duplicated),
            len(self.findings.anomalies),
            sum(r.not_decided for r in self.rows),
        )
        out.append(" | ".join(c.ljust(w) for c, w in zip(total.cells(), widths, strict=True)))
        head = (
            f"profile {self.profile.name}: {self.commands} commands in {self.duration:.0f}s,"
            f" verify {'OK' if self.verify_ok else 'FAILED'},"
            f" replay {'== tables' if self.replay_equal else 'DIFFERS'}"
        )
        if self.failovers:
            head += (
                f", stream-leader failover median {statistics.median(self.failovers):.2f}s"
                f" max {max(self.failovers):.2f}s"
            )
        extra = [f"  anomaly: {op or '-'}: {what}" for op, what in self.findings.anomalies[:20]]
        extra += [f"  fault error: {e}" for e in self.fault_errors]
        extra += [f"  verify: {p}" for p in self.verify_problems[:10]]
        return "\n".join([head, *out, *extra])


class WebhookReceiver:
    """A loopback HTTP server that records every webhook POST: idempotency key -> notification
    ids (answers 500 to a random tenth the first time, so retries are exercised too)."""

    def __init__(self) -> None:
        self.keys: dict[str, set[str]] = defaultdict(set)
        self.refused: set[str] = set()
        self.rng = random.Random(3)
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hook"

    async def handle(self, request: web.Request) -> web.Response:
        key = request.headers.get("Idempotency-Key", "")
        body = json.loads(await request.read())
        notification_id = str(
            body.get("notification_id") or body.get("data", {}).get("notification_id", "")
        )
        if key not in self.refused and self.rng.random() < 0.1:
            self.refused.add(key)
            return web.Response(status=500)
        self.keys[key].add(notification_id)
        return web.Response(status=204)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def _say(message: str) -> None:
    print(f"[faults {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _start_system(
    profile: Profile, root: Path
) -> tuple[DevSystem, LocalCluster | None, LocalPostgres | None]:
    token = uuid.uuid4().hex[:8]
    cluster = None
    overrides: dict[str, object] = {}
    if profile.cluster:
        cluster = LocalCluster(root=root / "cluster").start()
        overrides = {"nats_url": cluster.urls, "stream_replicas": 3}
    settings = Settings(
        data_dir=root / "data",
        stream=f"FC{token}",
        derived_stream=f"FC{token}_DERIVED",
        subject_prefix=f"fc{token}.",
        webhook_allow_networks="127.0.0.0/8",
        webhook_backoff_base_seconds=0.2,
        webhook_backoff_max_seconds=2.0,
        webhook_max_attempts=100,
        log_format="json",
        **overrides,  # type: ignore[arg-type]
    )
    try:
        system = DevSystem(with_free_ports(settings), fresh=True).start(timeout=120)
    except BaseException:
        if cluster is not None:
            cluster.stop()
        raise
    return system, cluster, system.postgres


async def _settle(system: DevSystem, heads: tuple[int, int], within: float = 300.0) -> bool:
    """Wait until the ledger is at the last card event, the notifications at the last card or
    preference event, the relay has published every entry and no webhook delivery is pending."""
    settings = system.settings
    card_head, notify_head = heads
    deadline = time.monotonic() + within
    nc = await nats.connect(settings.nats_url.split(","), connect_timeout=5)
    try:
        while time.monotonic() < deadline:
            try:
                with psycopg.connect(settings.database_url, autocommit=True) as conn:
                    ledger, notify, entries, pending = (
                        int(row[0]) if row else 0
                        for row in (
                            conn.execute(
                                "SELECT coalesce(max(last_sequence),0) FROM ledger.tracking"
                                " WHERE stream=%s",
                                (settings.stream,),
                            ).fetchone(),
                            conn.execute(
                                "SELECT coalesce(max(last_sequence),0) FROM notify.tracking"
                                " WHERE stream=%s",
                                (settings.stream,),
                            ).fetchone(),
                            conn.execute("SELECT count(*) FROM ledger.entries").fetchone(),
                            conn.execute(
                                "SELECT count(*) FROM notify_ops.deliveries"
                                " WHERE status = 'pending'"
                            ).fetchone(),
                        )
                    )
                info = await nc.jetstream().stream_info(settings.derived_stream)
            except (psycopg.Error, nats.errors.Error, OSError):
                await asyncio.sleep(1)
                continue
            derived = int(info.state.messages)
            if (
                ledger >= card_head
                and notify >= notify_head
                and derived >= entries
                and pending == 0
            ):
                return True
            await asyncio.sleep(1)
        return False
    finally:
        await nc.close()


def _heads(source: list[StreamMessage], prefix: str) -> tuple[int, int]:
    """The last card event (what the ledger reads) and the last card or preference event (what
    the notifications read)."""
    cards = [m.sequence for m in source if m.subject.startswith(f"{prefix}card.")]
    notify = [m.sequence for m in source if m.subject.startswith(f"{prefix}notify.")]
    return max(cards, default=0), max(cards + notify, default=0)


async def _replay_equal(system: DevSystem) -> bool:
    settings = system.settings
    nc = await nats.connect(settings.nats_url.split(","), connect_timeout=5)
    try:
        store = EventStore(nc, settings.streams)
        shadow = await Rebuild(settings.database_url, store).run(swap=False)
        async with await psycopg.AsyncConnection.connect(settings.database_url) as conn:
            diff = await compare_schemas(conn, "ledger", shadow.schema)
            await conn.execute(f'DROP SCHEMA IF EXISTS "{shadow.schema}" CASCADE')
            await conn.commit()
        return all(d == (0, 0) for d in diff.values())
    finally:
        await nc.close()


async def _verify(system: DevSystem) -> tuple[bool, list[str]]:
    settings = system.settings
    nc = await nats.connect(settings.nats_url.split(","), connect_timeout=5)
    try:
        report = await verify(
            settings.database_url, EventStore(nc, settings.streams), wait_seconds=30
        )
        return report.ok, report.problems()
    finally:
        await nc.close()


def _rows(profile: Profile, log: list[Op], faults: list[Fault], findings: Findings) -> list[Row]:
    rows = {"baseline": Row("none (baseline)")}
    for kind in profile.fault_kinds:
        rows[kind] = Row(kind)
    ordered = sorted(faults, key=lambda f: f.injected)
    starts = [f.injected for f in ordered]
    kind_of_op: dict[str, str] = {}
    for op in log:
        index = next((i for i in range(len(starts) - 1, -1, -1) if starts[i] <= op.start), None)
        kind = "baseline" if index is None else ordered[index].kind
        kind_of_op[op.op_id] = kind
        rows[kind].operations += 1
        rows[kind].not_decided += op.status not in DECIDED and op.kind != "issue" and op.unknown
    for fault in ordered:
        row = rows[fault.kind]
        row.faults += 1
        base = fault.injected if fault.kind in CLUSTER_FAULTS else fault.healed
        first = min((op.end for op in log if op.status == "OK" and op.start >= base), default=None)
        if first is not None:
            row.recovery.append(first - base)
    for op_id in findings.lost:
        rows[kind_of_op.get(op_id, "baseline")].lost += 1
    for op_id in findings.duplicated:
        rows[kind_of_op.get(op_id, "baseline")].duplicated += 1
    for op_id, _ in findings.anomalies:
        rows[kind_of_op.get(op_id, "baseline")].anomalies += 1
    return list(rows.values())


async def run_campaign(profile: Profile, root: Path, seed: int = 11) -> Report:
    started = time.monotonic()
    system, cluster, _ = await asyncio.to_thread(_start_system, profile, root)
    receiver = WebhookReceiver()
    workload = Workload(system.settings, profile.cards, seed=seed)
    try:
        await receiver.start()
        await workload.open()
        webhook_cards = max(2, profile.cards // 8)
        _say(f"{profile.name}: system up; issuing {profile.cards} cards")
        await workload.setup(receiver.url, webhook_cards)
        _say("cards issued; load and faults start")
        nemesis = Nemesis(system, cluster, downtime=profile.downtime)
        schedule = [k for k in profile.fault_kinds for _ in range(profile.faults_per_kind)]
        random.Random(seed).shuffle(schedule)
        stop = asyncio.Event()
        load = asyncio.create_task(workload.run(profile.rate, 10**9, stop))

        for kind in schedule:
            await asyncio.sleep(profile.gap)
            fault = await asyncio.to_thread(nemesis.inject, kind)
            _say(
                f"{kind} ({fault.target}) healed after {fault.healed - fault.injected:.1f}s"
                f"{' ERROR ' + fault.error if fault.error else ''}; {len(workload.log)} requests,"
                f" {workload.in_flight} in flight"
            )
        while sum(op.kind != "issue" for op in workload.log) < profile.commands:  # noqa: ASYNC110
            await asyncio.sleep(0.5)
        await asyncio.sleep(profile.gap)
        stop.set()
        await load
        heal_errors = await asyncio.to_thread(nemesis.heal_all)
        retried = await workload.resolve_unknowns()
        _say(f"load stopped; {len(retried)} unknown outcomes retried; settling")
        settings = system.settings
        source = await read_stream(
            settings.nats_url, settings.stream, f"{settings.subject_prefix}>"
        )
        heads = _heads(source, settings.subject_prefix)
        settled = await _settle(system, heads)
        _say(f"{'settled' if settled else 'NOT settled'} at {heads}; checking")
        derived = await read_stream(
            settings.nats_url, settings.derived_stream, f"{settings.subject_prefix}ledger.>"
        )
        tables = await asyncio.to_thread(read_tables, settings.database_url, settings.stream)
        findings = check(
            workload.log,
            source,
            derived,
            tables,
            settings.stream,
            settings.subject_prefix,
            heads,
            receiver.keys,
            set(workload.card_ids[:webhook_cards]),
        )
        verify_ok, problems = await _verify(system)
        replay_equal = await _replay_equal(system)
        return Report(
            profile=profile,
            rows=_rows(profile, workload.log, nemesis.faults, findings),
            findings=findings,
            verify_ok=verify_ok,
            verify_problems=problems,
            replay_equal=replay_equal,
            commands=sum(op.kind != "issue" for op in workload.log),
            duration=time.monotonic() - started,
            failovers=[f.failover for f in nemesis.faults if f.failover is not None],
            fault_errors=[f"{f.kind}: {f.error}" for f in nemesis.faults if f.error] + heal_errors,
        )
    finally:
        await workload.close()
        await receiver.stop()
        await asyncio.to_thread(system.stop)
        if cluster is not None:
            await asyncio.to_thread(cluster.stop)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", choices=["short", "long"], default="long")
    parser.add_argument("--only", choices=["single", "cluster"], default=None)
    parser.add_argument("--rate", type=float, default=None)
    parser.add_argument("--commands", type=int, default=None)
    parser.add_argument("--faults-per-kind", type=int, default=None)
    args = parser.parse_args(argv)
    ok = True
    for shape in ("single", "cluster"):
        if args.only and args.only != shape:
            continue
        profile = PROFILES[f"{args.profile}-{shape}"]
        changes = {
            k: v
            for k, v in (
                ("rate", args.rate),
                ("commands", args.commands),
                ("faults_per_kind", args.faults_per_kind),
            )
            if v is not None
        }
        profile = dataclasses.replace(profile, **changes)
        with tempfile.TemporaryDirectory(prefix=f"jetledger-faults-{shape}-") as tmp:
            report = asyncio.run(run_campaign(profile, Path(tmp)))
        print(report.table(), flush=True)
        ok &= report.ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
