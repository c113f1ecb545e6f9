"""Many sessions over time: live actors stay under `max_live_actors` and memory stays flat.

An in-process agent runtime over a real LMDB log wakes the echo agent once in each of
CUELOG_MANY_SESSIONS new sessions (5,000 by default; `make soak` runs 100,000), a few at a time.
Resident memory is measured without LMDB's file-backed pages (the map grows with the log and
the kernel may drop those pages at will): RSS minus shared, i.e. the process's own heap.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil
import trio

from cuelog.actors import AgentSpec, Domain, open_domain
from cuelog.runtime import ActorConfig, open_event_log
from tests.actors.domain_support import make_settings, user

SESSIONS = int(os.environ.get("CUELOG_MANY_SESSIONS", "5000"))
MAX_LIVE = 1000
WORKERS = 16
WARM_UP = 2 * MAX_LIVE  # sessions before the baseline: the live set is full, caches are warm
# Two caches grow with sessions up to a fixed size and stop there: the log's stream-version
# cache (2 streams a session, cleared at 100,000) and the runtime's queued-run hints (one run id a
# session, up to Domain.QUEUED_HINTS); together ~370 B a session measured. Anything else kept
# per session shows as growth past the warm-up: 4 KiB a session would be 12 MiB over 5,000
# sessions.
CACHED_PER_SESSION = 512
ALLOWED_GROWTH = 16 * 2**20 + CACHED_PER_SESSION * min(SESSIONS, Domain.QUEUED_HINTS)


def private_bytes() -> int:
    """Resident memory that is the process's own (not pages of mapped files such as the log)."""
    info = psutil.Process().memory_info()
    return int(info.rss - info.shared)


class Sampler:
    """The most live actors seen, and memory at the warm-up mark and at the end."""

    def __init__(self, rt: Domain) -> None:
        self.rt = rt
        self.max_live = 0
        self.done = 0
        self.baseline = 0
        self.peak = 0

    def sample(self) -> None:
        self.max_live = max(self.max_live, self.rt.system.statistics().live_actors)
        memory = private_bytes()
        if self.done >= WARM_UP:
            self.baseline = self.baseline or memory
            self.peak = max(self.peak, memory)

    async def watch(self) -> None:
        while True:
            self.sample()
            await trio.sleep(0.01)


async def wake_sessions(rt: Domain, sampler: Sampler) -> None:
    numbers = iter(range(SESSIONS))

    async def worker() -> None:
        for number in numbers:
            sent = await rt.send("default", [user(f"hi {number}")], session_key=f"many-{number}")
            view = await rt.wait_run(sent.run_id)
            assert view.status == "completed", view
            sampler.done += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sampler.watch)
        async with trio.open_nursery() as workers:
            for _ in range(WORKERS):
                workers.start_soon(worker)
        sampler.sample()
        nursery.cancel_scope.cancel()


def test_many_sessions_keep_live_actors_and_memory_bounded(tmp_path: Path) -> None:
    """Live actors never pass max_live_actors plus the in-flight few, and heap growth is bounded."""
    config = ActorConfig(max_live_actors=MAX_LIVE)
    agents = {"default": AgentSpec(name="default")}

    async def main() -> tuple[Sampler, int, int, float]:
        started = time.perf_counter()
        async with (
            open_event_log(tmp_path / "data") as log,
            open_domain(log, make_settings(), config=config, agents=agents) as rt,
        ):
            sampler = Sampler(rt)
            await wake_sessions(rt, sampler)
            sessions = len(log.list_streams("session:", limit=SESSIONS + 1))
            head = log.head().seq
        return sampler, sessions, head, time.perf_counter() - started

    sampler, sessions, head, seconds = trio.run(main)
    size = (tmp_path / "data" / "data.mdb").stat().st_size
    growth = sampler.peak - sampler.baseline
    print(
        f"\n{SESSIONS:,} sessions in {seconds:.1f} s ({SESSIONS / seconds:,.0f}/s), "
        f"{head:,} events, data.mdb {size / 2**20:.1f} MiB ({size / head:.0f} B/event); "
        f"max live actors {sampler.max_live:,} (cap {MAX_LIVE:,}); private memory "
        f"{sampler.baseline / 2**20:.1f} MiB after {WARM_UP:,} sessions, peak "
        f"{sampler.peak / 2**20:.1f} MiB (+{growth / 2**20:.1f} MiB, "
        f"allowed {ALLOWED_GROWTH / 2**20:.1f} MiB)"
    )
    assert sessions == SESSIONS
    # Busy actors cannot be passivated: at most a session and a run per worker, and the agent.
    assert sampler.max_live <= MAX_LIVE + 2 * WORKERS + 1
    assert sampler.max_live >= MAX_LIVE  # the cap was reached, so passivation was exercised
    assert growth <= ALLOWED_GROWTH
