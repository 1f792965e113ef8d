"""Bearer tokens: made once, shown once, kept only as SHA-256 hashes by the servers.

A token is ``jlt_`` + 32 random bytes (URL-safe base64). The servers hold a token table (a JSON
file, in Kubernetes a mounted Secret) of ``{name, roles, card, sha256}`` rows: the hash of each
token, never the token. A stolen table therefore lets nobody call in. Tokens carry 256 bits of
entropy, so a plain SHA-256 (no salt, no stretching) is enough: there is nothing to guess.

Rotation: add a row for the new token, hand it out, remove the old row; both work in between.
Servers re-read the table when the file changes, so neither step needs a restart.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Final

import msgspec

from services.security.identity import Identity, parse_roles

TOKEN_PREFIX: Final = "jlt_"  # noqa: S105 - a prefix, not a secret
AUTHORIZATION: Final = "authorization"  # gRPC metadata keys are lower case
BEARER: Final = "bearer "

log = logging.getLogger("jetledger.security")


class TokenEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One row of the token table: who a token stands for, and the token's SHA-256."""

    name: str
    roles: list[str]
    sha256: str
    card: str = ""


class TokenTable(msgspec.Struct, forbid_unknown_fields=True):
    """The contents of the token table file."""

    tokens: list[TokenEntry] = msgspec.field(default_factory=list)


def new_token() -> str:
    """A fresh random bearer token."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """The hex SHA-256 the table stores for ``token``."""
    return hashlib.sha256(token.encode()).hexdigest()


def entry_for(token: str, identity: Identity) -> TokenEntry:
    """The table row of ``token``, standing for ``identity``."""
    return TokenEntry(
        name=identity.name,
        roles=sorted(identity.roles),
        sha256=token_hash(token),
        card=identity.card,
    )


def write_table(path: Path, entries: list[TokenEntry]) -> None:
    """Write a token table (readable by its owner only; written aside, then renamed)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(msgspec.json.format(msgspec.json.encode(TokenTable(entries))))
    tmp.chmod(0o600)
    tmp.replace(path)


def write_token(path: Path, token: str) -> None:
    """Write one raw token to a file only its owner can read (what a client is given)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")


def read_token(path: str | Path) -> str:
    """Read a raw token from a file (surrounding whitespace ignored)."""
    token = Path(path).read_text().strip()
    if not token.startswith(TOKEN_PREFIX):
        raise ValueError(f"{path} does not hold a jetledger token")
    return token


def bearer_of(metadata: object) -> str | None:
    """The token of an ``authorization: Bearer <token>`` metadata entry, if there is one."""
    for key, value in metadata or ():  # type: ignore[attr-defined]
        if key == AUTHORIZATION and isinstance(value, str) and value[:7].lower() == BEARER:
            return value[7:].strip()
    return None


class TokenAuthenticator:
    """Maps a presented token to its identity through the hashed table (re-read when it changes)."""

    RECHECK_SECONDS: Final = 1.0  # how often the table file's size and mtime are looked at

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._by_hash: dict[str, Identity] = {}
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self._load()  # a missing or malformed table fails the start-up, loudly

    def _load(self) -> None:
        stat = self.path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return
        table = msgspec.json.decode(self.path.read_bytes(), type=TokenTable)
        self._by_hash = {
            row.sha256: Identity(row.name, parse_roles(row.roles), row.card) for row in table.tokens
        }
        self._stamp = stamp

    def authenticate(self, token: str | None) -> Identity | None:
        """The identity ``token`` stands for, or ``None`` (no token, or not in the table)."""
        if not token:
            return None
        with self._lock:
            now = time.monotonic()
            if now - self._checked >= self.RECHECK_SECONDS:
                self._checked = now
                try:
                    self._load()
                except (OSError, ValueError) as exc:  # a table being replaced: keep the last one
                    log.warning("token table not reloaded", extra={"error": str(exc)})
            return self._by_hash.get(token_hash(token))
