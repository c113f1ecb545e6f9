"""Replay throughput: a timeline plus a fold of every run and session over a 1M-event log, and
`replay --check` (re-execution with recorded outputs) of 1,000 recorded runs.

Baseline in the same run: a bare cursor read of the same log (no decoding). Target: the
timeline and fold of 1M events in under 10 s. CUELOG_BENCH_SCALE=0.1 makes a quick run.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import lmdb
import trio

from cuelog.actors import (
    DOMAIN_CODEC,
    AgentSpec,
    AssistantDelta,
    AssistantMessage,
    ChatMessage,
    EchoModel,
    ModelRequested,
    RunCompleted,
    RunSettings,
    RunStarted,
    RunState,
    SessionState,
    ToolRegistry,
    Usage,
    check_runs,
    fold_run,
    fold_session,
    open_domain,
    recorded_runs,
    summary,
)
from cuelog.runtime import Event, open_event_log

SCALE = float(os.environ.get("CUELOG_BENCH_SCALE", "1"))
EVENTS_PER_RUN = 10


def _run_events(run: int) -> list[Event]:
    spec = AgentSpec(name="default")
    message = ChatMessage(role="user", content=f"question number {run}")
    words = [f"word{i} " for i in range(12)]
    return [
        RunStarted(
            run_id=f"run_{run}",
            session_key=f"sess_{run % 1000}",
            agent_id="default",
            spec=spec,
            messages=[message],
        ),
        ModelRequested(step=1, message_count=1, model="echo-1"),
        *[AssistantDelta(step=1, text="".join(words[i : i + 2])) for i in range(0, 12, 2)],
        AssistantMessage(
            step=1,
            message=ChatMessage(role="assistant", content="".join(words)),
            finish_reason="stop",
            usage=Usage(prompt_tokens=3, completion_tokens=12, total_tokens=15),
        ),
        RunCompleted(
            usage=Usage(prompt_tokens=3, completion_tokens=12, total_tokens=15),
            content="".join(words),
        ),
    ]


async def build_log(path: Path, events: int) -> None:
    runs = events // EVENTS_PER_RUN
    async with open_event_log(path, initial_map_size=1 << 30) as log:
        for run in range(runs):
            await log.append(f"run:run_{run}", _run_events(run))
            if (run + 1) % 20_000 == 0:
                print(f"    built {(run + 1) * EVENTS_PER_RUN:,} events", flush=True)


def bare_read(path: Path) -> float:
    env = lmdb.open(str(path), readonly=True, lock=False, max_dbs=8)
    db = env.open_db(b"events", create=False)
    started = time.perf_counter()
    count = 0
    with env.begin() as txn:
        for _ in txn.cursor(db=db).iternext(keys=False, values=True):
            count += 1
    elapsed = time.perf_counter() - started
    env.close()
    return count / elapsed


async def timeline_and_fold(path: Path) -> tuple[int, float]:
    """What `cuelog replay --all` and a full state rebuild do: decode, summarise and fold."""
    runs: dict[str, RunState] = {}
    sessions: dict[str, SessionState] = {}
    started = time.perf_counter()
    count = 0
    async with open_event_log(path, readonly=True) as log:
        after = 0
        while True:
            page = log.read_all(after, 5000)
            if not page:
                break
            for event in page:
                summary(event)
                payload: Any = DOMAIN_CODEC.decode(event.type, event.data)
                if event.stream.startswith("run:"):
                    runs[event.stream] = fold_run(runs.get(event.stream, RunState()), payload)
                elif event.stream.startswith("session:"):
                    sessions[event.stream] = fold_session(
                        sessions.get(event.stream, SessionState()), payload
                    )
            count += len(page)
            after = page[-1].seq
    assert all(state.status == "completed" for state in runs.values())
    return count, time.perf_counter() - started


async def record_runs(path: Path, count: int) -> None:
    settings = RunSettings(providers={"echo": EchoModel()}, tools=ToolRegistry.builtins())
    async with (
        open_event_log(path, sync=False) as log,
        open_domain(log, settings) as runtime,
    ):
        for i in range(count):
            text = f'/tool calculator {{"expr": "{i} * 2"}}' if i % 3 == 0 else f"hello {i}"
            sent = await runtime.send("default", [ChatMessage(role="user", content=text)])
            await runtime.wait_run(sent.run_id)


async def check(path: Path) -> tuple[int, float, int]:
    async with open_event_log(path, readonly=True) as log:
        runs = recorded_runs(log)
        started = time.perf_counter()
        divergences = await check_runs(log, runs)
        return len(runs), time.perf_counter() - started, len(divergences)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="cuelog-bench-replay-") as tmp:
        work = Path(tmp)
        total = max(int(1_000_000 * SCALE), 10_000)
        print(f"replay: building a {total:,}-event log of recorded runs", flush=True)
        trio.run(build_log, work / "big", total)
        bare = bare_read(work / "big")
        count, elapsed = trio.run(timeline_and_fold, work / "big")
        print(f"  bare cursor read                  {bare:>12,.0f} ev/s")
        print(f"  timeline + fold                   {count / elapsed:>12,.0f} ev/s")
        print(f"  {count:,} events in               {elapsed:>12.2f} s    (target: 1M in < 10 s)")
        print(f"  ratio to the bare read            {count / elapsed / bare:>12.2f}")
        runs = max(int(1000 * SCALE), 50)
        print(
            f"check: recording {runs:,} runs through the runtime (echo model, 1 in 3 with a tool)"
        )
        trio.run(record_runs, work / "recorded", runs)
        checked, seconds, diverged = trio.run(check, work / "recorded")
        print(f"  replay --check                    {checked / seconds:>12,.0f} runs/s")
        print(f"  {checked:,} runs re-executed in       {seconds:>12.2f} s, {diverged} diverged")


if __name__ == "__main__":
    main()
