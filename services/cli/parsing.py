"""Parser pieces several CLI areas share."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def replay_subparsers(subparsers: Subparsers) -> Subparsers:
    """Return the ``replay`` command's projection sub-commands, creating ``replay`` if needed."""
    existing = subparsers.choices.get("replay")
    if existing is None:
        existing = subparsers.add_parser(
            "replay", help="rebuild a projection from the stream and swap it in"
        )
        existing.set_defaults(
            _replay_projections=existing.add_subparsers(
                dest="projection", metavar="PROJECTION", required=True
            )
        )
    found: Subparsers = existing.get_default("_replay_projections")
    return found
