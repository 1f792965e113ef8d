"""Cluster routes over TLS on real nats-servers: two nodes with certificates of our CA form a
route; a node without one is refused, so it can neither join nor read what the cluster carries."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.localservers import LocalNats, free_port
from services.security.local import LocalCredentials, ensure_local_credentials
from services.security.natsauth import route_tls_block


def cluster_block(port: int, peers: list[int], creds: LocalCredentials | None) -> str:
    routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in peers)
    tls = route_tls_block(creds.server.cert, creds.server.key, creds.ca) if creds else ""
    return f"cluster {{\n  name: jl\n  listen: 127.0.0.1:{port}\n  routes: [{routes}]\n{tls}}}\n"


def peers_of(node: LocalNats) -> set[str]:
    """The names of the servers ``node`` has routes to (a peer may use a pool of connections)."""
    with urllib.request.urlopen(f"{node.monitor_url}/routez", timeout=5) as reply:  # noqa: S310
        return {route.get("remote_name", "") for route in json.load(reply).get("routes") or []}


def wait_for(predicate: object, seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.2)
    return False


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[LocalNats]]:
    creds = ensure_local_credentials(tmp_path / "security")
    a, b, rogue = free_port(), free_port(), free_port()
    started: list[LocalNats] = []
    try:
        for name, port, peers, own in (
            ("n1", a, [b], creds),
            ("n2", b, [a], creds),
            ("rogue", rogue, [a, b], None),
        ):
            node = LocalNats(
                store_dir=tmp_path / name,
                server_name=name,
                extra_config=cluster_block(port, peers, own),
            )
            started.append(node.start())
        yield started
    finally:
        for node in started:
            node.stop()


def test_tls_routes_form_and_a_node_without_a_certificate_is_refused(
    nodes: list[LocalNats],
) -> None:
    n1, n2, rogue = nodes
    assert wait_for(lambda: peers_of(n1) == {"n2"} and peers_of(n2) == {"n1"})
    time.sleep(2)  # the rogue keeps dialling both; give it time to fail
    assert peers_of(rogue) == set()
    assert peers_of(n1) == {"n2"} and peers_of(n2) == {"n1"}
    log = (n1.store_dir / "nats-server.log").read_text()
    assert "tls" in log.lower()
