"""The garbage collector of a long-running server: tuned once it has started, and watched.

CPython's cyclic collector stops the event loop for as long as a collection takes, and a full
collection walks every tracked object: with thousands of live actors that is tens to hundreds of
milliseconds, every few seconds under load. A server therefore

- freezes what start-up built (modules, routes, the seeded agents): it lives as long as the
  process and is never walked again (`gc.freeze`);
- keeps young collections short and considers a full collection far less often: a young
  collection walks what survived the last few, and under load with thousands of live actors
  most of what is allocated survives, so a large young generation pauses as long as a full
  collection would (measured: 20,000 allocations between gen0 collections gave 300 ms gen1
  pauses; 2,000 with a gen1 every 2 keep them near 20 ms). CPython still runs a full
  collection only once the objects promoted since the last reach a quarter of the old
  generation;
- counts every collection and its pause (`GcPauses`), for `/metrics` and for benchmarks.
"""

from __future__ import annotations

import gc
import time
from typing import Any, Final, final

import msgspec

# gen0 collections every 2,000 net allocations (CPython: 700), a gen1 every 2 of them (10), a
# full collection considered after 1,000 gen1 collections (CPython: 10).
SERVER_THRESHOLDS: Final = (2_000, 2, 1_000)
SLOW_PAUSE: Final = 0.1  # seconds: a pause this long shows as a stall to clients


class GcStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """Collections since the probe started, by generation, and how long they paused."""

    collections: tuple[int, int, int]
    pause_seconds: tuple[float, float, float]  # total, by generation
    max_pause_seconds: tuple[float, float, float]
    slow_pauses: int  # pauses of SLOW_PAUSE or more
    frozen_objects: int


@final
class GcPauses:
    """A `gc.callbacks` probe: counts collections and times each pause. `close` removes it."""

    def __init__(self) -> None:
        self._collections = [0, 0, 0]
        self._total = [0.0, 0.0, 0.0]
        self._max = [0.0, 0.0, 0.0]
        self._slow = 0
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause = time.perf_counter() - self._started
        generation = min(int(info.get("generation", 2)), 2)
        self._collections[generation] += 1
        self._total[generation] += pause
        self._max[generation] = max(self._max[generation], pause)
        if pause >= SLOW_PAUSE:
            self._slow += 1

    def statistics(self) -> GcStatistics:
        return GcStatistics(
            collections=(self._collections[0], self._collections[1], self._collections[2]),
            pause_seconds=(self._total[0], self._total[1], self._total[2]),
            max_pause_seconds=(self._max[0], self._max[1], self._max[2]),
            slow_pauses=self._slow,
            frozen_objects=gc.get_freeze_count(),
        )

    def close(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)


def tune_gc_for_serving() -> None:
    """Call once the server has started: freeze what start-up built, collect young objects less
    often. Safe to call again (a later start in the same process freezes what it added)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*SERVER_THRESHOLDS)


_probes: list[GcPauses] = []


def gc_probe() -> GcPauses:
    """The process's one probe, installed on first use (every server in the process shares it:
    collections are per process)."""
    if not _probes:
        _probes.append(GcPauses())
    return _probes[0]
