"""The token table: hashed at rest, re-read when it changes (no restart to add or revoke), and
the local system secure by default when it starts its own NATS."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.security.config import secure_locally
from services.security.identity import Identity, Role
from services.security.tokens import (
    TokenAuthenticator,
    bearer_of,
    entry_for,
    new_token,
    write_table,
)
from services.settings import Settings

ADA = Identity("ada", frozenset({Role.READER}))
BOB = Identity("bob", frozenset({Role.PAYMENTS}), card="bob")


def test_tokens_are_random_and_the_table_holds_only_hashes(tmp_path: Path) -> None:
    first, second = new_token(), new_token()
    assert first != second and len(first) > 40
    table = tmp_path / "t.json"
    write_table(table, [entry_for(first, ADA)])
    assert first not in table.read_text()
    assert TokenAuthenticator(table).authenticate(first) == ADA
    assert TokenAuthenticator(table).authenticate(second) is None
    assert TokenAuthenticator(table).authenticate(None) is None


def test_rows_added_and_removed_take_effect_without_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(TokenAuthenticator, "RECHECK_SECONDS", 0.0)
    table = tmp_path / "t.json"
    ada, bob = new_token(), new_token()
    write_table(table, [entry_for(ada, ADA)])
    authenticator = TokenAuthenticator(table)
    assert authenticator.authenticate(bob) is None
    write_table(table, [entry_for(bob, BOB)])
    os.utime(table, ns=(1, 1))  # a new mtime even within the clock's resolution
    assert authenticator.authenticate(bob) == BOB
    assert authenticator.authenticate(ada) is None  # revoked


def test_a_damaged_table_keeps_the_last_good_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(TokenAuthenticator, "RECHECK_SECONDS", 0.0)
    table = tmp_path / "t.json"
    ada = new_token()
    write_table(table, [entry_for(ada, ADA)])
    authenticator = TokenAuthenticator(table)
    table.write_text("{not json")
    assert authenticator.authenticate(ada) == ADA


def test_only_a_bearer_authorization_is_a_token() -> None:
    assert bearer_of((("authorization", "Bearer jlt_x"),)) == "jlt_x"
    assert bearer_of((("authorization", "bearer jlt_y"),)) == "jlt_y"
    assert bearer_of((("authorization", "Basic abc"),)) is None
    assert bearer_of((("x-token", "jlt_z"),)) is None
    assert bearer_of(None) is None


def test_a_local_system_is_secure_unless_told_or_on_external_nats() -> None:
    assert secure_locally(Settings(), environ={}).security
    assert not secure_locally(Settings(), environ={"JETLEDGER_SECURITY": "off"}).security
    assert not secure_locally(Settings(nats_url="nats://elsewhere:4222"), environ={}).security
