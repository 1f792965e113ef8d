"""The intake's client of the card service: ``GetCard`` over gRPC, as in the seed's flow.

Correctness does not depend on this lookup (compare-and-set on the card's family does), so
positive answers are cached briefly; an unknown card is NOT_FOUND before anything is decided,
and a card service that cannot be reached is a clear UNAVAILABLE.
"""

from __future__ import annotations

import time

import grpc
from prometheus_client import CollectorRegistry, Histogram

from contracts.errors import NotFound, Unavailable
from jetledger.card.v1 import card_pb2, card_pb2_grpc
from services.grpc_errors import error_from_rpc

LOOKUP_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 2.5)


class CardLookup:
    """Verifies cards through the card service, with a short positive cache."""

    def __init__(
        self,
        target: str,
        *,
        timeout: float = 2.0,
        ttl: float = 30.0,
        registry: CollectorRegistry | None = None,
        channel: grpc.aio.Channel | None = None,
    ) -> None:
        # TLS and the intake's own token when security is on (services.security.config).
        self._channel = channel if channel is not None else grpc.aio.insecure_channel(target)
        self._stub = card_pb2_grpc.CardServiceStub(self._channel)
        self._target = target
        self._timeout = timeout
        self._ttl = ttl
        self._known: dict[str, tuple[float, card_pb2.CardResponse]] = {}
        self._latency = Histogram(
            "jetledger_card_lookup_seconds",
            "GetCard latency as seen by the transaction service (cache misses only)",
            buckets=LOOKUP_BUCKETS,
            registry=registry,
        )

    async def get(self, card_id: str) -> card_pb2.CardResponse:
        """Return the card (possibly from cache); NotFound or Unavailable otherwise."""
        hit = self._known.get(card_id)
        now = time.monotonic()
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        started = time.perf_counter()
        try:
            card = await self._stub.GetCard(
                card_pb2.CardRequest(card_id=card_id), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as exc:
            error = error_from_rpc(exc)
            if isinstance(error, NotFound):
                raise error from exc
            raise Unavailable(
                f"card service at {self._target} did not answer GetCard: {exc.details()}"
            ) from exc
        finally:
            self._latency.observe(time.perf_counter() - started)
        self._known[card_id] = (now, card)
        if len(self._known) > 100_000:
            self._known.clear()
        return card

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()
