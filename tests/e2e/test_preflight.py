"""The services create nothing at start: without provisioned streams or migrated schemas they
stop at once with one line naming the command that creates them (the Jobs run it first)."""

from __future__ import annotations

import psycopg
import pytest

from contracts.errors import Unavailable
from contracts.subjects import StreamNames
from services.card import main as card_main
from services.ledger import main as ledger_main
from services.localservers import free_port
from services.notification import main as notification_main
from services.preflight import (
    migrate,
    provision,
    require_ledger_schema,
    require_notification_schema,
)
from tests.e2e.conftest import settings_for
from tests.notifykit import fresh_database


async def never() -> None:
    raise AssertionError("the service should not have started")


async def test_a_service_refuses_to_start_without_its_streams(
    streams: StreamNames, nats_url: str, database_url: str
) -> None:
    settings = settings_for(streams, nats_url, database_url)
    with pytest.raises(Unavailable, match=r"do not exist: run `jetledger provision`"):
        await card_main.start(settings, port=0, metrics=False)
    await provision(settings)
    runtime = await card_main.start(settings, port=0, metrics=False)
    await runtime.stop(grace=1)


async def test_the_projectors_refuse_to_start_without_their_schemas(
    streams: StreamNames, nats_url: str, database_url: str
) -> None:
    async with fresh_database(database_url) as db:
        settings = settings_for(
            streams,
            nats_url,
            db,
            ledger_port=free_port(),
            ledger_metrics_port=free_port(),
            notification_port=free_port(),
            notification_metrics_port=free_port(),
        )
        await provision(settings)
        with pytest.raises(Unavailable, match=r"ledger migrations .* run `jetledger migrate`"):
            await ledger_main.serve(settings, until=never)
        with pytest.raises(
            Unavailable, match=r"notification schema notify lacks .* `jetledger migrate`"
        ):
            await notification_main.serve(settings, until=never)
        await migrate(settings)
        async with await psycopg.AsyncConnection.connect(db) as conn:
            await require_ledger_schema(conn)
            await require_notification_schema(conn, settings.notification_schema)
