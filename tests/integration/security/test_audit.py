"""The stream audit on a real nats-server: sealed events pass; a raw publish, a copied MAC and an
event sealed with a key we do not hold are each reported, by position."""

from __future__ import annotations

import os

from nats.aio.client import Client as NATS

from contracts.subjects import StreamNames
from eventstore import EventStore, Expectation, OutgoingMessage
from eventstore import headers as h
from eventstore.integrity import Keyring, Verdict, seal
from services.security.audit import audit_stream

RING = Keyring("k1", {"k1": os.urandom(32)})


async def test_the_audit_reports_exactly_the_messages_that_do_not_check(
    store: EventStore, nats_conn: NATS, streams: StreamNames
) -> None:
    subjects = streams.subjects
    funded, frozen = subjects.card("a"), subjects.card("a")
    family = subjects.card("a")
    good = await store.append(
        seal(RING, OutgoingMessage(funded, b'{"n":1}', expect=Expectation(family, 0)))
    )
    js = nats_conn.jetstream()
    raw = await js.publish(funded, b'{"n":2}', stream=streams.source)
    copied = await js.publish(
        frozen,
        b'{"n":3}',
        headers={h.MAC: "AAAA", h.MAC_KEY_ID: "k1"},
        stream=streams.source,
    )
    thief = Keyring("k9", {"k9": os.urandom(32)})
    stolen = await store.append(seal(thief, OutgoingMessage(frozen, b'{"n":4}')))
    marker = subjects.command_marker("c1")
    await store.append(seal(RING, OutgoingMessage(marker, b"{}", expect=Expectation(marker, 0))))

    report = await audit_stream(store, RING)
    assert report.checked == 5
    assert [(f.sequence, f.verdict) for f in report.findings] == [
        (raw.seq, Verdict.MISSING),
        (copied.seq, Verdict.MISMATCH),
        (stolen.sequence, Verdict.UNKNOWN_KEY),
    ]
    assert good.sequence not in {f.sequence for f in report.findings}
    assert not report.ok
    assert str(report.findings[0]).endswith("MAC missing")
