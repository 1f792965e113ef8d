"""Stream provisioning: idempotent, upgrades older configurations, and the history is immutable."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from nats.aio.client import Client as NATS
from nats.js.api import DiscardPolicy, StorageType, StreamConfig
from nats.js.errors import APIError

from contracts.subjects import StreamNames
from eventstore import EventStore, IncompatibleStream, OutgoingMessage, StoreError

pytestmark = pytest.mark.timeout(30)


async def raw_config(nc: NATS, stream: str) -> dict[str, object]:
    """Read a stream's configuration as the server reports it (no client-side defaults)."""
    reply = await nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=5)
    config: dict[str, object] = json.loads(reply.data)["config"]
    return config


async def test_streams_are_provisioned_immutable_unlimited_and_atomic(
    nats_conn: NATS, streams: StreamNames
) -> None:
    store = EventStore(nats_conn, streams)
    await store.ensure_streams(duplicate_window=timedelta(seconds=90))
    await store.ensure_streams(duplicate_window=timedelta(seconds=90))  # idempotent

    for name, subjects in (
        (streams.source, streams.subjects.source_stream_subjects()),
        (streams.derived, streams.subjects.derived_stream_subjects()),
    ):
        config = await raw_config(nats_conn, name)
        assert config["subjects"] == subjects
        assert config["storage"] == "file"
        assert config["deny_delete"] is True
        assert config["deny_purge"] is True
        assert config["allow_direct"] is True
        assert config["allow_atomic"] is True
        assert config["allow_rollup_hdrs"] is False
        assert config["discard"] == "new"
        assert config["retention"] == "limits"
        assert (config["max_age"], config["max_bytes"], config["max_msgs"]) == (0, -1, -1)
        assert config["max_msgs_per_subject"] == -1
        assert config["num_replicas"] == 1
        assert config["duplicate_window"] == 90 * 10**9


async def test_a_stream_made_by_an_older_configuration_is_brought_up_to_date(
    nats_conn: NATS, streams: StreamNames
) -> None:
    js = nats_conn.jetstream()
    await js.add_stream(
        StreamConfig(
            name=streams.source,
            subjects=[f"{streams.subjects.prefix}card.>"],
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_age=3600,
            duplicate_window=120,
        )
    )
    await js.publish(streams.subjects.card("c1"), b"{}")

    await EventStore(nats_conn, streams).ensure_streams(duplicate_window=timedelta(seconds=30))

    config = await raw_config(nats_conn, streams.source)
    assert config["subjects"] == streams.subjects.source_stream_subjects()
    assert (config["deny_delete"], config["deny_purge"], config["allow_atomic"]) == (True,) * 3
    assert (config["discard"], config["max_age"]) == ("new", 0)
    assert config["duplicate_window"] == 30 * 10**9
    info = await js.stream_info(streams.source)
    assert info.state.messages == 1  # the upgrade kept the history


async def test_a_stream_with_card_events_on_per_kind_subjects_is_refused(
    nats_conn: NATS, streams: StreamNames
) -> None:
    """The first layout stored a card's events on ``card.<id>.<kind>``: no reader of this release
    would see them, so neither provisioning nor a service start goes on as if it were empty."""
    js = nats_conn.jetstream()
    await js.add_stream(
        StreamConfig(name=streams.source, subjects=[f"{streams.subjects.prefix}card.>"])
    )
    await js.publish(f"{streams.subjects.prefix}card.c1.issued", b"{}")
    store = EventStore(nats_conn, streams)

    with pytest.raises(IncompatibleStream, match=r"card\.c1\.issued"):
        await store.ensure_streams()
    with pytest.raises(IncompatibleStream):
        await store.refuse_legacy_layout()
    config = await raw_config(nats_conn, streams.source)
    assert config["subjects"] == [f"{streams.subjects.prefix}card.>"]  # left as it was


async def test_deletes_and_purges_are_refused(store: EventStore, nats_conn: NATS) -> None:
    subject = store.names.subjects.card("c1")
    position = await store.append(OutgoingMessage(subject, b"{}"))
    js = nats_conn.jetstream()

    with pytest.raises(APIError) as deleted:
        await js.delete_msg(position.stream, position.sequence)
    assert deleted.value.err_code == 10057
    with pytest.raises(APIError):
        await js.purge_stream(position.stream)

    assert (await store.last_by_subject(subject)) is not None


async def test_an_unsafe_reconfiguration_is_reported(nats_conn: NATS, streams: StreamNames) -> None:
    js = nats_conn.jetstream()
    await js.add_stream(
        StreamConfig(
            name=streams.source,
            subjects=streams.subjects.source_stream_subjects(),
            storage=StorageType.MEMORY,
        )
    )
    with pytest.raises(StoreError, match="storage"):
        await EventStore(nats_conn, streams).ensure_streams()
