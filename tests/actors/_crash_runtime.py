"""A runtime the crash tests SIGKILL: `python -m tests.actors._crash_runtime DIR MODE`.

MODE `streaming`: sends A (a slow reply) and queues B on session `s`, prints `streaming` once A's
first delta is durable, then waits to be killed.
MODE `accepted`: the session never gets to start the run it assigned; prints `accepted` once
`send` returned (the message is durable), then waits to be killed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import trio

from cuelog.actors import _session
from cuelog.actors._session_fold import SessionState
from cuelog.runtime import ActorContext
from tests.actors.domain_support import SlowModel, make_settings, runtime_at, user, wait_for_event


async def never_start(
    ctx: ActorContext, state: SessionState, run_id: str, error: str | None = None
) -> None:
    await trio.sleep_forever()


async def main(path: Path, mode: str) -> None:
    model = SlowModel(words=10_000, delay=0.01)
    if mode == "accepted":
        _session.start_run_for_session = never_start
    async with runtime_at(path, make_settings(model)) as rt:
        a = await rt.send("default", [user("A")], session_key="s", run_id="run_a")
        if mode == "accepted":
            print("accepted", flush=True)
            await trio.sleep_forever()
        b = await rt.send("default", [user("B")], session_key="s", run_id="run_b")
        assert b.queued and not a.queued
        await wait_for_event(rt.log, "run:run_a", "AssistantDelta")
        print("streaming", flush=True)
        await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main, Path(sys.argv[1]), sys.argv[2])
