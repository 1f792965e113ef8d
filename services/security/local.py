"""Every credential a local system needs, made once in its data directory (``DATA/security``).

``jetledger dev``, ``jetledger demo`` and the tests call ``ensure_local_credentials``: it creates
what is missing and keeps what exists, so URLs, tokens and keys stay the same across restarts:

- ``pki/``: the local CA; one server certificate (SAN ``localhost``, ``127.0.0.1``, ``::1``) for the
  gRPC servers, nats-server and Postgres; one NATS client certificate per NATS user;
- ``tokens.json``: the servers' table of hashed tokens; ``tokens/<name>.token``: the raw tokens,
  one per local identity (``operator`` holds every role; ``transaction`` is the intake's
  credential for ``GetCard``; ``card-admin``, ``payments`` and ``reader`` hold one role each, to
  try what a role may do; ``bob-app`` is scoped to card ``bob``);
- ``event-keys.json``: the MAC keyring of events; ``secret-keys.json``: the keyring that encrypts
  webhook secrets.

Every file is readable by its owner only. None of this is for production: see docs/security.md.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from contracts.subjects import StreamNames
from eventstore.integrity import KEY_BYTES, Keyring
from services.security import natsauth
from services.security.identity import ALL_ROLES, Identity, Role
from services.security.pki import LOCAL_NAMES, CertificateAuthority, KeyPair
from services.security.tls import nats_tls_context
from services.security.tokens import (
    TokenAuthenticator,
    entry_for,
    new_token,
    read_token,
    write_table,
    write_token,
)

# The local identities: token name -> identity.
LOCAL_IDENTITIES: Final = {
    "operator": Identity("operator", ALL_ROLES),
    "transaction": Identity("transaction-service", frozenset({Role.READER})),
    "card-admin": Identity("card-admin", frozenset({Role.CARD_ADMIN})),
    "payments": Identity("payments", frozenset({Role.PAYMENTS})),
    "reader": Identity("reader", frozenset({Role.READER})),
    # a card's own integration: everything a cardholder's app may do, on card bob only
    "bob-app": Identity(
        "bob-app", frozenset({Role.CARD_ADMIN, Role.PAYMENTS, Role.READER}), card="bob"
    ),
}
# Which NATS user each service process connects as.
SERVICE_NATS_USER: Final = {
    "card": "card",
    "transaction": "transaction",
    "ledger": "ledger",
    "notification": "notification",
}


@dataclass(frozen=True, slots=True)
class LocalCredentials:
    """Where the local credentials are."""

    root: Path
    ca: Path
    server: KeyPair
    nats: dict[str, KeyPair]
    token_table: Path
    tokens: dict[str, Path]
    event_keys: Path
    secret_keys: Path

    def token(self, name: str) -> str:
        """The raw token of a local identity."""
        return read_token(self.tokens[name])


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def _ensure_keyring(path: Path) -> None:
    if path.exists():
        Keyring.from_json(path.read_text())  # refuse to run on a damaged keyring
        return
    key = os.urandom(KEY_BYTES)
    key_id = "local-" + base64.b32encode(os.urandom(5)).decode().lower()
    _write_private(path, Keyring(key_id, {key_id: key}).to_json())


def _ensure_tokens(root: Path) -> tuple[Path, dict[str, Path]]:
    directory = root / "tokens"
    directory.mkdir(mode=0o700, exist_ok=True)
    files = {name: directory / f"{name}.token" for name in LOCAL_IDENTITIES}
    table = root / "tokens.json"
    if table.exists() and all(f.exists() for f in files.values()):
        authenticator = TokenAuthenticator(table)
        if all(
            authenticator.authenticate(read_token(files[name])) == ident
            for name, ident in LOCAL_IDENTITIES.items()
        ):
            return table, files
    entries = []
    for name, ident in LOCAL_IDENTITIES.items():
        token = new_token()
        write_token(files[name], token)
        entries.append(entry_for(token, ident))
    write_table(table, entries)
    return table, files


def ensure_local_credentials(root: Path) -> LocalCredentials:
    """Create the missing local credentials under ``root`` and return where they all are."""
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)
    ca = CertificateAuthority(root / "pki")
    # client too: nats-server dials its cluster routes with the same certificate
    server = ca.issue("server", "localhost", names=LOCAL_NAMES, server=True, client=True)
    nats = {
        user: ca.issue(f"nats-{user}", natsauth.common_name(user), client=True)
        for user in natsauth.ALL_USERS
    }
    table, tokens = _ensure_tokens(root)
    _ensure_keyring(root / "event-keys.json")
    _ensure_keyring(root / "secret-keys.json")
    return LocalCredentials(
        root=root,
        ca=ca.cert_file,
        server=server,
        nats=nats,
        token_table=table,
        tokens=tokens,
        event_keys=root / "event-keys.json",
        secret_keys=root / "secret-keys.json",
    )


def service_settings(creds: LocalCredentials, service: str) -> dict[str, str]:
    """The security settings (field -> value) of one service process."""
    user = SERVICE_NATS_USER[service]
    values = {
        "security": "true",
        "tls_ca_file": str(creds.ca),
        "tls_cert_file": str(creds.server.cert),
        "tls_key_file": str(creds.server.key),
        "auth_tokens_file": str(creds.token_table),
        "nats_user": user,
        "nats_cert_file": str(creds.nats[user].cert),
        "nats_key_file": str(creds.nats[user].key),
        "event_keys_file": str(creds.event_keys),
        "secret_keys_file": str(creds.secret_keys),
        "token_file": "",
    }
    if service == "transaction":
        values["token_file"] = str(creds.tokens["transaction"])
    return values


def client_settings(
    creds: LocalCredentials, identity: str = "operator", nats_user: str = natsauth.READER
) -> dict[str, str]:
    """The security settings of a client (the CLI, grpcurl): a token and a NATS user."""
    return {
        "security": "true",
        "tls_ca_file": str(creds.ca),
        "token_file": str(creds.tokens[identity]),
        "nats_user": nats_user,
        "nats_cert_file": str(creds.nats[nats_user].cert),
        "nats_key_file": str(creds.nats[nats_user].key),
        "event_keys_file": str(creds.event_keys),
    }


def nats_server_config(creds: LocalCredentials, streams: StreamNames) -> str:
    """The security part of the local nats-server's configuration (TLS, users, permissions)."""
    return natsauth.server_config(streams, creds.server.cert, creds.server.key, creds.ca)


def nats_client_options(creds: LocalCredentials, user: str) -> dict[str, Any]:
    """``nats.connect`` options that connect as one NATS user."""
    pair = creds.nats[user]
    return {
        "tls": nats_tls_context(creds.ca, pair.cert, pair.key),
        "inbox_prefix": natsauth.inbox_prefix(user),
    }
