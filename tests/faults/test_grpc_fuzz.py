"""The gRPC status boundary, fuzzed against the four real services (``jetledger dev``'s processes).

Hypothesis draws every RPC's request messages (values at the edges, unknown enum numbers) and raw
garbage bytes for every method (a channel with identity serializers). Every call must end in an
allowed status: never UNKNOWN or INTERNAL, never a message naming an exception class. A request
answered INVALID_ARGUMENT must have appended nothing to the event stream.
"""

from __future__ import annotations

import json
import re
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jetledger.card.v1 import card_pb2
from jetledger.ledger.v1 import ledger_pb2
from jetledger.transaction.v1 import transaction_pb2
from services.dev.ports import with_free_ports
from services.dev.system import DevSystem
from services.settings import Settings
from tests.faults.protofuzz import Rpc, all_rpcs, requests

pytestmark = [pytest.mark.timeout(600), pytest.mark.faults]

ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,  # a watch that has nothing to say before our deadline
}
CLASS_NAME = re.compile(r"\b[A-Z][A-Za-z]*(Error|Exception|Shutdown|Warning)\b|Traceback")
ECHOABLE = re.compile(r"[ -~]{2,}")  # printable runs of a request: values a message may quote
RPCS = all_rpcs()


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevSystem]:
    token = uuid.uuid4().hex[:8]
    settings = Settings(
        security=False,  # fuzzing the decoders, not the access table (plaintext channels)
        data_dir=tmp_path_factory.mktemp("fuzz") / "data",
        stream=f"FZ{token}",
        derived_stream=f"FZ{token}_DERIVED",
        subject_prefix=f"fz{token}.",
    )
    with DevSystem(with_free_ports(settings), fresh=True) as running:
        yield running


@pytest.fixture(scope="module")
def channels(system: DevSystem) -> Iterator[dict[str, grpc.Channel]]:
    opened = {
        name: grpc.insecure_channel(f"127.0.0.1:{getattr(system.settings, f'{name}_port')}")
        for name in ("card", "transaction", "ledger", "notification")
    }
    yield opened
    for channel in opened.values():
        channel.close()


def last_sequence(system: DevSystem) -> int:
    """The source stream's last sequence, from the NATS monitoring endpoint."""
    assert system.nats is not None
    url = f"{system.nats.monitor_url}/jsz?streams=true"
    with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - our loopback server
        jsz = json.load(resp)
    for account in jsz.get("account_details", []):
        for stream in account.get("stream_detail", []):
            if stream["name"] == system.settings.stream:
                return int(stream["state"]["last_seq"])
    return 0


def call(
    channels: dict[str, grpc.Channel], rpc: Rpc, payload: bytes
) -> tuple[grpc.StatusCode, str]:
    """Send ``payload`` (already serialized) to ``rpc``; the status and message it ends with."""
    channel = channels[rpc.service]
    identity: Any = None
    try:
        if rpc.streaming:
            stream = channel.unary_stream(
                rpc.path, request_serializer=identity, response_deserializer=identity
            )(payload, timeout=1.0)
            for _ in stream:
                break
            stream.cancel()
            return grpc.StatusCode.OK, ""
        channel.unary_unary(rpc.path, request_serializer=identity, response_deserializer=identity)(
            payload, timeout=20.0
        )
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()
        if code == grpc.StatusCode.CANCELLED:
            return grpc.StatusCode.OK, ""
        return code, exc.details() or ""
    return grpc.StatusCode.OK, ""


def not_echoed(details: str, payload: bytes) -> str:
    """``details`` without the text the caller sent (a card id ``AError`` is not a class name).

    A printable run may begin with the field's length byte, so each run also counts without it.
    """
    runs = set(ECHOABLE.findall(payload.decode(errors="ignore")))
    for sent in sorted(runs | {run[1:] for run in runs}, key=len, reverse=True):
        if sent:  # whole tokens only: "Error" sent does not hide a DecodeError
            details = re.sub(rf"(?<![A-Za-z]){re.escape(sent)}(?![A-Za-z])", "", details)
    return details


