"""Shared fixtures: one real nats-server and one real Postgres per test session.

Set ``JETLEDGER_NATS_URL`` / ``JETLEDGER_DATABASE_URL`` to run the suite against external servers.
Tests isolate themselves with unique stream names and subject prefixes (``streams`` fixture)
rather than by truncating anything.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from contracts.subjects import StreamNames, Subjects
from services.localservers import Servers, local_or_external

# embedded tools read XDG_RUNTIME_DIR; an unset one only warns, but warnings are errors here.
os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """The session's NATS and Postgres (local processes unless the environment names servers)."""
    data_dir: Path = tmp_path_factory.mktemp("servers")
    with local_or_external(
        nats_url=os.environ.get("JETLEDGER_NATS_URL", ""),
        database_url=os.environ.get("JETLEDGER_DATABASE_URL", ""),
        data_dir=data_dir,
    ) as running:
        yield running


@pytest.fixture(scope="session")
def nats_url(servers: Servers) -> str:
    return servers.nats_url


@pytest.fixture(scope="session")
def database_url(servers: Servers) -> str:
    return servers.database_url


def unique_token() -> str:
    """A short random token usable in stream names, subject prefixes and ids."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def streams() -> StreamNames:
    """Stream names and a subject prefix that belong to this test alone."""
    token = unique_token()
    return StreamNames(
        source=f"T{token}",
        derived=f"T{token}_DERIVED",
        subjects=Subjects(f"t{token}."),
    )
