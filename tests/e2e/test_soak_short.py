"""The soak benchmark's short profile as a correctness check (issue 16), not a timing assertion.

The real system (``jetledger dev``'s processes, projections included) takes a few thousand mixed
money commands over a few dozen cards: no command fails, every process still answers, the
projections catch up and ``jetledger verify`` passes. ``make soak`` runs the long profiles.
"""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from bench.soak_bench import PROFILES, Options, run


def test_the_short_soak_profile_runs_clean(tmp_path: Path) -> None:
    short = PROFILES["short"]
    options = Options(
        commands=short["commands"],
        cards=short["cards"],
        window=short["window"],
        rate=0.0,
        batch=100,
        concurrency=8,
        mode="submit",
        json=True,
        seed=16,
    )
    result = run(options, tmp_path, Console(file=io.StringIO()))
    assert result["commands"] == short["commands"]
    assert result["errors"] == {}, result["error_samples"]
    assert result["declines"] == {}, "the mix never asks for anything refusable"
    assert result["verify"] == "OK"
    assert all(result["answering"].values()), result["answering"]
    assert result["caught_up_after_s"] >= 0, "the projections caught up"
    assert set(result["rss_mb"]) >= {"card", "transaction", "ledger", "notification", "nats"}
    cpu = result["windows"][-1]["cpu_ms_per_cmd"]
    assert all(cpu[name] > 0 for name in ("transaction", "postgres", "nats", "bench")), cpu
    assert result["yardstick_ms"]["last"] > 0
    assert set(result["windows"][-1]["lag_p99_s_by_projection"]) == {"ledger", "notifications"}
    assert result["ok"]
