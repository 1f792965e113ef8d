"""The stream audit: every message the intake wrote must carry a MAC that checks.

``audit_stream`` reads the source stream in order (card events, preference events, outcome
markers: everything only the intake writes) and reports each message whose MAC is missing, made
with an unknown key, or does not match — the forgeries and alterations that permissions did not
stop. ``jetledger verify`` prints these findings; projections apply the same check to each event
before they apply it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable
from dataclasses import dataclass, field

from eventstore import EventStore, StoredMessage
from eventstore.integrity import Keyring, Verdict, check_stored


@dataclass(frozen=True, slots=True)
class Finding:
    """One message that does not check."""

    stream: str
    sequence: int
    subject: str
    verdict: Verdict

    def __str__(self) -> str:
        return f"{self.stream}:{self.sequence} {self.subject}: MAC {self.verdict.value}"


@dataclass(slots=True)
class AuditReport:
    """What an audit read and what did not check."""

    checked: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings


async def audit_messages(keyring: Keyring, messages: AsyncIterable[StoredMessage]) -> AuditReport:
    """Check the MAC of every message of ``messages``."""
    report = AuditReport()
    async for message in messages:
        report.checked += 1
        verdict = check_stored(keyring, message)
        if verdict is not Verdict.VALID:
            report.findings.append(
                Finding(message.stream, message.sequence, message.subject, verdict)
            )
    return report


async def audit_stream(
    store: EventStore, keyring: Keyring, up_to: int | None = None, *, derived: bool = False
) -> AuditReport:
    """Check every message of the source stream (up to ``up_to``, or its last sequence now), or
    of the derived stream (the ledger's relay seals its entries the same way)."""
    subjects = store.names.subjects
    if derived:
        stream = store.names.derived
        filters = subjects.derived_stream_subjects()
    else:
        stream = store.names.source
        filters = subjects.source_stream_subjects()

    async def messages() -> AsyncIterable[StoredMessage]:
        replay = store.replay(subject_filters=filters, stream=stream, server_filter=False)
        async with contextlib.aclosing(replay):  # stopping early closes its reader at once
            async for message in replay:
                if up_to is not None and message.sequence > up_to:
                    return
                yield message

    return await audit_messages(keyring, messages())


async def audit_all(store: EventStore, keyring: Keyring) -> AuditReport:
    """Check every message of the source and the derived stream, as they are now."""
    source = await audit_stream(store, keyring)
    derived = await audit_stream(store, keyring, derived=True)
    return AuditReport(source.checked + derived.checked, source.findings + derived.findings)
