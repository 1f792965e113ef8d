"""The pure rules of the event store: subject matching, ADR-50 batch checks, header building."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventstore import (
    Expectation,
    InvalidBatch,
    OutgoingMessage,
    Position,
    WrongLastSequence,
    check_batch,
    headers,
    subject_matches,
)
from eventstore.batching import BatchGuard, batch_positions, message_headers
from eventstore.errors import StoreError, from_api_error, parse_found

tokens = st.sampled_from(["card", "c1", "c2", "command", "x", "transaction", "created"])
subjects = st.lists(tokens, min_size=1, max_size=5).map(".".join)
filters = st.lists(st.one_of(tokens, st.just("*")), min_size=0, max_size=4).flatmap(
    lambda head: st.sampled_from([[*head, ">"], head] if head else [[">"]]).map(".".join)
)


def msg(
    subject: str, expect: Expectation | None = None, msg_id: str | None = None
) -> OutgoingMessage:
    return OutgoingMessage(subject, b"{}", expect=expect, msg_id=msg_id)


@pytest.mark.parametrize(
    ("subject_filter", "subject", "expected"),
    [
        ("card.c1.>", "card.c1.issued", True),
        ("card.c1.>", "card.c1.transaction.created", True),
        ("card.c1.>", "card.c1", False),
        ("card.c1.>", "card.c10.issued", False),
        ("card.*.transaction.>", "card.c1.transaction.created", True),
        ("card.*.transaction.>", "card.c1.frozen", False),
        ("card.*", "card.c1", True),
        ("card.*", "card.c1.x", False),
        (">", "a", True),
        ("command.x", "command.x", True),
        ("command.x", "command.xy", False),
    ],
)
def test_subject_matching_follows_nats_wildcards(
    subject_filter: str, subject: str, expected: bool
) -> None:
    assert subject_matches(subject_filter, subject) is expected


@given(written=st.lists(subjects, max_size=8), subject_filter=filters)
def test_guard_fast_paths_agree_with_plain_matching(
    written: list[str], subject_filter: str
) -> None:
    guard = BatchGuard()
    guard.add_all(msg(s) for s in written)
    assert guard.covers_written(subject_filter) == any(
        subject_matches(subject_filter, s) for s in written
    )


def test_a_marker_and_a_family_event_make_a_valid_batch() -> None:
    check_batch(
        [
            msg("card.c1.transaction.created", Expectation("card.c1.>", 7)),
            msg("card.c1.transaction.authorized"),
            msg("command.k1", Expectation("command.k1", 0)),
        ]
    )


@pytest.mark.parametrize(
    "batch",
    [
        # the second check would be evaluated against the stream before the first write
        [msg("card.c1.frozen"), msg("card.c1.transaction.created", Expectation("card.c1.>", 3))],
        # only the first message for a subject may carry a check (the server's 10164)
        [msg("command.k1"), msg("command.k1", Expectation("command.k1", 0))],
        [msg("a.b", msg_id="m1"), msg("a.c", msg_id="m1")],
        [],
        [msg("a.b")] * 1001,
    ],
)
def test_batches_the_server_would_misjudge_or_refuse_are_refused_up_front(
    batch: list[OutgoingMessage],
) -> None:
    with pytest.raises(InvalidBatch):
        check_batch(batch)


def test_the_writer_guard_also_refuses_a_second_check_on_the_same_filter() -> None:
    guard = BatchGuard()
    guard.add(msg("command.k1", Expectation("card.c1.>", 0)))
    assert guard.admits([msg("command.k2", Expectation("command.k2", 0))])
    assert not guard.admits([msg("command.k3", Expectation("card.c1.>", 0))])


def test_headers_name_the_filter_only_when_it_is_not_the_subject() -> None:
    family = message_headers(
        OutgoingMessage(
            "card.c1.frozen", b"", {"traceparent": "00-x"}, Expectation("card.c1.>", 4), "m-1"
        )
    )
    assert family == {
        headers.TRACEPARENT: "00-x",
        headers.MSG_ID: "m-1",
        headers.EXPECTED_LAST_SUBJECT_SEQUENCE: "4",
        headers.EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT: "card.c1.>",
    }
    marker = message_headers(msg("command.k1", Expectation("command.k1", 0)))
    assert marker == {headers.EXPECTED_LAST_SUBJECT_SEQUENCE: "0"}


@pytest.mark.parametrize(
    "bad",
    [
        lambda: OutgoingMessage("card.*.x", b""),
        lambda: OutgoingMessage("card..x", b""),
        lambda: OutgoingMessage("", b""),
        lambda: OutgoingMessage("a.b", b"", {headers.BATCH_ID: "x"}),
        lambda: Expectation("card.c1.>", -1),
        lambda: Expectation("", 0),
    ],
)
def test_malformed_messages_are_refused(bad: object) -> None:
    assert callable(bad)
    with pytest.raises(ValueError, match=r"."):
        bad()


def test_a_wrong_last_sequence_names_the_check_when_found_singles_it_out() -> None:
    marker, family = Expectation("command.k1", 0), Expectation("card.c1.>", 5)
    error = from_api_error(400, 10071, "wrong last sequence: 0", [marker, family])
    assert isinstance(error, WrongLastSequence)
    assert (error.found, error.expected, error.subject_filter) == (0, 5, "card.c1.>")
    ambiguous = from_api_error(400, 10071, "wrong last sequence: 9", [marker, family])
    assert isinstance(ambiguous, WrongLastSequence)
    assert ambiguous.expected is None
    assert ambiguous.candidates == (marker, family)


def test_other_server_errors_are_translated() -> None:
    assert parse_found("wrong last sequence: 42") == 42
    assert parse_found("wrong last sequence") is None
    assert isinstance(from_api_error(400, 10164, "wrong last sequence"), InvalidBatch)
    assert isinstance(from_api_error(500, 10057, "message delete not permitted"), StoreError)


def test_a_committed_batch_is_contiguous_up_to_the_acked_sequence() -> None:
    assert batch_positions("S", 12, 3, 3) == [
        Position("S", 10),
        Position("S", 11),
        Position("S", 12),
    ]
    with pytest.raises(StoreError):
        batch_positions("S", 12, 2, 3)
