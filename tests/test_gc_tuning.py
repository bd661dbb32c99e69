"""The collector settings ``serve`` makes (gateway.__main__.tune_gc)."""

from __future__ import annotations

import gc

from gateway.__main__ import GC_YOUNG_THRESHOLD, tune_gc


def test_start_up_objects_are_frozen_and_young_collections_are_rarer() -> None:
    before = gc.get_threshold()
    try:
        alive = [object() for _ in range(3)]  # alive at "start-up"
        tune_gc()
        assert gc.get_freeze_count() >= len(alive)
        young, middle, old = gc.get_threshold()
        assert young == GC_YOUNG_THRESHOLD > before[0]
        assert (middle, old) == before[1:]  # the older generations keep their ratios
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
