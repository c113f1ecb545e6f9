"""A projection catching up in its own process, for the crash test.

Usage: python _projection_process.py DIR. Catches the `tally` projection up in small batches,
printing `at SEQ` after each one commits, then `done SEQ`.
"""

from __future__ import annotations

import sys

import trio

from cuelog.runtime import ProjectionRunner, open_event_log, open_projection_store
from tests.runtime.projection_models import Tally


async def main(path: str) -> None:
    async with open_event_log(path) as log, open_projection_store(path) as store:
        runner = ProjectionRunner(log, store, Tally(), batch=20)
        checkpoint = await runner.catch_up(lambda done, total: print(f"at {done}", flush=True))
        print(f"done {checkpoint.seq}", flush=True)


if __name__ == "__main__":
    trio.run(main, sys.argv[1])
