"""The ledger projection's SQL: table DDL per schema, identifiers, and the versioned migrations.

The projection lives in one Postgres schema (``ledger``) so a rebuild can build a shadow schema with
the *current* DDL and swap it in by renaming schemas. Operational state (the relay's position, the
projection's lease, the migration log) lives in ``ledger_ops``, which a rebuild never touches.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Final

from psycopg import sql

LIVE_SCHEMA: Final = "ledger"
OPS_SCHEMA: Final = "ledger_ops"
PROJECTION_NAME: Final = "ledger"
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


@cache
def _sql_file(name: str) -> str:
    return (resources.files(__package__) / "sql" / name).read_text()


def _check_schema(schema: str) -> str:
    if _SCHEMA_NAME.fullmatch(schema) is None:
        raise ValueError(f"not a plain schema name: {schema!r}")
    return schema


def projection_tables_sql(schema: str) -> str:
    """Return the DDL creating the projection's schema and tables (no secondary indexes)."""
    return _sql_file("projection.sql").replace("{schema}", _check_schema(schema))


def projection_indexes_sql(schema: str) -> str:
    """Return the DDL creating the projection's secondary indexes."""
    return _sql_file("indexes.sql").replace("{schema}", _check_schema(schema))


def table(schema: str, name: str) -> sql.Composed:
    """Return a safely quoted ``schema.table`` identifier."""
    return sql.SQL("{}.{}").format(sql.Identifier(_check_schema(schema)), sql.Identifier(name))


@dataclass(frozen=True, slots=True)
class Migration:
    """One versioned schema change, applied once, in order, under an advisory lock."""

    version: int
    name: str
    statements: str


def migrations() -> list[Migration]:
    """Every migration, oldest first. Append new ones; never edit an applied one."""
    return [
        Migration(
            1,
            "ops schema, live projection schema and indexes",
            "\n".join(
                [
                    _sql_file("ops.sql"),
                    projection_tables_sql(LIVE_SCHEMA),
                    projection_indexes_sql(LIVE_SCHEMA),
                ]
            ),
        ),
        Migration(
            2,
            "balances and running balances in numeric: they sum unboundedly many legs",
            # Migration 1 builds from the current DDL, so a fresh database is already there.
            """
            DO $$ BEGIN
            IF (SELECT data_type FROM information_schema.columns WHERE table_schema = 'ledger'
                AND table_name = 'balances' AND column_name = 'posted') = 'bigint' THEN
                ALTER TABLE ledger.entries
                    ALTER COLUMN balance_after TYPE numeric,
                    ADD CHECK (balance_after = trunc(balance_after));
                ALTER TABLE ledger.balances
                    ALTER COLUMN posted TYPE numeric,
                    ALTER COLUMN pending TYPE numeric,
                    ALTER COLUMN credit_limit TYPE numeric,
                    ALTER COLUMN available TYPE numeric,
                    ADD CHECK (posted = trunc(posted)),
                    ADD CHECK (pending = trunc(pending)),
                    ADD CHECK (credit_limit = trunc(credit_limit)),
                    ADD CHECK (available = trunc(available));
            END IF;
            END $$;
            """,
        ),
        Migration(
            3,
            "the entries table is the outbox: the relay keeps its position",
            """
            CREATE TABLE ledger_ops.relay_position (
                stream              text PRIMARY KEY,
                last_sequence       bigint NOT NULL,
                last_leg            smallint NOT NULL,
                derived_sequence    bigint NOT NULL,
                updated_at          timestamptz NOT NULL DEFAULT now()
            );
            DROP TABLE IF EXISTS ledger_ops.outbox;
            """,
        ),
    ]
