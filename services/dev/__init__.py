"""``jetledger dev``: the whole system on one machine, as real processes.

- ``DevSystem`` starts (or reuses) NATS and Postgres, provisions the streams, runs the card,
  transaction, ledger and notification services as supervised child processes and stops them all;
- ``ports`` knows which ports the services take and fails clearly when one is taken;
- ``state`` records what is running in the data directory (pids, endpoints, an env file), so other
  terminals can find the system and a crashed run's leftovers can be cleaned up;
- ``logs`` turns the services' JSON log lines into readable terminal lines.
"""

from __future__ import annotations

from services.dev.ports import SERVICES, PortInUse, with_free_ports
from services.dev.system import DevSystem, StartFailed

__all__ = ["SERVICES", "DevSystem", "PortInUse", "StartFailed", "with_free_ports"]
