"""``jetledger security``: make the credentials of a deployment, and audit the stream.

- ``token NAME --role R… [--card C] --table FILE`` prints a new bearer token once and records
  only its hash in the token table (a row of the same name is replaced: that is rotation);
- ``keyring new|rotate FILE`` makes a keyring (event MACs, webhook secrets) or adds a new signing
  key to one, keeping the old keys for what they signed;
- ``nats-config --cert --key --ca`` prints the nats-server TLS, users and permissions of this
  deployment's streams and subject prefix (for the NATS ConfigMap);
- ``audit`` checks the MAC of every message of the source stream (``JETLEDGER_EVENT_KEYS_FILE``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from contracts.errors import InvalidArgument
from eventstore import EventStore
from eventstore.integrity import KEY_BYTES, Keyring
from services.cli.output import console
from services.security.audit import audit_stream
from services.security.config import event_keyring
from services.security.identity import Identity, parse_roles
from services.security.natsauth import server_config
from services.security.tokens import TokenTable, entry_for, new_token, write_table
from services.settings import Settings
from services.wiring import connect_nats

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def register(subparsers: Subparsers) -> None:
    """Add ``jetledger security …``."""
    area = subparsers.add_parser("security", help="tokens, keyrings, NATS users; audit the stream")
    actions = area.add_subparsers(dest="action", metavar="ACTION", required=True)
    token = actions.add_parser("token", help="make a bearer token (printed once; hash recorded)")
    token.add_argument("name", help="the identity's name (recorded as who acted)")
    token.add_argument("--role", action="append", required=True, help="card_admin, payments, …")
    token.add_argument("--card", default="", help="scope the identity to this one card")
    token.add_argument("--table", type=Path, required=True, help="the token table file")
    token.set_defaults(handler=make_token)
    keyring = actions.add_parser("keyring", help="make a keyring, or add a new signing key")
    keyring.add_argument("step", choices=("new", "rotate"))
    keyring.add_argument("file", type=Path)
    keyring.set_defaults(handler=make_keyring)
    nats_config = actions.add_parser("nats-config", help="nats-server TLS, users, permissions")
    for name in ("cert", "key", "ca"):
        nats_config.add_argument(f"--{name}", type=Path, required=True)
    nats_config.set_defaults(handler=print_nats_config)
    audit = actions.add_parser("audit", help="check every source-stream event's MAC")
    audit.set_defaults(handler=run_audit)


def make_token(args: argparse.Namespace, settings: Settings) -> int:
    """Add (or replace) a token-table row and print its token, once."""
    try:
        identity = Identity(args.name, parse_roles(args.role), args.card)
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None
    table = TokenTable()
    if args.table.exists():
        table = msgspec.json.decode(args.table.read_bytes(), type=TokenTable)
    token = new_token()
    rows = [row for row in table.tokens if row.name != identity.name]
    write_table(args.table, [*rows, entry_for(token, identity)])
    print(token)
    return 0


def _new_key_id() -> str:
    return "k" + base64.b32encode(os.urandom(5)).decode().lower()


def make_keyring(args: argparse.Namespace, settings: Settings) -> int:
    """Write a new keyring, or add a fresh signing key to an existing one."""
    path: Path = args.file
    keys: dict[str, bytes] = {}
    if args.step == "rotate":
        keys = dict(Keyring.from_json(path.read_text()).keys)
    elif path.exists():
        raise InvalidArgument(f"{path} exists: use `keyring rotate` to add a key to it")
    key_id = _new_key_id()
    keys[key_id] = os.urandom(KEY_BYTES)
    text = Keyring(key_id, keys).to_json()
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    tmp.replace(path)
    console().print(f"{path}: signing key {key_id} ({len(keys)} key(s) in the keyring)")
    return 0


def print_nats_config(args: argparse.Namespace, settings: Settings) -> int:
    """Print the security blocks of the nats-server configuration."""
    print(server_config(settings.streams, args.cert, args.key, args.ca), end="")
    return 0


def run_audit(args: argparse.Namespace, settings: Settings) -> int:
    """Exit 1 when any message of the source stream does not check."""
    keyring = event_keyring(settings)
    if keyring is None:
        raise InvalidArgument("the audit checks MACs: it needs JETLEDGER_SECURITY on")
    return asyncio.run(_audit(settings, keyring))


async def _audit(settings: Settings, keyring: Keyring) -> int:
    nc = await connect_nats(settings, "cli", connect_timeout=5, allow_reconnect=False)
    try:
        report = await audit_stream(EventStore(nc, settings.streams), keyring)
    finally:
        await nc.close()
    out = console()
    for finding in report.findings:
        out.print(f"[red]FAIL[/] {finding}")
    if report.ok:
        out.print(f"[green]OK[/] {report.checked} messages, every MAC checks")
        return 0
    out.print(f"[red]{len(report.findings)} of {report.checked} messages do not check[/]")
    return 1
