"""A service process freezes what is imported and collects young objects less often, and cyclic
garbage made afterwards is still collected without anyone calling ``gc.collect``."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from eventstore.loop import GC_YOUNG_THRESHOLD

_PROBE = textwrap.dedent(
    """
    import gc, weakref
    from eventstore.loop import tune_gc

    tune_gc()

    class Node:
        pass

    node = Node()
    node.me = node  # a cycle: reference counting alone never frees it
    gone = weakref.ref(node)
    del node
    keep = [[] for _ in range(3 * gc.get_threshold()[0])]  # enough young objects for a collection
    print(gc.get_threshold()[0], gc.get_freeze_count() > 1000, gone() is None)
    """
)


def test_a_tuned_process_freezes_its_modules_and_still_collects_cycles() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    assert out == [str(GC_YOUNG_THRESHOLD), "True", "True"]
