"""The security adapters every process builds from ``Settings``: server credentials and the access
interceptor, client channels, NATS connection options and the Postgres URL.

With ``JETLEDGER_SECURITY=off`` (debugging only) every function here returns the plaintext,
anonymous equivalent; with it on (the default), a missing file is a clear start-up error naming
the variable, never a silent fall-back to plaintext.
"""

from __future__ import annotations

import dataclasses
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import grpc

from contracts.errors import InvalidArgument
from eventstore.integrity import Keyring
from services.security.interceptor import AuthInterceptor
from services.security.natsauth import inbox_prefix
from services.security.tls import (
    grpc_channel_credentials,
    grpc_server_credentials,
    nats_tls_context,
)
from services.security.tokens import TokenAuthenticator, read_token
from services.security.webhookpolicy import WebhookUrlPolicy
from services.settings import ENV_PREFIX, Settings


def _file(settings: Settings, name: str) -> Path:
    value = str(getattr(settings, name))
    variable = ENV_PREFIX + name.upper()
    if not value:
        raise InvalidArgument(
            f"{variable} is required while security is on"
            f" (or set {ENV_PREFIX}SECURITY=off to debug without it)"
        )
    path = Path(value)
    if not path.is_file():
        raise InvalidArgument(f"{variable}: no such file {value}")
    return path


@dataclass(frozen=True, slots=True)
class ServerSecurity:
    """What a gRPC server needs: TLS credentials and the access interceptor."""

    credentials: grpc.ServerCredentials
    interceptors: tuple[grpc.aio.ServerInterceptor, ...]


def secure_locally(settings: Settings, environ: Mapping[str, str] | None = None) -> Settings:
    """``settings`` with security on, for ``jetledger dev`` and ``jetledger demo``, unless
    ``JETLEDGER_SECURITY`` says otherwise or NATS is external (its users are not ours to make).

    A local system makes every credential it needs itself, so it is secure by default.
    """
    env = os.environ if environ is None else environ
    said = env.get(ENV_PREFIX + "SECURITY")
    if said is not None:
        return dataclasses.replace(settings, security=said.lower() in {"1", "true", "yes", "on"})
    # An external NATS: its users are not ours to make, so the local system runs without.
    return dataclasses.replace(settings, security=not settings.nats_url)


def server_security(settings: Settings) -> ServerSecurity | None:
    """TLS + token authentication for a gRPC server, or ``None`` when security is off."""
    if not settings.security:
        return None
    credentials = grpc_server_credentials(
        _file(settings, "tls_cert_file"), _file(settings, "tls_key_file")
    )
    authenticator = TokenAuthenticator(_file(settings, "auth_tokens_file"))
    return ServerSecurity(credentials, (AuthInterceptor(authenticator),))


def caller_token(settings: Settings) -> str:
    """The bearer token this process calls with."""
    return read_token(_file(settings, "token_file"))


def channel(settings: Settings, target: str) -> grpc.Channel:
    """A blocking channel to ``target`` (the CLI): TLS + our token, or plaintext when off."""
    if not settings.security:
        return grpc.insecure_channel(target)
    credentials = grpc_channel_credentials(_file(settings, "tls_ca_file"), caller_token(settings))
    return grpc.secure_channel(target, credentials)


# Per-call balancing over every address the target resolves to: with a headless Service
# (``dns:///card-headless:50051``) that is every ready pod, not the one a connection landed on.
CHANNEL_OPTIONS: Final = (("grpc.lb_policy_name", "round_robin"),)


def aio_channel(settings: Settings, target: str) -> grpc.aio.Channel:
    """An asyncio channel to ``target`` (service to service): TLS + our token, or plaintext."""
    if not settings.security:
        return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
    credentials = grpc_channel_credentials(_file(settings, "tls_ca_file"), caller_token(settings))
    return grpc.aio.secure_channel(target, credentials, options=CHANNEL_OPTIONS)


def health_channel(settings: Settings, target: str) -> grpc.Channel:
    """A channel for health checks only: TLS without a token (health answers anyone)."""
    if not settings.security:
        return grpc.insecure_channel(target)
    return grpc.secure_channel(
        target, grpc_channel_credentials(_file(settings, "tls_ca_file"), None)
    )


def nats_options(settings: Settings) -> dict[str, Any]:
    """Extra ``nats.connect`` options: our client certificate and our inbox prefix."""
    if not settings.security:
        return {}
    if not settings.nats_user:
        raise InvalidArgument(f"{ENV_PREFIX}NATS_USER is required while security is on")
    context: ssl.SSLContext = nats_tls_context(
        _file(settings, "tls_ca_file"),
        _file(settings, "nats_cert_file"),
        _file(settings, "nats_key_file"),
    )
    return {"tls": context, "inbox_prefix": inbox_prefix(settings.nats_user)}


def event_keyring(settings: Settings) -> Keyring | None:
    """The MAC keyring of events: required while security is on, used whenever its file is set
    (tamper evidence does not depend on TLS), ``None`` when neither."""
    if not settings.security and not settings.event_keys_file:
        return None
    return _keyring(settings, "event_keys_file")


def secret_keyring(settings: Settings) -> Keyring | None:
    """The keyring that seals webhook secrets: required while security is on, used whenever its
    file is set, ``None`` when neither (secrets then stay in plain text: debugging only)."""
    if not settings.security and not settings.secret_keys_file:
        return None
    return _keyring(settings, "secret_keys_file")


def _keyring(settings: Settings, name: str) -> Keyring:
    path = _file(settings, name)
    try:
        return Keyring.from_json(path.read_text())
    except ValueError as exc:
        raise InvalidArgument(f"{ENV_PREFIX}{name.upper()}: {exc}") from None


def webhook_policy(settings: Settings) -> WebhookUrlPolicy:
    """Where webhooks may go (internal networks only when allow-listed)."""
    return WebhookUrlPolicy.from_setting(settings.webhook_allow_networks)
