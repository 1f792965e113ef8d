"""Durable acks (docs/architecture.md, invariant 4): the running server's effective config says ``sync_interval: always``.

A ``kill -9`` test cannot prove durability against power loss (the page cache survives a process
kill), so the proof is the configuration the server itself reports on its monitor endpoint.
"""

from __future__ import annotations

import json
import os
import urllib.request

import pytest

from services.localservers import Servers

pytestmark = pytest.mark.timeout(30)


def running_varz(servers: Servers) -> dict[str, object]:
    """Return ``/varz`` of the server the suite runs against (local, or external by env)."""
    if servers.nats is not None:
        return servers.nats.varz()
    monitor = os.environ.get("JETLEDGER_NATS_MONITOR_URL", "")
    if not monitor:
        pytest.fail(
            "the suite runs against an external NATS (JETLEDGER_NATS_URL) but "
            "JETLEDGER_NATS_MONITOR_URL (e.g. http://host:8222) is not set: the durable-ack "
            "setting cannot be verified"
        )
    with urllib.request.urlopen(f"{monitor.rstrip('/')}/varz", timeout=5) as resp:  # noqa: S310
        data: dict[str, object] = json.load(resp)
    return data


def test_the_running_server_fsyncs_every_write(servers: Servers) -> None:
    varz = running_varz(servers)
    jetstream = varz["jetstream"]
    assert isinstance(jetstream, dict)
    config = jetstream["config"]
    assert isinstance(config, dict)
    assert config.get("sync_always") is True, f"JetStream config: {config}"
