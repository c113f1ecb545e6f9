"""The open-runs and sessions catalogs catching up in their own process, for the crash test.

Usage: python -m tests.actors._catalog_process DIR. Catches both up in small batches, printing
`NAME at SEQ` after each batch commits, then `NAME done SEQ`.
"""

from __future__ import annotations

import sys

import trio

from cuelog.actors._sessions_catalog import OpenRunsCatalog, SessionsCatalog
from cuelog.runtime import ProjectionRunner, open_event_log, open_projection_store


async def main(path: str) -> None:
    async with open_event_log(path) as log, open_projection_store(path) as store:
        for projection in (OpenRunsCatalog(), SessionsCatalog()):
            name = projection.name
            runner = ProjectionRunner(log, store, projection, batch=10)
            checkpoint = await runner.catch_up(
                lambda done, total: print(f"{name} at {done}", flush=True)  # noqa: B023
            )
            print(f"{name} done {checkpoint.seq}", flush=True)


if __name__ == "__main__":
    trio.run(main, sys.argv[1])
