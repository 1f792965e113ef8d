"""Event MACs: what they cover, what they refuse, and how keys rotate (pure, no server)."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventstore import Expectation, OutgoingMessage
from eventstore import headers as h
from eventstore.batching import message_headers
from eventstore.integrity import Keyring, Verdict, check, compute, seal

RING = Keyring("k1", {"k1": os.urandom(32)})


def wire(msg: OutgoingMessage) -> dict[str, str]:
    """The headers a sealed message is stored with."""
    return message_headers(msg)


def sealed(data: bytes = b'{"amount":100}', subject: str = "card.alice.funded") -> OutgoingMessage:
    return seal(
        RING,
        OutgoingMessage(subject, data, expect=Expectation("card.alice.>", 7), msg_id="m-1"),
    )


def test_a_sealed_event_checks() -> None:
    msg = sealed()
    assert check(RING, msg.subject, msg.data, wire(msg)) is Verdict.VALID
    assert wire(msg)[h.MAC_KEY_ID] == "k1"


def test_an_event_without_a_mac_is_missing_one() -> None:
    assert check(RING, "card.alice.funded", b"{}", {}) is Verdict.MISSING


@pytest.mark.parametrize(
    "tamper",
    [
        lambda m, w: (m.subject.replace("alice", "bob"), m.data, w),
        lambda m, w: (m.subject, m.data.replace(b"100", b"900"), w),
        lambda m, w: (m.subject, m.data, {**w, h.EXPECTED_LAST_SUBJECT_SEQUENCE: "8"}),
        lambda m, w: (m.subject, m.data, {**w, h.EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT: "card.>"}),
        lambda m, w: (m.subject, m.data, {**w, h.MSG_ID: "m-2"}),
        lambda m, w: (m.subject, m.data, {k: v for k, v in w.items() if k != h.MSG_ID}),
        lambda m, w: (m.subject, m.data, {**w, h.MAC_KEY_ID: "k2"}),
    ],
    ids=["subject", "payload", "expected-seq", "expected-filter", "msg-id", "no-msg-id", "key-id"],
)
def test_any_change_to_what_the_mac_covers_is_detected(tamper: object) -> None:
    msg = sealed()
    subject, data, stored = tamper(msg, wire(msg))  # type: ignore[operator]
    assert check(RING, subject, data, stored) in {Verdict.MISMATCH, Verdict.UNKNOWN_KEY}


def test_a_mac_made_with_another_key_does_not_check() -> None:
    thief = Keyring("k1", {"k1": os.urandom(32)})  # same id, key not ours
    forged = seal(thief, OutgoingMessage("card.alice.funded", b"{}"))
    assert check(RING, forged.subject, forged.data, wire(forged)) is Verdict.MISMATCH


def test_rotation_new_key_signs_old_key_still_verifies() -> None:
    old = sealed()
    rotated = Keyring("k2", {**RING.keys, "k2": os.urandom(32)})
    new = seal(rotated, OutgoingMessage("card.alice.frozen", b"{}"))
    assert wire(new)[h.MAC_KEY_ID] == "k2"
    assert check(rotated, old.subject, old.data, wire(old)) is Verdict.VALID
    assert check(rotated, new.subject, new.data, wire(new)) is Verdict.VALID
    retired = Keyring("k2", {"k2": rotated.keys["k2"]})
    assert check(retired, old.subject, old.data, wire(old)) is Verdict.UNKNOWN_KEY


def test_keyrings_round_trip_and_refuse_weak_keys() -> None:
    assert Keyring.from_json(RING.to_json()) == RING
    with pytest.raises(ValueError, match="at least 32"):
        Keyring("k1", {"k1": b"short"})
    with pytest.raises(ValueError, match="signing key"):
        Keyring("k9", {"k1": os.urandom(32)})
    with pytest.raises(ValueError, match="not a keyring"):
        Keyring.from_json('{"signing": "k1", "keys": {"k1": "%%%"}}')


@given(data=st.binary(max_size=200), flip=st.integers(min_value=0, max_value=10_000))
def test_flipping_any_payload_bit_is_detected(data: bytes, flip: int) -> None:
    msg = sealed(data=data)
    stored = wire(msg)
    if not data:
        altered = b"\x00"
    else:
        index = flip % len(data)
        altered = data[:index] + bytes([data[index] ^ (1 << (flip % 8))]) + data[index + 1 :]
    assert check(RING, msg.subject, altered, stored) is Verdict.MISMATCH
    assert check(RING, msg.subject, msg.data, stored) is Verdict.VALID


@pytest.mark.parametrize(
    ("key", "key_id", "subject", "data", "wire", "mac"),
    [
        (
            b"k" * 32,
            "k1",
            "card.c-17",
            b'{"amount":1234}',
            {
                h.MSG_ID: "cmd-1:0",
                h.EXPECTED_LAST_SUBJECT_SEQUENCE: "41",
                h.EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT: "card.c-17.>",
                h.ACTOR: "svc:transaction",
            },
            "O9j8LG_if_T-J-R2ncjJgS6uRLDhv4aTDvPu49cXOVo",
        ),
        (b"\xff" * 40, "other", "card.x", b"", {}, "jYBcXjvi45vJ_J6YQ_njf-T8gcwL7lLoyrxD-gydG10"),
    ],
)
def test_the_mac_of_a_message_never_changes(
    key: bytes, key_id: str, subject: str, data: bytes, wire: dict[str, str], mac: str
) -> None:
    # Stored events keep their MACs for ever: a faster way to compute one must give the same bytes
    # (these were made by the first implementation), and a second call (a cached key) too.
    assert compute(key, key_id, subject, data, wire) == mac
    assert compute(key, key_id, subject, data, wire) == mac
