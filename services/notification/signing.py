"""Webhook signatures and retry timing: pure functions a receiver can reimplement.

Headers follow the Standard Webhooks names: ``webhook-id`` (also sent as ``Idempotency-Key``) is the
notification id, stable across every retry; ``webhook-timestamp`` is Unix seconds of this attempt;
``webhook-signature`` is ``v1,<base64 HMAC-SHA256>`` keyed with the endpoint's secret (its UTF-8
bytes) over ``"<id>.<timestamp>.<body>"``, so the body and the time are both covered and a receiver
can refuse stale replays.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
from typing import Final

HEADER_ID: Final = "webhook-id"
HEADER_TIMESTAMP: Final = "webhook-timestamp"
HEADER_SIGNATURE: Final = "webhook-signature"
HEADER_IDEMPOTENCY_KEY: Final = "Idempotency-Key"
HEADER_ATTEMPT: Final = "webhook-attempt"


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """Return the ``webhook-signature`` value of one attempt."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Tell whether a received webhook's signature matches (what a receiver does)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        expected = sign(secret, lowered[HEADER_ID], int(lowered[HEADER_TIMESTAMP]), body)
    except (KeyError, ValueError):
        return False
    offered = lowered.get(HEADER_SIGNATURE, "").split(" ")
    return any(hmac.compare_digest(expected, candidate) for candidate in offered)


def backoff(attempts: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones: exponential, jittered.

    "Equal jitter": half the exponential delay is kept, half is random, so retries of many
    deliveries that failed together spread out, yet none comes back sooner than half the delay.
    """
    delay = min(cap, base * (1 << min(max(attempts - 1, 0), 40)))
    jitter: float = (rng or random).uniform(0, delay / 2)
    return delay / 2 + jitter
