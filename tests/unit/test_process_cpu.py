"""CPU accounting of a process tree (the soak benchmark's CPU per command, per process)."""

from __future__ import annotations

import os
import subprocess
import sys

from services.dev.state import tree_cpu_seconds

BURN = "import time\nend = time.process_time() + 0.4\nwhile time.process_time() < end: pass\n"
WAIT = "import sys\nsys.stdin.read()\n"


def test_a_busy_child_counts_towards_its_parents_tree_and_not_to_a_sibling() -> None:
    idle = subprocess.Popen([sys.executable, "-c", WAIT], stdin=subprocess.PIPE)
    busy = subprocess.Popen([sys.executable, "-c", BURN + WAIT], stdin=subprocess.PIPE)
    try:
        before = tree_cpu_seconds({"me": os.getpid(), "busy": busy.pid})
        while tree_cpu_seconds({"busy": busy.pid}).get("busy", 0.0) < 0.4:
            pass  # burning CPU here too is fine: it only adds to "me"
        after = tree_cpu_seconds({"me": os.getpid(), "busy": busy.pid, "idle": idle.pid})
    finally:
        for child in (idle, busy):
            assert child.stdin is not None
            child.stdin.close()
            child.wait(10)
    assert after["busy"] >= 0.4
    assert after["me"] - before["me"] >= after["busy"] - before["busy"]  # its child is in it
    assert after["idle"] < 0.3, "a sibling's work is not counted"


def test_a_gone_process_is_left_out() -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(10)
    assert tree_cpu_seconds({"gone": gone.pid}) == {}
