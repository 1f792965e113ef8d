"""The intake's client of the card service: ``GetCard`` over gRPC, as in the seed's flow.

Correctness does not depend on this lookup (compare-and-set on the card's family does), so a
positive answer is kept and reused; an unknown card is NOT_FOUND before anything is decided, and a
card service that cannot be reached (with nothing usable kept) is a clear UNAVAILABLE.

The cache never makes load on the card service bursty (docs/intake.md, "Card lookups"):

- **single flight**: one ``GetCard`` in flight per card, whoever asks; every other caller of that
  card awaits the same call;
- **jittered expiry**: each answer is fresh for ``ttl`` × a random factor in [1 − jitter, 1], so
  cards looked up together do not expire together;
- **refresh ahead, stale while revalidate**: a caller that finds an answer past its freshness but
  younger than ``max_stale`` gets it at once, while one background ``GetCard`` refreshes it; only a
  card never seen (or older than ``max_stale``) makes its caller wait for the card service;
- **budget**: at most ``max_entries`` cards are kept (least recently used leaves first), and at
  most ``max_in_flight`` ``GetCard`` calls run at once.

A background refresh that fails keeps the old answer until ``max_stale`` (and is retried at most
once a second per card); one that says NOT_FOUND drops it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from contracts.errors import NotFound, Unavailable
from jetledger.card.v1 import card_pb2, card_pb2_grpc
from services.grpc_errors import error_from_rpc

RETRY_AFTER = 1.0  # seconds between refresh attempts of a card while the card service fails
LOOKUP_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 2.5)


@dataclass(slots=True)
class _Entry:
    card: card_pb2.CardResponse
    fresh_until: float  # monotonic: reuse without asking before this
    stale_until: float  # monotonic: reuse (and refresh in the background) before this


class CardLookup:
    """Verifies cards through the card service, keeping answers as described above."""

    def __init__(
        self,
        target: str,
        *,
        timeout: float = 2.0,
        ttl: float = 600.0,
        jitter: float = 0.5,
        max_stale: float = 3600.0,
        max_entries: int = 100_000,
        max_in_flight: int = 64,
        registry: CollectorRegistry | None = None,
        channel: grpc.aio.Channel | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 <= jitter < 1:
            raise ValueError("jitter must be in [0, 1)")
        # TLS and the intake's own token when security is on (services.security.config).
        self._channel = channel if channel is not None else grpc.aio.insecure_channel(target)
        self._stub = card_pb2_grpc.CardServiceStub(self._channel)
        self._target = target
        self._timeout = timeout
        self._ttl = ttl
        self._jitter = jitter
        self._max_stale = max(max_stale, ttl)
        self._max_entries = max_entries
        self._clock = clock
        self._known: OrderedDict[str, _Entry] = OrderedDict()
        self._flights: dict[str, asyncio.Task[card_pb2.CardResponse]] = {}
        self._slots = asyncio.Semaphore(max_in_flight)
        registry = registry if registry is not None else CollectorRegistry()
        self._latency = Histogram(
            "jetledger_card_lookup_seconds",
            "GetCard latency as seen by the transaction service (calls to the card service only)",
            buckets=LOOKUP_BUCKETS,
            registry=registry,
        )
        self._served = Counter(
            "jetledger_card_lookups_total",
            "Card lookups by how they were answered (fresh, stale, waited)",
            ["answer"],
            registry=registry,
        )
        self._calls = Counter(
            "jetledger_card_lookup_calls_total",
            "GetCard calls made to the card service, by result",
            ["result"],
            registry=registry,
        )
        self._entries = Gauge(
            "jetledger_card_lookup_entries", "Cards kept by the lookup cache", registry=registry
        )

    def __len__(self) -> int:
        return len(self._known)

    async def get(self, card_id: str) -> card_pb2.CardResponse:
        """Return the card (possibly kept); NotFound or Unavailable otherwise."""
        now = self._clock()
        entry = self._known.get(card_id)
        if entry is not None and now < entry.stale_until:
            self._known.move_to_end(card_id)
            if now < entry.fresh_until:
                self._served.labels("fresh").inc()
            else:
                self._served.labels("stale").inc()
                self._flight(card_id)  # refresh ahead: the caller does not wait for it
            return entry.card
        self._served.labels("waited").inc()
        # shield: a caller that gives up (deadline, cancel) does not cancel the others' call.
        return await asyncio.shield(self._flight(card_id))

    def _flight(self, card_id: str) -> asyncio.Task[card_pb2.CardResponse]:
        """The one ``GetCard`` in flight for this card, started if there is none."""
        task = self._flights.get(card_id)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._fetch(card_id))
            self._flights[card_id] = task
            task.add_done_callback(lambda done: self._landed(card_id, done))
        return task

    def _landed(self, card_id: str, task: asyncio.Task[card_pb2.CardResponse]) -> None:
        if self._flights.get(card_id) is task:
            del self._flights[card_id]
        if task.cancelled():
            return
        error = task.exception()  # retrieved here, so a refresh nobody awaits is not "lost"
        if isinstance(error, NotFound):
            self._known.pop(card_id, None)
            self._entries.set(len(self._known))
        elif error is not None and (entry := self._known.get(card_id)) is not None:
            # Keep serving what we had, and ask again in a second, not on every command.
            entry.fresh_until = min(self._clock() + RETRY_AFTER, entry.stale_until)

    async def _fetch(self, card_id: str) -> card_pb2.CardResponse:
        async with self._slots:
            started = time.perf_counter()
            try:
                card = await self._stub.GetCard(
                    card_pb2.CardRequest(card_id=card_id), timeout=self._timeout
                )
            except grpc.aio.AioRpcError as exc:
                error = error_from_rpc(exc)
                if isinstance(error, NotFound):
                    self._calls.labels("not_found").inc()
                    raise error from exc
                self._calls.labels("failed").inc()
                raise Unavailable(
                    f"card service at {self._target} did not answer GetCard: {exc.details()}"
                ) from exc
            finally:
                self._latency.observe(time.perf_counter() - started)
        self._calls.labels("ok").inc()
        self._keep(card_id, card)
        return card

    def _keep(self, card_id: str, card: card_pb2.CardResponse) -> None:
        now = self._clock()
        fresh = self._ttl * (1.0 - self._jitter * random.random())  # jitter, not a secret
        self._known[card_id] = _Entry(card, now + fresh, now + self._max_stale)
        self._known.move_to_end(card_id)
        while len(self._known) > self._max_entries:
            self._known.popitem(last=False)
        self._entries.set(len(self._known))

    async def close(self) -> None:
        """Stop background refreshes and close the channel."""
        for task in list(self._flights.values()):
            task.cancel()
        await self._channel.close()
