"""The notification projection's Postgres DDL: a rebuildable schema and an operational one.

- ``<schema>`` (default ``notify``) holds what the stream decides: notifications, per-card alert
  state, preferences, webhook endpoints and the tracking rows (one per stream). A rebuild builds a
  shadow copy from sequence 1 and swaps it in by renaming schemas.
- ``<schema>_ops`` holds the state of side effects: webhook deliveries (attempts, next attempt,
  dead letters), and the projection's lease. A rebuild never touches it: nothing is re-sent,
  nothing in flight is forgotten.
"""

from __future__ import annotations

import re
from typing import Any, Final

import psycopg
from psycopg import sql

_SCHEMA_NAME: Final = re.compile(r"[a-z_][a-z0-9_]{0,40}")
# pg_advisory_xact_lock key serialising DDL when several replicas start at once.
DDL_LOCK_KEY: Final = 0x4A4E_4444  # "JNDD"

_PROJECTION_DDL: Final = """
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {s}.tracking (
    stream text PRIMARY KEY,
    last_sequence bigint NOT NULL,
    last_event_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- added after the first release (the runner records when the last applied message was stored)
ALTER TABLE {s}.tracking ADD COLUMN IF NOT EXISTS last_event_at timestamptz;
ALTER TABLE {s}.tracking ADD COLUMN IF NOT EXISTS updated_at timestamptz NOT NULL DEFAULT now();
CREATE TABLE IF NOT EXISTS {s}.notifications (
    notification_id text PRIMARY KEY,
    card_id text NOT NULL,
    kind text NOT NULL,
    occurred_at timestamptz NOT NULL,
    stream text NOT NULL,
    sequence bigint NOT NULL,
    sub smallint NOT NULL,
    body jsonb NOT NULL,
    UNIQUE (stream, sequence, sub)
);
CREATE INDEX IF NOT EXISTS notifications_by_card
    ON {s}.notifications (card_id, occurred_at, notification_id);
CREATE INDEX IF NOT EXISTS notifications_by_time
    ON {s}.notifications (occurred_at, notification_id);
CREATE TABLE IF NOT EXISTS {s}.cards (
    card_id text PRIMARY KEY,
    state jsonb NOT NULL
);
CREATE TABLE IF NOT EXISTS {s}.preferences (
    card_id text PRIMARY KEY,
    kinds text[],
    low_balance_threshold bigint,
    low_balance_percent integer
);
CREATE TABLE IF NOT EXISTS {s}.webhook_endpoints (
    card_id text NOT NULL,
    endpoint_id text NOT NULL,
    url text NOT NULL,
    secret text NOT NULL,
    PRIMARY KEY (card_id, endpoint_id)
);
"""

_OPS_DDL: Final = """
CREATE SCHEMA IF NOT EXISTS {o};
CREATE TABLE IF NOT EXISTS {o}.deliveries (
    delivery_id bigserial PRIMARY KEY,
    notification_id text NOT NULL,
    card_id text NOT NULL,
    scope text NOT NULL,
    endpoint_id text NOT NULL,
    body bytea NOT NULL,
    status text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'delivered', 'dead', 'cancelled')),
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_http_status integer NOT NULL DEFAULT 0,
    last_error text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    delivered_at timestamptz,
    UNIQUE (notification_id, scope, endpoint_id)
);
-- added after the first release: the trace of the event that caused the delivery (W3C)
ALTER TABLE {o}.deliveries ADD COLUMN IF NOT EXISTS traceparent text NOT NULL DEFAULT '';
CREATE INDEX IF NOT EXISTS deliveries_due
    ON {o}.deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS deliveries_by_card ON {o}.deliveries (card_id, delivery_id);
-- the single writer's fencing epoch (projections.lease)
CREATE TABLE IF NOT EXISTS {o}.projector_lease (
    projection text PRIMARY KEY,
    epoch bigint NOT NULL,
    holder text NOT NULL,
    acquired_at timestamptz NOT NULL DEFAULT now()
);
"""


def check_schema(name: str) -> str:
    """Return ``name`` if it is a safe lower-case schema name, else raise ``ValueError``."""
    if _SCHEMA_NAME.fullmatch(name) is None:
        raise ValueError(f"schema name must match {_SCHEMA_NAME.pattern}, got {name!r}")
    return name


def ops_schema(schema: str) -> str:
    """The operational schema that goes with a projection schema."""
    return f"{check_schema(schema)}_ops"


def wake_channel(schema: str) -> str:
    """The LISTEN/NOTIFY channel on which new notifications and deliveries are announced."""
    return f"{check_schema(schema)}_wake"


def projection_ddl(schema: str) -> sql.Composed:
    """The DDL of the rebuildable projection tables in ``schema``."""
    return sql.SQL(_PROJECTION_DDL).format(s=sql.Identifier(check_schema(schema)))


async def create_schemas(conn: psycopg.AsyncConnection[Any], schema: str) -> None:
    """Create the projection and operational schemas if missing (safe with concurrent replicas)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (DDL_LOCK_KEY,))
        await conn.execute(projection_ddl(schema))
        await conn.execute(sql.SQL(_OPS_DDL).format(o=sql.Identifier(ops_schema(schema))))


# What the newest DDL above created: a schema lacking any of these needs ``create_schemas``.
_REQUIRED: Final = (
    ("{s}", "tracking", "updated_at"),
    ("{s}", "notifications", "body"),
    ("{s}", "cards", "state"),
    ("{s}", "preferences", "kinds"),
    ("{s}", "webhook_endpoints", "secret"),
    ("{o}", "deliveries", "traceparent"),
    ("{o}", "projector_lease", "epoch"),
)


async def schema_missing(conn: psycopg.AsyncConnection[Any], schema: str) -> list[str]:
    """The ``schema.table.column``s the current DDL has and the database lacks."""
    names = {"{s}": check_schema(schema), "{o}": ops_schema(schema)}
    wanted = [(names[s], table, column) for s, table, column in _REQUIRED]
    cur = await conn.execute(
        "SELECT table_schema, table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = ANY(%s)",
        (sorted(set(names.values())),),
    )
    present = {(str(a), str(b), str(c)) for a, b, c in await cur.fetchall()}
    return [".".join(w) for w in wanted if w not in present]
