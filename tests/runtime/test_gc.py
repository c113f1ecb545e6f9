"""The garbage collector of a serving process: tuned once started, and its pauses counted."""

from __future__ import annotations

import gc

from cuelog.runtime import GcPauses, tune_gc_for_serving


def test_the_probe_counts_each_collection_and_its_pause() -> None:
    """A full collection shows as one more generation-2 collection with a pause measured."""
    probe = GcPauses()
    try:
        before = probe.statistics()
        gc.collect()
        after = probe.statistics()
    finally:
        probe.close()
    assert after.collections[2] == before.collections[2] + 1
    assert after.pause_seconds[2] > before.pause_seconds[2]
    assert after.max_pause_seconds[2] > 0
    gc.collect()
    assert probe.statistics() == after  # closed: no longer counting


def test_tuning_freezes_what_start_up_built_and_collects_young_objects_less_often() -> None:
    """After tuning, objects alive at the time are out of the collector's walks, and a full
    collection is considered far less often than CPython's default (after 10 gen1 ones)."""
    thresholds = gc.get_threshold()
    try:
        tune_gc_for_serving()
        assert gc.get_freeze_count() > 1000
        assert gc.get_threshold()[2] >= 100 * thresholds[2]
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
