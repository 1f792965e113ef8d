"""Postgres trouble as the query services report it: ``Unavailable``, never a class name.

A read that meets a restarting Postgres (``AdminShutdown``), a dropped connection, a pool with
no free connection in time, or a statement cancelled by a timeout is a dependency outage: the
caller should retry, so it becomes ``contracts.errors.Unavailable`` (gRPC UNAVAILABLE) with a
message a person can read. Anything else from Postgres is a bug and is left alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import psycopg
import psycopg.errors
import psycopg_pool

from contracts.errors import Unavailable

OUTAGES = (
    psycopg.OperationalError,  # connection lost, AdminShutdown, cannot connect
    psycopg.InterfaceError,  # the connection was closed under us
    psycopg_pool.PoolTimeout,
    psycopg.errors.QueryCanceled,  # statement_timeout, or cancelled by an operator
)


@contextlib.asynccontextmanager
async def database_outage_as_unavailable(what: str) -> AsyncIterator[None]:
    """Turn a Postgres outage inside the block into ``Unavailable`` naming ``what``."""
    try:
        yield
    except OUTAGES as exc:
        raise Unavailable(f"{what} cannot reach its database right now; retry shortly") from exc
