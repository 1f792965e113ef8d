"""Service processes run on uvloop: the intake's throughput figures in docs/intake.md assume it."""

from __future__ import annotations

import asyncio

from eventstore.loop import run_loop


def test_a_service_main_runs_on_uvloop() -> None:
    loops: list[str] = []

    async def main() -> None:
        loops.append(type(asyncio.get_running_loop()).__module__)

    run_loop(main())
    assert loops and loops[0].startswith("uvloop"), loops
