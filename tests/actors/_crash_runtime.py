"""A runtime the crash tests SIGKILL: `python -m tests.actors._crash_runtime DIR MODE`.

MODE `streaming`: sends A (a slow reply) and queues B on session `s`, prints `streaming` once A's
first delta is durable, then waits to be killed.
MODE `accepted`: sends A to a model that never answers and queues B; prints `accepted` once
both `send`s returned (A's message and run start are durable, the run has recorded nothing
more), then waits to be killed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import trio

from tests.actors.domain_support import SlowModel, make_settings, runtime_at, user, wait_for_event


async def main(path: Path, mode: str) -> None:
    model = SlowModel(words=10_000, delay=3600.0 if mode == "accepted" else 0.01)
    async with runtime_at(path, make_settings(model)) as rt:
        a = await rt.send("default", [user("A")], session_key="s", run_id="run_a")
        b = await rt.send("default", [user("B")], session_key="s", run_id="run_b")
        assert b.queued and not a.queued
        if mode == "accepted":
            await model.called.wait()  # the run is at work: nothing but its start recorded
            print("accepted", flush=True)
            await trio.sleep_forever()
        await wait_for_event(rt.log, "run:run_a", "AssistantDelta")
        print("streaming", flush=True)
        await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main, Path(sys.argv[1]), sys.argv[2])
