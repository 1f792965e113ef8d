"""Least-privilege NATS: one user per service, mapped from its client certificate, and the
nats-server configuration blocks (TLS for clients and cluster routes, users, permissions).

Who may do what on the wire (``P`` = the subject prefix, ``SRC``/``DER`` = the stream names):

| user | publishes | reads |
|---|---|---|
| ``card``, ``transaction`` (the intake) | ``P card.>``, ``P command.>`` | ``SRC`` |
| ``ledger`` | ``P ledger.entry_created.>`` (the outbox relay) | ``SRC``, ``DER`` |
| ``notification`` | the three preference subjects, ``P command.>`` (their markers) | ``SRC``, ``DER`` |

The preference subjects are exactly ``P notify.card.*.<suffix>`` and ``P notify.default.<suffix>``
of the three preference events (preferences set, webhook endpoint set, removed): whoever appends
preference commands (``preference_writer``) gets those, nobody gets ``P notify.>``.
| ``reader`` (the CLI: tail, verify, replay) | nothing | ``SRC``, ``DER`` |
| ``admin`` (provisioning only) | the JetStream API (streams) | the JetStream API |

"Reads" is what a projection or a reader needs and nothing more: direct gets, stream info, its own
consumers (create, fetch, ack, delete — a consumer cannot write to a stream) and ``$JS.API.INFO``.
No service may create, update, purge or delete a stream: that is the admin's alone, used by
``jetledger dev`` and the provisioning job. Each user receives replies only on its own inbox prefix
(``_INBOX_<user>.>``), so no user can read another's replies.

A client certificate is the credential: nats-server verifies it against the CA and maps its
subject (``CN=jetledger-<user>,O=jetledger``) to the user (``verify_and_map``). No password exists.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from contracts.events import NotificationPreferencesSet, WebhookEndpointRemoved, WebhookEndpointSet
from contracts.subjects import StreamNames
from services.security.pki import ORGANIZATION

INTAKE: Final = ("card", "transaction")
PROJECTIONS: Final = ("ledger", "notification")
READER: Final = "reader"
ADMIN: Final = "admin"
ALL_USERS: Final = (*INTAKE, *PROJECTIONS, READER, ADMIN)


def common_name(user: str) -> str:
    """The certificate common name of a NATS user."""
    return f"jetledger-{user}"


def distinguished_name(user: str) -> str:
    """The RFC 2253 subject nats-server maps the certificate of ``user`` to."""
    return f"CN={common_name(user)},O={ORGANIZATION}"


def inbox_prefix(user: str) -> str:
    """The reply-subject prefix ``user`` must connect with (it may subscribe to nothing else)."""
    return f"_INBOX_{user}"


@dataclass(frozen=True, slots=True)
class NatsUser:
    """One NATS user and the subjects it may publish and subscribe to."""

    name: str
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


def _reads(stream: str) -> tuple[str, ...]:
    """The JetStream API subjects that read ``stream``: direct gets, info, own consumers, acks."""
    api = "$JS.API"
    return (
        f"{api}.DIRECT.GET.{stream}",
        f"{api}.DIRECT.GET.{stream}.>",
        f"{api}.STREAM.INFO.{stream}",
        f"{api}.STREAM.MSG.GET.{stream}",
        f"{api}.CONSUMER.CREATE.{stream}",
        f"{api}.CONSUMER.CREATE.{stream}.>",
        f"{api}.CONSUMER.DURABLE.CREATE.{stream}.>",
        f"{api}.CONSUMER.INFO.{stream}.>",
        f"{api}.CONSUMER.DELETE.{stream}.>",
        f"{api}.CONSUMER.MSG.NEXT.{stream}.>",
        f"$JS.ACK.{stream}.>",
        f"$JS.FC.{stream}.>",
    )


def preference_subjects(streams: StreamNames) -> tuple[str, ...]:
    """The exact subjects preference commands append to (every card's, and the default's)."""
    prefix = streams.subjects.prefix
    found: list[str] = []
    for event in (NotificationPreferencesSet, WebhookEndpointSet, WebhookEndpointRemoved):
        suffix = event.subject_suffix
        found += [f"{prefix}notify.card.*.{suffix}", f"{prefix}notify.default.{suffix}"]
    return tuple(found)


def users(streams: StreamNames, *, preference_writer: str = "notification") -> list[NatsUser]:
    """Every user of one deployment; ``preference_writer`` may append preference commands."""
    sub = streams.subjects
    prefix = sub.prefix
    source, derived = streams.source, streams.derived
    common = ("$JS.API.INFO",)
    preferences = (*preference_subjects(streams), sub.all_commands)
    found = []
    for name in INTAKE:
        # the intake also writes and reads its card snapshots (docs/intake.md, cold loads)
        intake: tuple[str, ...] = (
            f"{prefix}card.>",
            sub.all_commands,
            *sub.snapshot_stream_subjects(),
        )
        if name == preference_writer:
            intake += preference_subjects(streams)
        found.append(
            NatsUser(
                name,
                (*intake, *common, *_reads(source), *_reads(streams.snapshots)),
                (f"{inbox_prefix(name)}.>",),
            )
        )
    for name in PROJECTIONS:
        writes: tuple[str, ...] = (sub.all_entries,) if name == "ledger" else ()
        if name == preference_writer:
            writes += preferences
        found.append(
            NatsUser(
                name,
                (*writes, *common, *_reads(source), *_reads(derived)),
                (f"{inbox_prefix(name)}.>",),
            )
        )
    found.append(
        NatsUser(
            READER,
            (*common, *_reads(source), *_reads(derived)),
            (f"{inbox_prefix(READER)}.>",),
        )
    )
    # $JS.SNAPSHOT.>: the acks of a stream snapshot and the chunks of a restore (`jetledger
    # backup` / `restore`, eventstore/backup.py) go to the server there, not to the API
    found.append(NatsUser(ADMIN, ("$JS.API.>", "$JS.SNAPSHOT.>"), (f"{inbox_prefix(ADMIN)}.>",)))
    return found


def _quote(value: str | Path) -> str:
    return json.dumps(str(value))  # nats-server's config accepts JSON strings


def _list(values: Iterable[str]) -> str:
    return "[" + ", ".join(_quote(v) for v in values) + "]"


def authorization_block(found: list[NatsUser]) -> str:
    """The ``authorization { users = [...] }`` block: every user, its allow-lists, nothing else."""
    lines = ["authorization {", "  users = ["]
    for user in found:
        lines.append(
            f"    {{user: {_quote(distinguished_name(user.name))}, permissions: {{"
            f"publish: {{allow: {_list(user.publish)}}}, "
            f"subscribe: {{allow: {_list(user.subscribe)}}}}}}}"
        )
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


def client_tls_block(cert: Path, key: Path, ca: Path) -> str:
    """Client-port TLS: every client shows a certificate of our CA, which names its user."""
    return (
        "tls {\n"
        f"  cert_file: {_quote(cert)}\n"
        f"  key_file: {_quote(key)}\n"
        f"  ca_file: {_quote(ca)}\n"
        "  verify_and_map: true\n"
        "  timeout: 5\n"
        "}\n"
    )


def route_tls_block(cert: Path, key: Path, ca: Path) -> str:
    """Cluster-route TLS (inside ``cluster { }``): both ends verify each other's certificate."""
    return (
        "  tls {\n"
        f"    cert_file: {_quote(cert)}\n"
        f"    key_file: {_quote(key)}\n"
        f"    ca_file: {_quote(ca)}\n"
        "    verify: true\n"
        "    timeout: 5\n"
        "  }\n"
    )


def server_config(
    streams: StreamNames,
    cert: Path,
    key: Path,
    ca: Path,
    *,
    preference_writer: str = "notification",
) -> str:
    """The security part of a nats-server configuration (client TLS + users + permissions)."""
    return client_tls_block(cert, key, ca) + authorization_block(
        users(streams, preference_writer=preference_writer)
    )
