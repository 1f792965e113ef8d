"""Webhook signatures and backoff: what a receiver checks, and how retries spread out."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from services.notification.signing import (
    HEADER_ID,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    backoff,
    sign,
    verify,
)


@given(st.binary(max_size=200), st.integers(0, 2**40))
def test_signature_verifies_only_with_the_same_secret_body_and_time(
    body: bytes, stamp: int
) -> None:
    headers = {
        HEADER_ID: "S:1",
        HEADER_TIMESTAMP: str(stamp),
        HEADER_SIGNATURE: sign("k" * 20, "S:1", stamp, body),
    }
    assert verify("k" * 20, headers, body)
    assert not verify("x" * 20, headers, body)
    assert not verify("k" * 20, headers, body + b"!")
    assert not verify("k" * 20, {**headers, HEADER_TIMESTAMP: str(stamp + 1)}, body)
    assert not verify("k" * 20, {HEADER_ID: "S:1"}, body)


@given(st.integers(1, 60), st.floats(0.01, 10), st.floats(1, 600), st.integers(0, 2**32))
def test_backoff_is_exponential_capped_and_jittered(
    attempts: int, base: float, cap: float, seed: int
) -> None:
    delay = backoff(attempts, base, cap, random.Random(seed))
    full = min(cap, base * 2 ** min(attempts - 1, 40))
    assert full / 2 <= delay <= full
