"""``jetledger security``: tokens are shown once and kept hashed, rotation replaces a row,
keyrings rotate keeping old keys, and the NATS configuration it prints is one nats-server takes."""

from __future__ import annotations

import contextlib
import io
import subprocess
from pathlib import Path

from eventstore.integrity import Keyring
from services.cli.main import main
from services.localservers import nats_server_binary
from services.security.identity import Role
from services.security.local import ensure_local_credentials
from services.security.tokens import TokenAuthenticator


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(list(argv))
    return status, out.getvalue()


def test_a_token_is_printed_once_and_stored_hashed(tmp_path: Path) -> None:
    table = tmp_path / "tokens.json"
    status, out = run(
        "security",
        "token",
        "alice-app",
        "--role",
        "payments",
        "--card",
        "alice",
        "--table",
        str(table),
    )
    token = out.strip()
    assert status == 0 and token.startswith("jlt_")
    assert token not in table.read_text()
    assert (table.stat().st_mode & 0o777) == 0o600
    identity = TokenAuthenticator(table).authenticate(token)
    assert identity is not None and identity.roles == {Role.PAYMENTS} and identity.card == "alice"
    _, again = run("security", "token", "alice-app", "--role", "reader", "--table", str(table))
    fresh = TokenAuthenticator(table)
    assert fresh.authenticate(token) is None  # rotated: the old token is gone
    assert fresh.authenticate(again.strip()) is not None


def test_an_unknown_role_is_a_clear_error(tmp_path: Path) -> None:
    status, _ = run("security", "token", "x", "--role", "god", "--table", str(tmp_path / "t.json"))
    assert status == 2


def test_keyrings_rotate_keeping_old_keys(tmp_path: Path) -> None:
    path = tmp_path / "event-keys.json"
    assert run("security", "keyring", "new", str(path))[0] == 0
    first = Keyring.from_json(path.read_text())
    assert run("security", "keyring", "new", str(path))[0] == 2  # never overwritten
    assert run("security", "keyring", "rotate", str(path))[0] == 0
    second = Keyring.from_json(path.read_text())
    assert second.signing_id != first.signing_id
    assert first.keys.items() <= second.keys.items()


def test_the_printed_nats_configuration_is_valid(tmp_path: Path) -> None:
    creds = ensure_local_credentials(tmp_path / "security")
    status, block = run(
        "security",
        "nats-config",
        "--cert",
        str(creds.server.cert),
        "--key",
        str(creds.server.key),
        "--ca",
        str(creds.ca),
    )
    assert (
        status == 0 and "verify_and_map: true" in block and "CN=jetledger-card,O=jetledger" in block
    )
    conf = tmp_path / "nats.conf"
    conf.write_text(f'listen: 127.0.0.1:4222\njetstream {{ store_dir: "{tmp_path}/js" }}\n{block}')
    checked = subprocess.run(
        [str(nats_server_binary()), "-t", "-c", str(conf)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
