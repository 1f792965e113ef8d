"""The nemesis: faults injected into a running system, on a schedule, each healed and timed.

Single node: ``kill -9`` of nats-server, of Postgres (the whole process group: postmaster and
backends), of each service, of the ledger projector between its Postgres commit and its ack (the
fault hook, ``projections/faults.py``), and a Postgres freeze (SIGSTOP/SIGCONT of the group).
Cluster: ``kill -9`` of the source stream's leader and of a follower (``services.localcluster``).
Every fault is injected, held for a short downtime, healed (the process restarted), and its times
recorded; recovery is measured afterwards from the workload's log.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from services.dev.system import DevSystem
from services.localcluster import LocalCluster
from services.localservers import LocalServerError

SINGLE_NODE_FAULTS = (
    "kill_nats",
    "kill_postgres",
    "freeze_postgres",
    "kill_card",
    "kill_transaction",
    "kill_ledger",
    "kill_notification",
    "ledger_after_commit",
)
CLUSTER_FAULTS = ("kill_stream_leader", "kill_stream_follower")


@dataclass
class Fault:
    """One injected fault and its times (monotonic seconds)."""

    kind: str
    injected: float
    healed: float = 0.0
    target: str = ""
    failover: float | None = None  # cluster: seconds until the stream had a new leader
    error: str = ""


class Nemesis:
    """Injects faults into ``system`` (and ``cluster``, when NATS is a cluster)."""

    def __init__(
        self, system: DevSystem, cluster: LocalCluster | None = None, downtime: float = 1.0
    ) -> None:
        self.system = system
        self.cluster = cluster
        self.downtime = downtime
        self.faults: list[Fault] = []

    def inject(self, kind: str) -> Fault:
        fault = Fault(kind, time.monotonic())
        self.faults.append(fault)
        action: Callable[[Fault], None] = getattr(self, f"_{kind}")
        try:
            action(fault)
        except Exception as exc:  # a fault that could not be healed is a finding, not a crash
            fault.error = f"{type(exc).__name__}: {exc}"
        fault.healed = time.monotonic()
        return fault

    # -- servers ----------------------------------------------------------------------------------

    def _kill_nats(self, fault: Fault) -> None:
        nats = self.system.nats
        assert nats is not None
        fault.target = f"nats-server pid {nats.pid}"
        nats.kill()
        time.sleep(self.downtime)
        nats.start()

    def _postgres_group(self) -> int:
        pg = self.system.postgres
        assert pg is not None and pg.pid is not None
        return pg.pid  # started in its own session: the process group is the postmaster's pid

    def _kill_postgres(self, fault: Fault) -> None:
        pgid = self._postgres_group()
        fault.target = f"postgres group {pgid}"
        os.killpg(pgid, signal.SIGKILL)
        assert self.system.postgres is not None and self.system.postgres.proc is not None
        self.system.postgres.proc.wait(30)
        time.sleep(self.downtime)
        self._start_postgres()

    def _start_postgres(self) -> None:
        pg = self.system.postgres
        assert pg is not None
        for attempt in range(30):
            try:
                pg.start()
                return
            except LocalServerError:
                if attempt == 29:
                    raise
                time.sleep(1)

    def _freeze_postgres(self, fault: Fault) -> None:
        pgid = self._postgres_group()
        fault.target = f"postgres group {pgid}"
        os.killpg(pgid, signal.SIGSTOP)
        try:
            time.sleep(self.downtime * 2)
        finally:
            os.killpg(pgid, signal.SIGCONT)

    # -- services ---------------------------------------------------------------------------------

    def _kill_service(self, name: str, fault: Fault) -> None:
        svc = self.system.services[name]
        assert svc.pid is not None
        fault.target = f"{name} pid {svc.pid}"
        os.kill(svc.pid, signal.SIGKILL)
        assert svc.proc is not None
        svc.proc.wait(30)
        time.sleep(self.downtime)
        svc.start()
        self.wait_serving(name)

    def _kill_card(self, fault: Fault) -> None:
        self._kill_service("card", fault)

    def _kill_transaction(self, fault: Fault) -> None:
        self._kill_service("transaction", fault)

    def _kill_ledger(self, fault: Fault) -> None:
        self._kill_service("ledger", fault)

    def _kill_notification(self, fault: Fault) -> None:
        self._kill_service("notification", fault)

    def _ledger_after_commit(self, fault: Fault) -> None:
        """Restart the ledger with its fault hook armed: it SIGKILLs itself after its third
        Postgres COMMIT, before the ack; then restart it without the hook."""
        svc = self.system.services["ledger"]
        assert svc.proc is not None
        svc.proc.kill()  # the running ledger goes down hard too: the hook needs a fresh process
        svc.proc.wait(30)
        plain = dict(svc.env)
        svc.env = {**plain, "JETLEDGER_LEDGER_FAULT": "after_commit@3"}
        try:
            svc.start()
            assert svc.proc is not None
            fault.target = f"ledger pid {svc.pid} (fault hook after_commit@3)"
            svc.proc.wait(60)  # killed by its own hook (needs traffic: the workload is running)
            if svc.proc.returncode != -signal.SIGKILL:
                fault.error = f"ledger exited with {svc.proc.returncode}, not by its hook"
        finally:
            svc.env = plain
            if svc.exited() is None:
                svc.proc.kill()
                svc.proc.wait(10)
            svc.start()
        self.wait_serving("ledger")

    # -- cluster ----------------------------------------------------------------------------------

    def _kill_node(self, fault: Fault, leader: bool) -> None:
        cluster = self.cluster
        assert cluster is not None
        stream = self.system.settings.stream
        current = cluster.wait_stream_leader(stream, timeout=60)
        node = current if leader else next(n for n in cluster.nodes if n != current)
        fault.target = f"{'leader' if leader else 'follower'} {node} pid {cluster.pid(node)}"
        killed_at = time.monotonic()
        cluster.kill(node)
        if leader:
            cluster.wait_stream_leader(stream, timeout=60, not_=node)
            fault.failover = time.monotonic() - killed_at
        time.sleep(self.downtime)
        cluster.restart(node)

    def _kill_stream_leader(self, fault: Fault) -> None:
        self._kill_node(fault, leader=True)

    def _kill_stream_follower(self, fault: Fault) -> None:
        self._kill_node(fault, leader=False)

    # -- health -----------------------------------------------------------------------------------

    def wait_serving(self, name: str, within: float = 60.0) -> None:
        svc = self.system.services[name]
        deadline = time.monotonic() + within
        while not svc.serving(timeout=1.0):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} not SERVING within {within}s")
            if svc.exited() is not None:
                svc.start()
            time.sleep(0.2)

    def heal_all(self) -> list[str]:
        """After the campaign: every process up and every service SERVING; what failed to."""
        try:
            self._heal_all()
        except Exception as exc:
            return [f"heal: {type(exc).__name__}: {exc}"]
        return []

    def _heal_all(self) -> None:
        nats = self.system.nats
        if nats is not None and nats.proc is not None and nats.proc.poll() is not None:
            nats.start()
        if self.cluster is not None:
            for name in self.cluster.nodes:
                if name not in self.cluster.alive():
                    self.cluster.restart(name)
        pg = self.system.postgres
        if pg is not None and pg.proc is not None and pg.proc.poll() is not None:
            self._start_postgres()
        for name in self.system.services:
            self.wait_serving(name, within=120.0)
