"""The ledger's e2e tests share the integration fixtures (fresh database, source stream)."""

from __future__ import annotations

from tests.integration.ledger.conftest import js, ledger_db, ledger_store, nc

__all__ = ["js", "ledger_db", "ledger_store", "nc"]
