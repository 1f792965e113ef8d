"""A projection's leadership always ends: ``cancel_and_wait`` outlasts a swallowed cancellation.

The cluster fault campaign found the ledger projection stalled for good after a stream-leader
kill: its reader task lost a cancellation (``asyncio.wait_for`` on Python 3.11 can swallow one,
gh-86296), kept running, and ``cancel()`` + ``gather`` waited for it forever. These tasks swallow
their first cancellation on purpose.
"""

from __future__ import annotations

import asyncio

from projections.runner import cancel_and_wait


async def stubborn(swallow: int = 1) -> None:
    """Loop like a reader; ignore the first ``swallow`` cancellations."""
    while True:
        try:
            await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            if swallow == 0:
                raise
            swallow -= 1


async def test_one_cancel_does_not_end_a_task_that_swallows_it() -> None:
    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.sleep(0.2)
    assert not task.done()  # what the old teardown (cancel, then gather) waited on forever
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_cancel_and_wait_ends_every_task_even_one_that_swallows_cancellations() -> None:
    async def fails() -> None:
        raise RuntimeError("reader error")

    tasks = [
        asyncio.create_task(stubborn(swallow=2)),
        asyncio.create_task(stubborn(swallow=0)),
        asyncio.create_task(fails()),
    ]
    await asyncio.sleep(0.05)
    await asyncio.wait_for(cancel_and_wait(tasks), timeout=30)
    assert all(task.done() for task in tasks)
