"""Sealed webhook secrets: AES-GCM envelopes bound to their endpoint, with key rotation."""

from __future__ import annotations

import os

import pytest

from eventstore.integrity import Keyring
from services.security.secretbox import (
    SecretUnreadable,
    endpoint_context,
    is_sealed,
    open_sealed,
    seal,
)

RING = Keyring("kek1", {"kek1": os.urandom(32)})
SECRET = "whsec_correct-horse-battery-staple"


def test_a_sealed_secret_opens_in_its_context_only() -> None:
    sealed = seal(RING, SECRET, "card:alice/ep1")
    assert is_sealed(sealed) and SECRET not in sealed and sealed.split(".")[1] == "kek1"
    assert open_sealed(RING, sealed, "card:alice/ep1") == SECRET
    with pytest.raises(SecretUnreadable):
        open_sealed(RING, sealed, "card:bob/ep1")


def test_the_same_secret_seals_differently_each_time() -> None:
    assert seal(RING, SECRET, "c") != seal(RING, SECRET, "c")


def test_altered_or_foreign_ciphertext_does_not_open() -> None:
    sealed = seal(RING, SECRET, "c")
    version, key_id, wrapped, data = sealed.split(".")
    flipped = data[:-2] + ("A" if data[-2] != "A" else "B") + data[-1]
    for bad in (
        ".".join([version, key_id, wrapped, flipped]),
        ".".join([version, "kek9", wrapped, data]),
        "plain-text-secret",
    ):
        with pytest.raises(SecretUnreadable):
            open_sealed(RING, bad, "c")
    stranger = Keyring("kek1", {"kek1": os.urandom(32)})
    with pytest.raises(SecretUnreadable):
        open_sealed(stranger, sealed, "c")


def test_rotation_keeps_old_secrets_readable() -> None:
    old = seal(RING, SECRET, "c")
    rotated = Keyring("kek2", {**RING.keys, "kek2": os.urandom(32)})
    new = seal(rotated, SECRET, "c")
    assert new.split(".")[1] == "kek2"
    assert open_sealed(rotated, old, "c") == open_sealed(rotated, new, "c") == SECRET


def test_an_endpoints_secret_does_not_open_for_another_endpoint_or_scope() -> None:
    sealed = seal(RING, SECRET, endpoint_context("alice", "ep1"))
    assert open_sealed(RING, sealed, endpoint_context("alice", "ep1")) == SECRET
    for other in (endpoint_context("alice", "ep2"), endpoint_context("", "ep1")):
        with pytest.raises(SecretUnreadable):
            open_sealed(RING, sealed, other)
