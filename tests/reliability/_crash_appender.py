"""Appends from several tasks and prints each acknowledged event; test_log_crash kills it.

Usage: python _crash_appender.py DIR ROUND. Prints `appending` once the log is open, then one line
`SEQ STREAM VERSION` per event, after its append returned (that is, once it is durable).
"""

from __future__ import annotations

import sys

import msgspec
import trio

from cuelog.runtime import EventLog, RawEvent, open_event_log

TASKS = 6


def payload(stream: str, version: int) -> bytes:
    """What event `version` of `stream` holds, so the parent can check content after a crash."""
    return msgspec.msgpack.encode(
        {"stream": stream, "version": version, "pad": "x" * (version % 50)}
    )


async def append_forever(log: EventLog, stream: str, task: int) -> None:
    version = 0
    while True:
        size = 1 + (version + task) % 3
        versions = range(version + 1, version + size + 1)
        records = await log.append(
            stream,
            [RawEvent("Tick", payload(stream, v)) for v in versions],
            expected_version=version,
            idempotency_key=f"{stream}@{version}" if task % 2 else None,
        )
        version = records[-1].version
        sys.stdout.write("".join(f"{r.seq} {r.stream} {r.version}\n" for r in records))
        sys.stdout.flush()


async def main(path: str, round_: str) -> None:
    async with open_event_log(path) as log, trio.open_nursery() as nursery:
        print("appending", flush=True)
        for task in range(TASKS):
            nursery.start_soon(append_forever, log, f"round{round_}-task{task}", task)


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2])
