"""Projection catch-up: the runs catalog (rows, indexes and hourly usage) folded into its LMDB
store from a log of recorded runs, then all of the domain's read models (open runs, runs,
sessions) caught up together as a server does, against the timeline + fold that `bench_replay`
measures over the same log in the same run (target: at least 0.5 of it). CUELOG_BENCH_SCALE=0.1
makes a quick run.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import trio

from benchmarks.bench_replay import build_log, timeline_and_fold
from cuelog.actors import domain_projections
from cuelog.runtime import (
    ProjectionGroup,
    ProjectionRunner,
    open_event_log,
    open_projection_store,
)

SCALE = float(os.environ.get("CUELOG_BENCH_SCALE", "1"))


async def catch_up(path: Path) -> tuple[int, float]:
    async with (
        open_event_log(path, readonly=True) as log,
        open_projection_store(path, sync=True) as store,
    ):
        [catalog] = [p for p in domain_projections() if p.name == "runs"]
        runner = ProjectionRunner(log, store, catalog)
        started = time.perf_counter()
        checkpoint = await runner.rebuild()
        return checkpoint.seq, time.perf_counter() - started


async def catch_up_all(path: Path) -> tuple[int, float]:
    """Every read model from seq 0, in one group (one read of each batch, one transaction)."""
    async with (
        open_event_log(path, readonly=True) as log,
        open_projection_store(path, sync=True) as store,
    ):
        runners = [ProjectionRunner(log, store, p) for p in domain_projections()]
        for runner in runners:
            await store.reset(runner.projection)
        head = log.head().seq
        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            await nursery.start(ProjectionGroup(runners).run)
            for runner in runners:
                await runner.wait_caught_up(head)
            seconds = time.perf_counter() - started
            nursery.cancel_scope.cancel()
        return head, seconds


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="cuelog-bench-projections-") as tmp:
        work = Path(tmp) / "log"
        total = max(int(1_000_000 * SCALE), 10_000)
        print(f"projections: building a {total:,}-event log of recorded runs", flush=True)
        trio.run(build_log, work, total)
        count, fold_seconds = trio.run(timeline_and_fold, work)
        applied, seconds = trio.run(catch_up, work)
        assert applied == count
        fold_rate, rate = count / fold_seconds, applied / seconds
        print(f"  timeline + fold (baseline)        {fold_rate:>12,.0f} ev/s")
        print(f"  runs catalog catch-up             {rate:>12,.0f} ev/s  ({seconds:.2f} s)")
        print(f"  ratio to the baseline             {rate / fold_rate:>12.2f}    (target >= 0.5)")
        applied, seconds = trio.run(catch_up_all, work)
        assert applied == count
        every = applied / seconds
        names = ", ".join(p.name for p in domain_projections())
        print(f"  all read models ({names})")
        print(f"    caught up together              {every:>12,.0f} ev/s  ({seconds:.2f} s)")
        print(f"  ratio to the baseline             {every / fold_rate:>12.2f}    (target >= 0.5)")


if __name__ == "__main__":
    main()
