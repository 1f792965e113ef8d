"""Security on a real system (``jetledger dev`` with security on, its own NATS and Postgres):
every RPC of the four services refuses anonymous and wrong-role callers, the operator's token
works, a forged card event published with another service's NATS certificate is refused, and
every event records the identity that caused it under a MAC that checks."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import nats
import pytest

from eventstore import EventStore
from eventstore import headers as h
from eventstore.integrity import Keyring, Verdict, check_stored
from jetledger.card.v1 import card_pb2, card_pb2_grpc
from jetledger.notification.v1 import notification_pb2, notification_pb2_grpc
from jetledger.transaction.v1 import transaction_pb2 as tx
from jetledger.transaction.v1 import transaction_pb2_grpc
from services.dev import DevSystem, with_free_ports
from services.security.local import LOCAL_IDENTITIES, nats_client_options
from services.security.policy import RULES
from services.security.tls import grpc_channel_credentials
from services.settings import Settings
from tests.integration.security.test_grpc_access import request_for

pytestmark = pytest.mark.timeout(240)

PORT_OF = {
    "jetledger.card.v1.CardService": "card_port",
    "jetledger.transaction.v1.TransactionService": "transaction_port",
    "jetledger.ledger.v1.LedgerService": "ledger_port",
    "jetledger.notification.v1.NotificationService": "notification_port",
}


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevSystem]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("secure") / "data", security=True)
    with DevSystem(with_free_ports(settings), fresh=True) as running:
        yield running


def call(system: DevSystem, method: str, token: str | None) -> grpc.StatusCode:
    """Invoke ``method`` with a request naming card alice; the status it ends with."""
    service = method.strip("/").rsplit("/", 1)[0]
    target = f"127.0.0.1:{getattr(system.settings, PORT_OF[service])}"
    assert system.credentials is not None
    credentials = grpc_channel_credentials(system.credentials.ca, token)
    request, (output, streaming) = request_for(method)
    with grpc.secure_channel(target, credentials) as channel:
        serialize, parse = type(request).SerializeToString, output.FromString
        try:
            if streaming:
                stub = channel.unary_stream(
                    method, request_serializer=serialize, response_deserializer=parse
                )
                for _ in stub(request, timeout=3):
                    break
            else:
                channel.unary_unary(
                    method, request_serializer=serialize, response_deserializer=parse
                )(request, timeout=10)
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def wrong_identity(method: str) -> str:
    """A local identity that lacks a role ``method`` needs, else one scoped to another card."""
    rule = RULES[method]
    request, _ = request_for(method)
    needs = rule.needs(request) if rule.needs else (rule.roles,)
    for name, identity in LOCAL_IDENTITIES.items():
        if any(not identity.has_any(roles) for roles in needs):
            return name
    return "bob-app"  # may do what a card's own integration does, on card bob only


def test_every_rpc_refuses_anonymous_and_wrong_role_callers(system: DevSystem) -> None:
    assert system.credentials is not None
    methods = sorted(m for m in RULES if m.startswith("/jetledger."))
    assert len(methods) == 26
    for method in methods:
        assert call(system, method, None) == grpc.StatusCode.UNAUTHENTICATED, method
        assert call(system, method, "jlt_forged-token-0000000000000000000000000000") == (
            grpc.StatusCode.UNAUTHENTICATED
        ), method
        token = system.credentials.token(wrong_identity(method))
        assert call(system, method, token) == grpc.StatusCode.PERMISSION_DENIED, method


def test_the_right_roles_move_money_over_tls(system: DevSystem) -> None:
    assert system.credentials is not None
    creds = system.credentials
    target = f"127.0.0.1:{system.settings.card_port}"
    with grpc.secure_channel(
        target, grpc_channel_credentials(creds.ca, creds.token("card-admin"))
    ) as ch:
        card_pb2_grpc.CardServiceStub(ch).IssueCard(
            card_pb2.IssueCardRequest(
                command_id="issue-sec",
                card_id="sec",
                cardholder_name="Sec Urity",
                card_type=card_pb2.CARD_TYPE_DEBIT,
                currency="USD",
                last4="4242",
            ),
            timeout=10,
        )
    target = f"127.0.0.1:{system.settings.transaction_port}"
    with grpc.secure_channel(
        target, grpc_channel_credentials(creds.ca, creds.token("operator"))
    ) as ch:
        transactions = transaction_pb2_grpc.TransactionServiceStub(ch)
        funded = transactions.FundCard(
            tx.FundCardRequest(
                transaction_id="fund-sec",
                card_id="sec",
                amount=tx.Money(amount=500, currency="USD"),
            ),
            timeout=10,
        )
        assert funded.outcome.outcome == tx.OUTCOME_ACCEPTED
    # The intake verified the card through GetCard over TLS with its own token.
    with grpc.secure_channel(
        target, grpc_channel_credentials(creds.ca, creds.token("payments"))
    ) as ch:
        bought = transaction_pb2_grpc.TransactionServiceStub(ch).CreateTransaction(
            tx.CreateTransactionRequest(
                transaction_id="buy-sec",
                card_id="sec",
                merchant_id="shop",
                amount=tx.Money(amount=200, currency="USD"),
            ),
            timeout=10,
        )
        assert bought.outcome.outcome == tx.OUTCOME_ACCEPTED


async def test_a_forged_card_event_with_another_services_certificate_is_refused(
    system: DevSystem,
) -> None:
    assert system.credentials is not None
    subject = system.settings.streams.subjects.card("sec")
    stream = system.settings.stream
    for user in ("ledger", "notification", "reader", "admin"):
        errors: list[str] = []

        async def on_error(exc: Exception, seen: list[str] = errors) -> None:
            seen.append(str(exc))

        nc = await nats.connect(
            system.settings.nats_url,
            connect_timeout=5,
            allow_reconnect=False,
            error_cb=on_error,
            **nats_client_options(system.credentials, user),
        )
        try:
            js = nc.jetstream()
            before = (await js.stream_info(stream)).state.last_seq if user != "admin" else None
            with pytest.raises((TimeoutError, nats.errors.Error)):
                await js.publish(subject, b'{"amount": 100000000}', timeout=1.0)
            if before is not None:
                assert (await js.stream_info(stream)).state.last_seq == before
        finally:
            await nc.close()
        assert any("permissions violation" in e.lower() for e in errors), (user, errors)


def test_plaintext_and_anonymous_nats_are_refused(system: DevSystem) -> None:
    import asyncio

    async def plain() -> Any:
        return await nats.connect(
            system.settings.nats_url, connect_timeout=3, allow_reconnect=False
        )

    with pytest.raises((OSError, nats.errors.Error, TimeoutError)):
        asyncio.run(plain())


async def test_every_event_records_who_acted_under_a_mac_that_checks(system: DevSystem) -> None:
    assert system.credentials is not None
    creds = system.credentials
    card = f"who-{uuid.uuid4().hex[:8]}"
    target = f"127.0.0.1:{system.settings.card_port}"
    async with grpc.aio.secure_channel(
        target, grpc_channel_credentials(creds.ca, creds.token("card-admin"))
    ) as ch:
        await card_pb2_grpc.CardServiceStub(ch).IssueCard(
            card_pb2.IssueCardRequest(
                command_id=f"issue-{card}",
                card_id=card,
                cardholder_name="Who Acted",
                card_type=card_pb2.CARD_TYPE_DEBIT,
                currency="USD",
                last4="4242",
            ),
            timeout=10,
        )
    target = f"127.0.0.1:{system.settings.transaction_port}"
    async with grpc.aio.secure_channel(
        target, grpc_channel_credentials(creds.ca, creds.token("operator"))
    ) as ch:
        await transaction_pb2_grpc.TransactionServiceStub(ch).FundCard(
            tx.FundCardRequest(
                transaction_id=f"fund-{card}",
                card_id=card,
                amount=tx.Money(amount=5, currency="USD"),
            ),
            timeout=10,
        )
    keyring = Keyring.from_json(creds.event_keys.read_text())
    nc = await nats.connect(
        system.settings.nats_url,
        connect_timeout=5,
        allow_reconnect=False,
        **nats_client_options(creds, "reader"),
    )
    try:
        store = EventStore(nc, system.settings.streams)
        subjects = system.settings.streams.subjects
        events = (await store.load(subjects.card(card))).messages
    finally:
        await nc.close()
    assert [m.headers[h.ACTOR] for m in events] == ["card-admin", "operator"]
    assert all(check_stored(keyring, m) is Verdict.VALID for m in events)


def test_webhooks_and_card_ids_on_a_secure_system(system: DevSystem) -> None:
    """The issue's findings, on the real system: an operator-wide endpoint needs the operator, a
    card's integration cannot remove another card's endpoint, internal URLs are refused even to
    the operator, and an id shaped like a card number is refused."""
    assert system.credentials is not None
    creds = system.credentials
    target = f"127.0.0.1:{system.settings.notification_port}"

    def set_endpoint(token: str, card: str, url: str) -> grpc.RpcError | None:
        with grpc.secure_channel(target, grpc_channel_credentials(creds.ca, token)) as ch:
            try:
                notification_pb2_grpc.NotificationServiceStub(ch).SetWebhookEndpoint(
                    notification_pb2.SetWebhookEndpointRequest(
                        command_id=f"wh-{uuid.uuid4().hex[:8]}",
                        card_id=card,
                        endpoint_id="ops",
                        url=url,
                    ),
                    timeout=10,
                )
            except grpc.RpcError as exc:
                return exc
        return None

    public = "https://example.com/hook"
    refused = set_endpoint(creds.token("card-admin"), "", public)
    assert refused is not None and refused.code() == grpc.StatusCode.PERMISSION_DENIED
    for url, why in (
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("http://127.0.0.1:50054/hook", "internal address"),
    ):
        refused = set_endpoint(creds.token("operator"), "", url)
        assert refused is not None and refused.code() == grpc.StatusCode.INVALID_ARGUMENT, url
        assert why in (refused.details() or ""), refused.details()
    with grpc.secure_channel(
        target, grpc_channel_credentials(creds.ca, creds.token("bob-app"))
    ) as ch:
        with pytest.raises(grpc.RpcError) as other_card:
            notification_pb2_grpc.NotificationServiceStub(ch).RemoveWebhookEndpoint(
                notification_pb2.RemoveWebhookEndpointRequest(
                    command_id="rm-alice", card_id="alice", endpoint_id="e1"
                ),
                timeout=10,
            )
        assert other_card.value.code() == grpc.StatusCode.PERMISSION_DENIED
    card_target = f"127.0.0.1:{system.settings.card_port}"
    with grpc.secure_channel(
        card_target, grpc_channel_credentials(creds.ca, creds.token("card-admin"))
    ) as ch:
        with pytest.raises(grpc.RpcError) as pan:
            card_pb2_grpc.CardServiceStub(ch).IssueCard(
                card_pb2.IssueCardRequest(
                    command_id="issue-pan",
                    card_id="4111111111111111",
                    cardholder_name="Pan Shaped",
                    card_type=card_pb2.CARD_TYPE_DEBIT,
                    currency="USD",
                    last4="1111",
                ),
                timeout=10,
            )
        assert pan.value.code() == grpc.StatusCode.INVALID_ARGUMENT
