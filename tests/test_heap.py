"""The collector policy a serving process runs with (tap/runtime/heap.py)."""

from __future__ import annotations

import gc

from tap.runtime import heap


def test_settling_the_heap_freezes_what_exists_and_raises_the_thresholds() -> None:
    before = gc.get_threshold()
    # CPython's defaults: a server started in this test session may have settled the heap already.
    gc.set_threshold(700, 10, 10)
    survivor = [object() for _ in range(10)]  # alive now: must end up frozen
    try:
        heap.settle()
        assert gc.get_threshold() == (heap.GEN0, heap.GEN1, heap.GEN2)
        assert heap.GEN0 > 700 and heap.GEN2 > 10
        assert gc.get_freeze_count() > 0
        assert not any(o is survivor for o in gc.get_objects())  # out of the collector's walk
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
