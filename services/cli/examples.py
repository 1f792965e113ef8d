"""Examples at the end of every command's ``--help``: one table for the whole CLI.

They live together, not beside each parser, so they read as one consistent set (the same cards,
the same amounts, the walkthrough's story) and a test can hold them all to the parser: every
command has examples, and every example parses to the command it illustrates
(``tests/e2e/test_cli_entry.py``). A parser that sets its own ``epilog`` keeps it.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import Final

# Command path (as typed after `jetledger`) -> example lines; `# …` explains a line.
EXAMPLES: Final[dict[str, tuple[str, ...]]] = {
    "": (
        "jetledger dev --fresh                      # start everything here (Ctrl-C stops it)",
        "jetledger card issue alice --name 'Alice Example' --last4 4242",
        "jetledger tx create alice 12.50 --merchant coffee --id coffee-1",
        "jetledger balance alice --at-least-seq 6",
        "jetledger card issue --help                # every command ends its help with examples",
    ),
    "demo": (
        "jetledger demo                             # what `make demo` runs",
        "jetledger demo --keep                      # keep the data directory to look around",
    ),
    "dev": (
        "jetledger dev                              # data kept in .jetledger between runs",
        "jetledger dev --fresh --log-level warning  # start from empty data, quieter logs",
        "jetledger dev --data-dir /tmp/ledger-b     # a second system (move its ports too)",
    ),
    "card": (
        "jetledger card issue alice --name 'Alice Example' --last4 4242",
        "jetledger card get alice",
        "jetledger card list --json",
    ),
    "card issue": (
        "jetledger card issue alice --name 'Alice Example' --last4 4242",
        "jetledger card issue bob --name 'Bob Example' --type credit --limit 500.00 --last4 1881",
        "jetledger card issue carol --name 'Carol' --last4 0005 --id issue-carol  # retry-safe",
    ),
    "card get": ("jetledger card get alice", "jetledger card get alice --json"),
    "card freeze": ("jetledger card freeze alice --reason 'reported lost'",),
    "card unfreeze": ("jetledger card unfreeze alice",),
    "card close": ("jetledger card close alice                 # its balance must be zero",),
    "card limit": ("jetledger card limit bob 750.00            # credit cards only",),
    "card list": ("jetledger card list", "jetledger card list --json --page-size 500"),
    "tx": (
        "jetledger tx fund alice 200.00 --id topup-1",
        "jetledger tx create alice 12.50 --merchant coffee --id coffee-1",
        "jetledger tx outcome coffee-1",
    ),
    "tx create": (
        "jetledger tx create alice 12.50 --merchant coffee --id coffee-1",
        "jetledger tx create alice 12.50 --merchant coffee --id coffee-1  # a retry: same outcome",
        'jetledger tx create alice 900 --merchant tv-shop || echo "exit $?"  # declined: 5',
    ),
    "tx authorize": (
        "jetledger tx authorize alice 80.00 --merchant hotel --id hold-1",
        "jetledger tx authorize alice 30.00 --merchant fuel --expires-in 3600",
    ),
    "tx capture": ("jetledger tx capture alice hold-1 65.00    # part of the hold; void the rest",),
    "tx void": ("jetledger tx void alice hold-1            # release what was not captured",),
    "tx refund": ("jetledger tx refund alice coffee-1 2.50",),
    "tx fund": (
        "jetledger tx fund alice 200.00 --id topup-1",
        "jetledger tx fund bob 50.00 --currency USD --json",
    ),
    "tx adjust": (
        "jetledger tx adjust alice -1.00 --reason 'card fee' --actor ops@example.com",
        "jetledger tx adjust alice 1.00 --reason 'fee refunded' --actor ops@example.com",
    ),
    "tx outcome": ("jetledger tx outcome coffee-1", "jetledger tx outcome coffee-1 --json"),
    "balance": (
        "jetledger balance alice                    # the card's account, card-alice",
        "jetledger balance alice --at-least-seq 6   # wait until LEDGER:6 is projected",
        "jetledger balance merchant-coffee --json",
        "jetledger balance house-funding            # top-ups come from here: minus all paid in",
        "jetledger balance alice --as-of 2026-01-31T12:00:00Z",
    ),
    "entries": (
        "jetledger entries alice",
        "jetledger entries merchant-coffee --limit 500 --json",
    ),
    "events": (
        "jetledger events tail --subject card.alice",
        "jetledger events tail -f",
    ),
    "events tail": (
        "jetledger events tail                      # the last 20 events",
        "jetledger events tail --subject card.alice --json",
        "jetledger events tail --from-seq 1 --last 1000",
        "jetledger events tail -f --max 10          # follow, stop after 10 new events",
        "jetledger events tail --derived --subject 'ledger.entry_created.card-alice'",
    ),
    "replay": ("jetledger replay ledger", "jetledger replay notifications"),
    "replay ledger": (
        "jetledger replay ledger                    # rebuild, then swap in while serving",
        "jetledger replay ledger --no-swap          # keep the rebuilt schema aside to inspect",
    ),
    "replay notifications": ("jetledger replay notifications          # never re-sends a webhook",),
    "verify": (
        "jetledger verify                           # exit 1, one line per failed check",
        "jetledger verify --wait 30                 # give a busy projection longer to catch up",
        "jetledger verify --pushgateway http://pushgateway:9091  # the CronJob: result as a metric",
    ),
    "provision": (
        "jetledger provision                        # streams: before the services start (a Job)",
    ),
    "migrate": (
        "jetledger migrate                          # Postgres schemas (a Job)",
        "jetledger migrate --only ledger            # one projection's schema",
    ),
    "backup": ("jetledger backup backups/2026-12-02        # streams + webhook delivery state",),
    "restore": (
        "jetledger restore backups/2026-12-02       # onto an empty system, then start services",
    ),
    "repair": ("jetledger repair derived",),
    "repair derived": (
        "jetledger repair derived                   # re-emit what the derived stream lacks",
    ),
    "notifications": (
        "jetledger notifications --card alice",
        "jetledger notifications --watch --card alice",
        "jetledger notifications webhook --card alice --endpoint hooks --url http://127.0.0.1:8080/hook",
    ),
    "notifications list": (
        "jetledger notifications list --card alice --newest-first",
        "jetledger notifications list --kind decline --kind low_balance --json",
    ),
    "notifications watch": (
        "jetledger notifications watch --card alice --from-now",
        "jetledger notifications watch --cursor CURSOR   # resume after a printed cursor",
    ),
    "notifications prefs": (
        "jetledger notifications prefs --card alice",
        "jetledger notifications prefs --card alice --set --kinds purchase,decline --percent 20",
        "jetledger notifications prefs --set --threshold 1000   # the operator default",
    ),
    "notifications webhook": (
        "jetledger notifications webhook --card alice --endpoint hooks --url http://127.0.0.1:8080/hook",
        "jetledger notifications webhook --card alice --endpoint hooks --remove",
    ),
    "notifications deliveries": (
        "jetledger notifications deliveries --card alice",
        "jetledger notifications deliveries --status dead",
    ),
    "notifications verify": ("jetledger notifications verify          # exit 1 on a difference",),
    "security": (
        "jetledger security token shop-app --role payments --table tokens.json",
        "jetledger security audit",
    ),
    "security token": (
        "jetledger security token shop-app --role payments --table tokens.json   # printed once",
        "jetledger security token bob-app --role payments --card bob --table tokens.json",
        "jetledger security token ops --role operator --role reader --table tokens.json",
    ),
    "security keyring": (
        "jetledger security keyring new event-keys.json",
        "jetledger security keyring rotate event-keys.json   # a new signing key; old ones verify",
    ),
    "security nats-config": (
        "jetledger security nats-config --cert server.crt --key server.key --ca ca.crt > nats.conf",
    ),
    "security audit": ("jetledger security audit               # every event's MAC, by position",),
    "completion": (
        "jetledger completion bash > ~/.local/share/bash-completion/completions/jetledger",
        'jetledger completion zsh > "${fpath[1]}/_jetledger"',
    ),
}


def subcommands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every parser of the tree with its command path, the root (``()``) first."""
    yield path, parser
    # argparse has no public way to list sub-parsers; shtab walks the same private attributes.
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from subcommands(sub, (*path, name))


def epilog(lines: tuple[str, ...]) -> str:
    """The examples block as ``--help`` prints it."""
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def add_examples(parser: argparse.ArgumentParser) -> None:
    """Give every command without an epilog of its own its examples, printed as written."""
    for path, sub in subcommands(parser):
        lines = EXAMPLES.get(" ".join(path))
        if lines and not sub.epilog:
            sub.epilog = epilog(lines)
            # Keep the examples' line breaks; descriptions are short enough not to need refilling.
            sub.formatter_class = argparse.RawDescriptionHelpFormatter
