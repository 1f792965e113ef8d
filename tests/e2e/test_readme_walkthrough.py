"""README.md cannot rot: its walkthrough block runs, as written, against a running system, and
its configuration table must list every setting with ``Settings()``'s exact default.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.cli.main import build_parser
from services.dev import DevSystem, with_free_ports
from services.security.config import secure_locally
from services.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
DEFAULT_ADDRESSES = {  # the documented ports, rewritten to the test system's free ones
    "127.0.0.1:50051": "card_port",
    "127.0.0.1:50052": "transaction_port",
    "127.0.0.1:50053": "ledger_port",
    "127.0.0.1:50054": "notification_port",
}


def marked(name: str) -> str:
    """The README text between ``<!-- name:start … -->`` and ``<!-- name:end -->``."""
    found = re.search(rf"<!-- {name}:start[^>]*-->\n(.*?)<!-- {name}:end -->", README, re.S)
    assert found, f"README.md has no {name} block"
    return found.group(1)


def walkthrough() -> str:
    block = re.search(r"```sh\n(.*?)```", marked("walkthrough"), re.S)
    assert block
    return block.group(1)


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevSystem]:
    # The walkthrough runs in a directory of its own that looks like the repository: `.venv`
    # is the real one, `.jetledger/dev.env` is written by this system. Like `jetledger dev`, it
    # starts its own NATS and Postgres and is secure: TLS, tokens, a NATS user per service.
    home = tmp_path_factory.mktemp("readme")
    (home / ".venv").symlink_to(ROOT / ".venv")
    settings = secure_locally(Settings(data_dir=home / ".jetledger"), environ={})
    with DevSystem(with_free_ports(settings), fresh=True) as running:
        yield running


def test_the_walkthrough_runs_as_written(system: DevSystem) -> None:
    script = walkthrough()
    assert len(script.strip().splitlines()) <= 13, "keep the walkthrough short"
    for address, field in DEFAULT_ADDRESSES.items():
        script = script.replace(address, f"127.0.0.1:{getattr(system.settings, field)}")
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env["COLUMNS"] = "160"  # rich wraps at 80 columns when it is not on a terminal
    done = subprocess.run(
        ["bash", "-c", "set -eo pipefail\n" + script],
        cwd=system.data.root.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "accepted purchase 12.50 USD on card alice" in out
    assert "replayed: the original outcome" in out
    assert "declined, exit status 5" in out and "insufficient_funds" in done.stderr
    # the decline's recorded outcome (its typed detail), printed by --json; the reason once on stderr
    assert '"outcome": "OUTCOME_DECLINED"' in out and '"reason": "insufficient_funds"' in out
    assert done.stderr.count("insufficient_funds") == 1, done.stderr
    assert "187.50 USD" in out  # balance: 200.00 - 12.50, once
    assert "transaction.created.v1" in out  # events tail
    assert "jetledger.card.v1.CardService" in out  # grpcurl list (reflection)
    assert '"cardholder_name": "Alice Example"' in out  # grpcurl GetCard
    assert '"posted": "18750"' in out  # grpcurl GetBalance
    assert "tables equal the stream" in out  # jetledger verify
    assert system.settings.security  # all of it over TLS, with the operator's token


def test_the_start_command_exists() -> None:
    assert ".venv/bin/jetledger dev --fresh" in README
    args = build_parser().parse_args(["dev", "--fresh"])
    assert args.fresh and callable(args.handler)


def test_the_configuration_table_matches_settings() -> None:
    rows = re.findall(r"^\| `(JETLEDGER_[A-Z_]+)` \| ([^|]+) \|", marked("settings"), re.M)
    documented = {name: value.strip() for name, value in rows}
    defaults = Settings()
    expected = {}
    for f in dataclasses.fields(Settings):
        if f.name != "extra":
            value = str(getattr(defaults, f.name))
            expected[ENV_PREFIX + f.name.upper()] = f"`{value}`" if value else "(empty)"
    assert documented == expected