def check(system: DevSystem, channels: dict[str, grpc.Channel], rpc: Rpc, payload: bytes) -> None:
    before = last_sequence(system)
    code, details = call(channels, rpc, payload)
    assert code in ALLOWED, f"{rpc.path} answered {code.name}: {details!r} to {payload!r}"
    assert not CLASS_NAME.search(not_echoed(details, payload)), (
        f"{rpc.path}: {details!r} names a class"
    )
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        assert last_sequence(system) == before, f"{rpc.path} appended on {payload!r}"


FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.mark.parametrize("rpc", RPCS, ids=lambda r: r.path.rsplit(".", 1)[1])
def test_every_request_message_ends_in_an_allowed_status(
    rpc: Rpc, system: DevSystem, channels: dict[str, grpc.Channel]
) -> None:
    @FUZZ
    @given(request=requests(rpc))
    def fuzz(request: Message) -> None:
        check(system, channels, rpc, request.SerializeToString())

    fuzz()


@pytest.mark.parametrize("rpc", RPCS, ids=lambda r: r.path.rsplit(".", 1)[1])
def test_garbage_bytes_on_every_method_end_in_an_allowed_status(
    rpc: Rpc, system: DevSystem, channels: dict[str, grpc.Channel]
) -> None:
    @FUZZ
    @given(payload=st.one_of(st.binary(min_size=1, max_size=64), st.just(b"\xff" * 8)))
    def fuzz(payload: bytes) -> None:
        check(system, channels, rpc, payload)

    fuzz()


def test_undecodable_bytes_are_invalid_argument_without_a_class_name(
    system: DevSystem, channels: dict[str, grpc.Channel]
) -> None:
    create = next(r for r in RPCS if r.path.endswith("/CreateTransaction"))
    code, details = call(channels, create, b"\xff\xff\xff\xff")
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert "DecodeError" not in details


def test_an_unknown_enum_number_is_invalid_argument_and_appends_nothing(
    system: DevSystem, channels: dict[str, grpc.Channel]
) -> None:
    issue = next(r for r in RPCS if r.path.endswith("/IssueCard"))
    request = card_pb2.IssueCardRequest(
        command_id="issue-enum-1",
        card_id="enum-card",
        cardholder_name="Ada",
        card_type=99,  # type: ignore[arg-type]
        currency="USD",
        credit_limit=1000,
        last4="4242",
    )
    before = last_sequence(system)
    code, details = call(channels, issue, request.SerializeToString())
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert "card_type" in details
    assert last_sequence(system) == before


def test_a_postgres_outage_during_a_read_is_unavailable(
    system: DevSystem, channels: dict[str, grpc.Channel]
) -> None:
    """Runs last in this module: it stops the module's Postgres, then starts it again."""
    balance = next(r for r in RPCS if r.path.endswith("/GetBalance"))
    request = ledger_pb2.GetBalanceRequest(account_id="card-nobody")
    assert system.postgres is not None
    system.postgres.kill()
    try:
        code, details = call(channels, balance, request.SerializeToString())
        assert code in {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}, (
            code,
            details,
        )
        assert not CLASS_NAME.search(details), details
    finally:
        system.postgres.start()


def test_a_timestamp_outside_its_range_is_invalid_argument(
    system: DevSystem, channels: dict[str, grpc.Channel]
) -> None:
    authorize = next(r for r in RPCS if r.path.endswith("/AuthorizeTransaction"))
    request = transaction_pb2.AuthorizeTransactionRequest(
        transaction_id="auth-ts-1",
        card_id="c",
        merchant_id="m",
        amount=transaction_pb2.Money(amount=100, currency="USD"),
    )
    request.expires_at.seconds = 10**15
    code, details = call(channels, authorize, request.SerializeToString())
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert "expires_at" in details


def test_an_echoed_request_value_is_not_taken_for_a_class_name() -> None:
    # found by hypothesis: a card id "AError" quoted back in "card AError not found"
    sent = b"\n\x06card-1\x12\x06AError"
    assert not CLASS_NAME.search(not_echoed("card AError not found", sent))
    assert CLASS_NAME.search(not_echoed("card AError: DecodeError", sent))
