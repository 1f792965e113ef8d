"""Services exit on SIGTERM within their grace period, under load (issue 16).

The card service once stayed up for 20 s after SIGTERM under load. Now ``run_until_signal``
drains for 5 s, closes each resource within 3 s, and a watchdog thread ends the process 15 s after
the signal whatever its event loop is doing.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc

from jetledger.card.v1 import card_pb2, card_pb2_grpc
from jetledger.transaction.v1 import transaction_pb2 as tx
from jetledger.transaction.v1 import transaction_pb2_grpc
from services.localservers import free_port
from services.settings import Settings
from tests.e2e.support import issue_request, new_id, service_env, spawn_service, usd, wait_serving

GRACE = 30.0  # the deployments' terminationGracePeriodSeconds; the services aim for 15 s


def _exited_within(proc: subprocess.Popen[bytes], seconds: float) -> int | None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return proc.returncode
        time.sleep(0.1)
    return None


async def test_services_exit_on_sigterm_under_load(settings: Settings, tmp_path: Path) -> None:
    card_port, tx_port = free_port(), free_port()
    card = spawn_service(
        "services.card.main",
        service_env(settings, card_port=card_port, card_metrics_port=free_port()),
        tmp_path / "card.log",
    )
    env = service_env(
        settings,
        transaction_port=tx_port,
        transaction_metrics_port=free_port(),
        card_service_addr=f"127.0.0.1:{card_port}",
    )
    intake = spawn_service("services.transaction.main", env, tmp_path / "intake.log")
    procs = [card, intake]
    try:
        await asyncio.gather(wait_serving(card_port, 60), wait_serving(tx_port, 60))
        card_channel = grpc.aio.insecure_channel(f"127.0.0.1:{card_port}")
        tx_channel = grpc.aio.insecure_channel(f"127.0.0.1:{tx_port}")
        cards = card_pb2_grpc.CardServiceStub(card_channel)
        transactions = transaction_pb2_grpc.TransactionServiceStub(tx_channel)
        ids = [new_id("card") for _ in range(10)]
        for card_id in ids:
            await cards.IssueCard(issue_request(card_id, credit_limit=10**12))
        stop = asyncio.Event()
        done = [0]
        warmed = asyncio.Event()

        async def load(worker: int) -> None:
            while not stop.is_set():
                card_id = ids[worker % len(ids)]
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await transactions.CreateTransaction(
                        tx.CreateTransactionRequest(
                            transaction_id=new_id("t"), card_id=card_id, merchant_id="m",
                            amount=usd(1),
                        ),
                        timeout=5,
                    )  # fmt: skip
                    await cards.GetCard(card_pb2.CardRequest(card_id=card_id), timeout=5)
                    done[0] += 1
                    if done[0] >= 300:
                        warmed.set()

        workers = [asyncio.create_task(load(i)) for i in range(48)]
        await asyncio.wait_for(warmed.wait(), 120)
        # Both at once, in the middle of the load, which keeps coming while they drain.
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        codes = await asyncio.gather(
            *(asyncio.to_thread(_exited_within, proc, GRACE) for proc in procs)
        )
        stop.set()
        await asyncio.gather(*workers)
        await card_channel.close()
        await tx_channel.close()
        assert codes[0] is not None, "the card service outlived its grace period"
        assert codes[1] is not None, "the transaction service outlived its grace period"
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_a_stuck_loop_still_exits_by_the_deadline() -> None:
    # The watchdog is a thread: a loop blocked after SIGTERM cannot keep the process alive.
    script = (
        "import time\n"
        "from services.runtime import _exit_by\n"
        "_exit_by(0.5, 'stuck')\n"
        "time.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.DEVNULL)
    try:
        assert _exited_within(proc, GRACE) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_service_whose_shutdown_hangs_exits_by_its_deadline() -> None:
    # The ledger and notification services serve through run_service with until_shutdown: after
    # SIGTERM their watchdog is armed too, so a shutdown that never ends still ends the process.
    script = (
        "import asyncio, time\n"
        "from services.runtime import run_service, until_shutdown\n"
        "def ready():\n"
        "    print('ready', flush=True)\n"
        "async def serve(settings):\n"
        "    asyncio.get_running_loop().call_soon(ready)\n"
        "    await until_shutdown('stuck', deadline=0.5)()\n"
        "    time.sleep(120)  # a shutdown that never ends\n"
        "run_service('stuck', serve)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        proc.send_signal(signal.SIGTERM)
        assert _exited_within(proc, GRACE) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
