"""The access interceptor on a real TLS gRPC server: every RPC of the four services refuses
anonymous callers (UNAUTHENTICATED) and callers without the role (PERMISSION_DENIED), lets the
right role through, binds the caller's identity for the handler, and leaves health open.

The servicers are stand-ins that answer every method with an empty response and record who
called, so the table and the interceptor are tested for all 26 methods at once; the real services
run behind the same interceptor in the end-to-end tests.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import symbol_database
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from jetledger.card.v1 import card_pb2, card_pb2_grpc
from jetledger.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from jetledger.notification.v1 import notification_pb2, notification_pb2_grpc
from jetledger.transaction.v1 import transaction_pb2, transaction_pb2_grpc
from services.localservers import free_port
from services.runtime import GrpcService, Runtime, start_grpc
from services.security.config import ServerSecurity
from services.security.identity import ALL_ROLES, Identity, Role, acting_name
from services.security.interceptor import AuthInterceptor
from services.security.pki import LOCAL_NAMES, CertificateAuthority
from services.security.policy import RULES
from services.security.tls import grpc_channel_credentials, grpc_server_credentials
from services.security.tokens import TokenAuthenticator, entry_for, new_token, write_table

SERVICES = (
    (card_pb2, "CardService", card_pb2_grpc.add_CardServiceServicer_to_server),
    (
        transaction_pb2,
        "TransactionService",
        transaction_pb2_grpc.add_TransactionServiceServicer_to_server,
    ),
    (ledger_pb2, "LedgerService", ledger_pb2_grpc.add_LedgerServiceServicer_to_server),
    (
        notification_pb2,
        "NotificationService",
        notification_pb2_grpc.add_NotificationServiceServicer_to_server,
    ),
)


def stand_in(service: Any, calls: list[tuple[str, str]]) -> Any:
    """A servicer answering every method of ``service`` with an empty response."""
    methods: dict[str, Any] = {}
    for method in service.methods:
        output = symbol_database.Default().GetSymbol(method.output_type.full_name)

        def make(name: str, reply: Any, streaming: bool) -> Any:
            if streaming:

                async def stream(self: Any, request: Any, context: Any) -> AsyncIterator[Any]:
                    calls.append((name, acting_name()))
                    yield reply()

                return stream

            async def unary(self: Any, request: Any, context: Any) -> Any:
                calls.append((name, acting_name()))
                return reply()

            return unary

        methods[method.name] = make(method.name, output, method.server_streaming)
    return type(f"StandIn{service.name}", (), methods)()


@dataclass
class Server:
    runtime: Runtime
    target: str
    ca: Path
    tokens: dict[str, str]
    calls: list[tuple[str, str]]


IDENTITIES = {
    "anyone-with-all-roles": Identity("root", ALL_ROLES),
    **{
        role.value: Identity(f"only-{role.value.replace('_', '-')}", frozenset({role}))
        for role in Role
    },
    "alice-app": Identity("alice-app", frozenset(ALL_ROLES), card="alice"),
}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def server(pki: CertificateAuthority, tmp_path: Path) -> AsyncIterator[Server]:
    cert = pki.issue("grpc", "localhost", names=LOCAL_NAMES, server=True)
    tokens = {key: new_token() for key in IDENTITIES}
    table = tmp_path / "tokens.json"
    write_table(table, [entry_for(tokens[key], ident) for key, ident in IDENTITIES.items()])
    security = ServerSecurity(
        grpc_server_credentials(cert.cert, cert.key),
        (AuthInterceptor(TokenAuthenticator(table)),),
    )
    calls: list[tuple[str, str]] = []
    hosted = []
    for module, name, add in SERVICES:
        service = module.DESCRIPTOR.services_by_name[name]
        hosted.append(GrpcService(service.full_name, add, stand_in(service, calls)))
    port = free_port()
    runtime = await start_grpc(hosted, "127.0.0.1", port, security=security)
    try:
        yield Server(runtime, f"127.0.0.1:{port}", pki.cert_file, tokens, calls)
    finally:
        await runtime.stop(0)


def request_for(method: str) -> tuple[Any, Any]:
    """An (input type, request naming card alice) for a full method path."""
    service_name, name = method.strip("/").rsplit("/", 1)
    for module, _, _ in SERVICES:
        for service in module.DESCRIPTOR.services_by_name.values():
            if service.full_name == service_name:
                descriptor = service.methods_by_name[name]
                kind = symbol_database.Default().GetSymbol(descriptor.input_type.full_name)
                request: Any = kind()
                fields = kind.DESCRIPTOR.fields_by_name
                if "card_id" in fields:
                    request.card_id = "alice"
                if "account_id" in fields:
                    request.account_id = "card-alice"
                if "commands" in fields:
                    request.commands.add().create.card_id = "alice"
                output = symbol_database.Default().GetSymbol(descriptor.output_type.full_name)
                return request, (output, descriptor.server_streaming)
    raise AssertionError(method)


def invoke(channel: grpc.aio.Channel, method: str) -> Any:
    request, (output, streaming) = request_for(method)
    call: Any
    if streaming:
        call = channel.unary_stream(
            method,
            request_serializer=type(request).SerializeToString,
            response_deserializer=output.FromString,
        )
    else:
        call = channel.unary_unary(
            method,
            request_serializer=type(request).SerializeToString,
            response_deserializer=output.FromString,
        )
    return call(request, timeout=5)


async def status_of(server: Server, method: str, token: str | None) -> grpc.StatusCode:
    credentials = grpc_channel_credentials(server.ca, token)
    async with grpc.aio.secure_channel(server.target, credentials) as channel:
        call = invoke(channel, method)
        try:
            if inspect.isasyncgen(call) or hasattr(call, "__aiter__"):
                async for _ in call:
                    pass
            else:
                await call
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def business_methods() -> Iterator[str]:
    return iter(sorted(m for m in RULES if m.startswith("/jetledger.")))


async def test_every_rpc_refuses_anonymous_and_unknown_callers(server: Server) -> None:
    for method in business_methods():
        assert await status_of(server, method, None) == grpc.StatusCode.UNAUTHENTICATED, method
        forged = "jlt_" + "A" * 43
        assert await status_of(server, method, forged) == grpc.StatusCode.UNAUTHENTICATED, method
    assert server.calls == []


async def test_every_rpc_refuses_wrong_roles_and_admits_the_right_ones(server: Server) -> None:
    for method in business_methods():
        rule = RULES[method]
        request, _ = request_for(method)
        needed = rule.needs(request) if rule.needs else (rule.roles,)
        for role in Role:
            expected = (
                grpc.StatusCode.OK
                if all(role in roles for roles in needed)
                else grpc.StatusCode.PERMISSION_DENIED
            )
            got = await status_of(server, method, server.tokens[role.value])
            assert got == expected, (method, role, got)
        assert (
            await status_of(server, method, server.tokens["anyone-with-all-roles"])
            == grpc.StatusCode.OK
        )


async def test_the_handler_sees_the_acting_identity(server: Server) -> None:
    assert (
        await status_of(server, "/jetledger.card.v1.CardService/GetCard", server.tokens["reader"])
        == grpc.StatusCode.OK
    )
    assert server.calls[-1] == ("GetCard", "only-reader")


async def test_a_card_scoped_caller_cannot_reach_another_card(server: Server) -> None:
    token = server.tokens["alice-app"]
    credentials = grpc_channel_credentials(server.ca, token)
    async with grpc.aio.secure_channel(server.target, credentials) as channel:
        stub = transaction_pb2_grpc.TransactionServiceStub(channel)
        await stub.CreateTransaction(transaction_pb2.CreateTransactionRequest(card_id="alice"))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.CreateTransaction(transaction_pb2.CreateTransactionRequest(card_id="bob"))
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "scoped to card alice" in (refused.value.details() or "")


async def test_health_is_open_and_reflection_needs_a_credential(server: Server) -> None:
    async with grpc.aio.secure_channel(
        server.target, grpc_channel_credentials(server.ca, None)
    ) as channel:
        health: Any = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        anonymous: Any = reflection_pb2_grpc.ServerReflectionStub(channel)  # type: ignore[arg-type]
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async for _ in anonymous.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            ):
                pass
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    reader = grpc_channel_credentials(server.ca, server.tokens["reader"])
    async with grpc.aio.secure_channel(server.target, reader) as channel:
        stub: Any = reflection_pb2_grpc.ServerReflectionStub(channel)  # type: ignore[arg-type]
        names = []
        async for reply in stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        ):
            names = [s.name for s in reply.list_services_response.service]
        assert "jetledger.card.v1.CardService" in names


async def test_plaintext_callers_cannot_connect(server: Server) -> None:
    async with grpc.aio.insecure_channel(server.target) as channel:
        health: Any = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await health.Check(health_pb2.HealthCheckRequest(), timeout=3)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_the_probe_port_serves_plaintext_health_alone(
    pki: CertificateAuthority, tmp_path: Path
) -> None:
    cert = pki.issue("grpc", "localhost", names=LOCAL_NAMES, server=True)
    table = tmp_path / "tokens.json"
    write_table(table, [])
    probe_port = free_port()
    security = ServerSecurity(
        grpc_server_credentials(cert.cert, cert.key),
        (AuthInterceptor(TokenAuthenticator(table)),),
    )
    service = card_pb2.DESCRIPTOR.services_by_name["CardService"]
    add = card_pb2_grpc.add_CardServiceServicer_to_server
    hosted = [GrpcService(service.full_name, add, stand_in(service, []))]
    runtime = await start_grpc(
        hosted, "127.0.0.1", free_port(), security=security, health_port=probe_port
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{probe_port}") as channel:
            health: Any = health_pb2_grpc.HealthStub(channel)
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            cards: Any = card_pb2_grpc.CardServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as absent:
                await cards.IssueCard(card_pb2.IssueCardRequest(card_id="alice"), timeout=5)
            assert absent.value.code() == grpc.StatusCode.UNIMPLEMENTED  # health alone
            await runtime.set_serving(False)
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        await runtime.stop(0)
