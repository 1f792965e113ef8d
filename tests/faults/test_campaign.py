"""The fault campaign's short profile (docs/faults.md): one node, then a 3-node NATS cluster.

A few faults of each kind under an open-loop workload; the independent checker must find nothing
lost, nothing duplicated, no anomaly, and ``verify`` and a replay must agree with the tables.
The table is printed (``pytest -s`` shows it); ``make faults`` runs the long profile.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.campaign import PROFILES, run_campaign

pytestmark = [pytest.mark.timeout(900), pytest.mark.faults]


@pytest.mark.parametrize("shape", ["single", "cluster"])
async def test_short_fault_campaign_loses_and_duplicates_nothing(
    shape: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = await run_campaign(PROFILES[f"short-{shape}"], tmp_path)
    with capsys.disabled():
        print("\n" + report.table())
    assert not report.findings.lost, sorted(report.findings.lost)[:10]
    assert not report.findings.duplicated, sorted(report.findings.duplicated)[:10]
    assert not report.findings.anomalies, report.findings.anomalies[:10]
    assert not report.fault_errors, report.fault_errors
    assert report.verify_ok, report.verify_problems
    assert report.replay_equal
