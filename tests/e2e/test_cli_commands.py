"""Every ``jetledger`` subcommand through its real entry point, ``main(argv)``, against a real
system: NATS, Postgres and the four services as child processes (one system for the module).

Bad input must give one clear line on stderr and the exit status of its gRPC status.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from contracts.accounts import ADJUSTMENTS, FUNDING
from services.cli.main import main
from services.dev import DevSystem, with_free_ports
from services.dev.system import child_env
from services.localservers import Servers, free_port
from services.settings import ENV_PREFIX, Settings
from tests.e2e.support import new_id


@contextlib.contextmanager
def isolated_system(servers: Servers, data_dir: Path, **overrides: Any) -> Iterator[DevSystem]:
    """A secure dev system of its own: its own NATS (TLS, a user per service, the admin
    provisions), a fresh database on the session's Postgres, free ports; the CLI calls it over TLS
    with the operator's token, as a user of `jetledger dev` does."""
    token = uuid.uuid4().hex[:8]
    database = f"jl_{token}"
    with psycopg.connect(servers.database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    settings = Settings(
        security=True,
        database_url=make_conninfo(servers.database_url, dbname=database),
        data_dir=data_dir,
        **overrides,
    )
    try:
        with DevSystem(with_free_ports(settings)) as system:
            yield system
    finally:
        with psycopg.connect(servers.database_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
            )


def client_env(settings: Settings) -> dict[str, str]:
    """The ``JETLEDGER_*`` variables that point a CLI at ``settings``' system."""
    return {k: v for k, v in child_env(settings).items() if k.startswith(ENV_PREFIX)}


@pytest.fixture(scope="module")
def system(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevSystem]:
    with isolated_system(servers, tmp_path_factory.mktemp("cli")) as running:
        yield running


@pytest.fixture(autouse=True)
def _env(system: DevSystem, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in client_env(system.settings).items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Any:
    """Run ``jetledger ARGV…``; return (exit status, stdout, stderr)."""

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def ok_json(cli: Any, *argv: str) -> Any:
    code, out, err = cli(*argv, "--json")
    assert code == 0, err
    return json.loads(out)


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("jetledger: error: ")
    return lines[0]


@pytest.fixture
def card(cli: Any) -> str:
    """A fresh debit card with 100.00 USD on it."""
    card_id = new_id("ada")  # not "card-…": a bare id starting with an account kind is an account
    ok_json(cli, "card", "issue", card_id, "--name", "Ada Lovelace", "--last4", "4242")
    ok_json(cli, "tx", "fund", card_id, "100.00")
    return card_id


def test_card_issue_get_list_freeze_unfreeze_limit_close(cli: Any) -> None:
    debit, credit = new_id("d"), new_id("c")
    issued = ok_json(cli, "card", "issue", debit, "--name", "Ada", "--last4", "4242")
    assert issued["card"]["card_id"] == debit and issued["card"]["last4"] == "4242"
    code, out, _ = cli("card", "issue", credit, "--name", "Bob", "--type", "credit",
                       "--limit", "500.00", "--last4", "1881")  # fmt: skip
    assert code == 0 and "issued card" in out and "••1881" in out
    got = ok_json(cli, "card", "get", credit)
    assert got["credit_limit"] == "50000" and got["available"] == "50000"
    assert "CVV" not in json.dumps(got).upper() and "pan" not in got
    code, out, _ = cli("card", "get", credit)
    assert code == 0 and "500.00 USD" in out
    listed = {c["card_id"] for c in ok_json(cli, "card", "list")}
    assert {debit, credit} <= listed
    assert ok_json(cli, "card", "freeze", credit, "--reason", "lost")["card"]["status"] == (
        "CARD_STATUS_FROZEN"
    )
    assert ok_json(cli, "card", "unfreeze", credit)["card"]["status"] == "CARD_STATUS_ACTIVE"
    assert ok_json(cli, "card", "limit", credit, "750.00")["card"]["credit_limit"] == "75000"
    assert ok_json(cli, "card", "close", debit)["card"]["status"] == "CARD_STATUS_CLOSED"


def test_money_commands_and_their_outcomes(cli: Any, card: str) -> None:
    bought = ok_json(cli, "tx", "create", card, "12.50", "--merchant", "coffee")
    assert bought["outcome"] == "OUTCOME_ACCEPTED" and bought["command_type"] == "purchase"
    hold = ok_json(
        cli, "tx", "authorize", card, "40.00", "--merchant", "hotel", "--id", new_id("h")
    )
    auth_id = hold["transaction_id"]
    assert ok_json(cli, "tx", "capture", card, auth_id, "30.00")["outcome"] == "OUTCOME_ACCEPTED"
    assert ok_json(cli, "tx", "void", card, auth_id)["outcome"] == "OUTCOME_ACCEPTED"
    refund = ok_json(cli, "tx", "refund", card, bought["transaction_id"], "2.50")
    assert refund["command_type"] == "refund"
    adjust = ok_json(cli, "tx", "adjust", card, "-1.00", "--reason", "fee", "--actor", "ops")
    assert adjust["outcome"] == "OUTCOME_ACCEPTED"
    code, out, _ = cli("tx", "outcome", bought["transaction_id"])
    assert code == 0 and "accepted" in out and "purchase" in out
    outcome = ok_json(cli, "tx", "outcome", bought["transaction_id"])
    assert outcome["stream_sequence"] == bought["stream_sequence"]
    assert not outcome.get("replayed", False)  # a plain read is not a replay (issue 15)
    assert "replayed" not in out
    # 100.00 - 12.50 - 30.00 + 2.50 - 1.00
    balance = ok_json(cli, "balance", card, "--at-least-seq", adjust["stream_sequence"])
    assert balance["balances"][0]["posted"] == "5900"


def test_a_retry_returns_the_original_outcome_and_a_changed_payload_is_refused(
    cli: Any, card: str
) -> None:
    tx_id = new_id("t")
    first = ok_json(cli, "tx", "create", card, "5.00", "--merchant", "m", "--id", tx_id)
    again = ok_json(cli, "tx", "create", card, "5.00", "--merchant", "m", "--id", tx_id)
    assert again["replayed"] is True and again["stream_sequence"] == first["stream_sequence"]
    code, _, err = cli("tx", "create", card, "6.00", "--merchant", "m", "--id", tx_id)
    assert code == 4 and tx_id in one_line_error(err)


def test_a_decline_is_one_line_and_exit_status_5(cli: Any, card: str) -> None:
    code, out, err = cli("tx", "create", card, "1000.00", "--merchant", "tv-shop")
    assert code == 5 and out == ""
    assert "insufficient_funds" in one_line_error(err)
    ok_json(cli, "card", "freeze", card)
    code, _, err = cli("tx", "authorize", card, "1.00", "--merchant", "m")
    assert code == 5 and "card_frozen" in one_line_error(err)


def test_a_decline_says_its_reason_once(cli: Any, card: str) -> None:
    tx_id = new_id("big")
    code, _, err = cli("tx", "create", card, "1000.00", "--merchant", "tv-shop", "--id", tx_id)
    line = one_line_error(err)
    assert code == 5 and line.count("insufficient_funds") == 1, line
    assert line.startswith("jetledger: error: insufficient_funds: ") and "1000.00" in line, line
    code, out, err = cli("tx", "outcome", tx_id)  # the recorded decline, read back
    assert code == 0 and out.count("insufficient_funds") == 1, out + err
    recorded = ok_json(cli, "tx", "outcome", tx_id)
    assert recorded["reason"] == "insufficient_funds"
    assert "insufficient_funds" not in recorded.get("detail", "")


def test_a_decline_hands_over_its_recorded_outcome_and_a_retry_says_it_replays(
    cli: Any, card: str
) -> None:
    tx_id = new_id("big")
    argv = ("tx", "authorize", card, "1000.00", "--merchant", "tv-shop", "--id", tx_id, "--json")
    code, out, err = cli(*argv)
    first = json.loads(out)  # the typed detail of the decline, for scripts
    assert code == 5 and first["outcome"] == "OUTCOME_DECLINED", out + err
    assert first["reason"] == "insufficient_funds" and first["transaction_id"] == tx_id
    assert int(first["stream_sequence"]) > 0 and not first.get("replayed", False)
    line = one_line_error(err)
    assert line.count("insufficient_funds") == 1 and "a retry" not in line, line
    assert f"recorded at {first['stream']}:{first['stream_sequence']}" in line, line

    code, out, err = cli(*argv)
    again = json.loads(out)
    assert code == 5 and again["replayed"] is True, out + err
    assert again["stream_sequence"] == first["stream_sequence"]
    line = one_line_error(err)
    assert line.count("insufficient_funds") == 1 and "a retry" in line, line


@pytest.mark.parametrize(
    ("argv", "status", "words"),
    [
        (["card", "get", "no such card"], 2, "card_id must match"),
        (["card", "get", "nobody"], 3, "nobody"),
        (["tx", "fund", "nobody", "12.345"], 2, "more decimals than USD"),
        (["tx", "fund", "nobody", "ten"], 2, "amount must be a number"),
        (["tx", "fund", "nobody", "10", "--currency", "XYZ"], 2, "ISO-4217"),
        (["balance", "nobody", "--as-of", "yesterday"], 2, "ISO-8601"),
        (["balance", "card-nobody", "--at-least-seq", "99999999"], 2, "beyond the end"),
        (["entries", "card-x", "--limit", "0"], 2, "--limit"),
        (["tx", "outcome", "never-submitted"], 3, "never-submitted"),
    ],
)
def test_bad_input_is_one_clear_line_and_a_non_zero_status(
    cli: Any, argv: list[str], status: int, words: str
) -> None:
    code, _, err = cli(*argv)
    assert code == status, err
    assert words in one_line_error(err)


def test_a_service_that_is_down_is_unavailable(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JETLEDGER_CARD_PORT", str(free_port()))
    code, _, err = cli("card", "list")
    assert code == 6 and "jetledger dev" in one_line_error(err)


def test_balance_as_of_and_entries(cli: Any, card: str) -> None:
    spent = ok_json(cli, "tx", "create", card, "10.00", "--merchant", "books")
    seq = spent["stream_sequence"]
    now = ok_json(cli, "balance", f"card-{card}", "--at-least-seq", seq)
    assert now["balances"][0]["posted"] == "9000"
    before = ok_json(cli, "balance", card, "--as-of", "2000-01-01T00:00:00Z")
    assert before.get("balances", []) == [] or before["balances"][0].get("posted", "0") == "0"
    merchant = ok_json(cli, "balance", "merchant-books", "--at-least-seq", seq)
    assert int(merchant["balances"][0]["posted"]) >= 1000
    entries = ok_json(cli, "entries", card, "--at-least-seq", seq)["entries"]
    assert [e["amount"]["amount"] for e in entries] == ["10000", "-1000"]
    code, out, _ = cli("entries", card)
    assert code == 0 and "-10.00 USD" in out and "90.00 USD" in out
    code, out, _ = cli("balance", card)
    assert code == 0 and "90.00 USD" in out


def test_top_ups_come_from_the_house_funding_account(cli: Any, card: str) -> None:
    """The account docs/ledger.md and the README name, read through the CLI."""
    first = ok_json(cli, "tx", "fund", card, "0.01")["stream_sequence"]
    before = ok_json(cli, "balance", FUNDING, "--at-least-seq", first)["balances"]
    funded = ok_json(cli, "tx", "fund", card, "12.34")["stream_sequence"]
    after = ok_json(cli, "balance", FUNDING, "--at-least-seq", funded)["balances"]
    posted = {b["currency"]: int(b.get("posted", "0")) for b in before}
    assert {b["currency"]: int(b["posted"]) - posted["USD"] for b in after} == {"USD": -1234}
    assert FUNDING == "house-funding" and ADJUSTMENTS == "house-adjustments"
    for document in ("README.md", "docs/ledger.md", "docs/cli.md"):
        text = (Path(__file__).resolve().parents[2] / document).read_text()
        assert f"`{FUNDING}`" in text and f"`{ADJUSTMENTS}`" in text, document


def test_an_account_with_no_activity_yet_is_a_zero_balance(cli: Any) -> None:
    """A merchant before its first sale: exit 0, nothing posted. Only an unknown card is exit 3."""
    code, out, err = cli("balance", f"merchant-{new_id('first-sale')}", "--json")
    assert code == 0, err
    assert all(int(b.get("posted", "0")) == 0 for b in json.loads(out).get("balances", []))
    code, _, err = cli("balance", ADJUSTMENTS, "--json")  # a house account always exists
    assert code == 0, err
    code, _, err = cli("balance", new_id("never-issued"))
    assert code == 3 and "no such card" in one_line_error(err), err


def test_events_tail_reads_the_stream(cli: Any, card: str) -> None:
    code, out, _ = cli("events", "tail", "--subject", f"card.{card}", "--json")
    assert code == 0
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["event"]["type"] for e in events] == ["card.issued.v1", "card.funded.v1"]
    assert events[0]["subject"] == f"card.{card}"
    code, out, _ = cli("events", "tail", "--last", "3")
    assert code == 0 and len(out.strip().splitlines()) == 3
    code, out, _ = cli(
        "events", "tail", "--derived", "--subject", f"ledger.entry_created.card-{card}"
    )
    assert code == 0 and "ledger.entry_created" in out


def test_events_tail_follows_new_events(card: str) -> None:
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool, io.StringIO() as out:
        with contextlib.redirect_stdout(out):
            following = pool.submit(
                main, ["events", "tail", "--subject", f"card.{card}", "-f", "--max", "1"]
            )
            time.sleep(1.0)  # let it print the existing events and start following
            assert main(["tx", "create", card, "1.00", "--merchant", "m", "--json"]) == 0
            assert following.result(timeout=30) == 0
        lines = out.getvalue().splitlines()
    assert "card.funded.v1" in lines[1]
    assert any("transaction.created.v1" in line for line in lines[2:])


def test_replay_and_verify(cli: Any, card: str) -> None:
    code, out, err = cli("verify")
    assert code == 0 and "OK" in out, err
    assert "━" in err and re.search(r"\d+/\d+", err), err  # verify shows progress on stderr
    assert "OK event MACs: all" in out  # a secure system: every event's MAC checks
    code, _, err = cli("replay", "ledger")
    assert code == 0, err
    code, out, _ = cli("verify")
    assert code == 0 and "OK" in out
    code, _, err = cli("replay", "notifications")
    assert code == 0, err
    assert "━" in err and re.search(r"\d+/\d+ messages", err), err  # and so does the replay
    code, _, err = cli("notifications", "verify")
    assert code == 0, err


def test_notifications_list_and_watch(cli: Any, card: str, system: DevSystem) -> None:
    ok_json(cli, "tx", "create", card, "3.00", "--merchant", "kiosk")
    deadline = time.monotonic() + 15
    while True:
        code, out, err = cli("notifications", "list", "--card", card)
        if "kiosk" in out or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert code == 0 and "kiosk" in out, err
    code, out, err = cli("notifications", "--card", card, "--json")  # the issue's short form
    assert code == 0, err
    assert any(json.loads(line)["card_id"] == card for line in out.splitlines()), out
    code, out, err = cli("notifications", "prefs", "--card", card)
    assert code == 0 and json.loads(out)["effective_low_balance_percent"] == 10, err
    code, _, err = cli("notifications", "deliveries", "--card", card)
    assert code == 0, err
    # `watch` streams until interrupted: run it as a process and read its first line.
    env = {**os.environ, **client_env(system.settings)}
    with subprocess.Popen(
        [sys.executable, "-c", "from services.cli.main import run; run()",
         "notifications", "--watch", "--card", card],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    ) as watcher:  # fmt: skip
        try:
            assert watcher.stdout is not None
            first = json.loads(watcher.stdout.readline())
            assert first["card_id"] == card and first["kind"] == "NOTIFICATION_KIND_FUNDING"
        finally:
            watcher.kill()
