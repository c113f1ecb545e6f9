"""Appends from several tasks and prints each acknowledged event; test_log_crash kills it.

Usage: python _crash_appender.py DIR ROUND [COMMITS [flush]]. Prints `appending` once the log is
open, then one line `SEQ STREAM VERSION` per event, after its append returned (that is, once it
is durable).
Besides the single-stream tasks, one task appends to a pair of streams (`...-pair-a`, `...-pair-b`)
atomically, so after any crash both streams of the pair have the same version.
With COMMITS, the process SIGKILLs itself right after its COMMITS-th group commit is durable and
before any append of that group is acknowledged. With `flush` after COMMITS, it SIGKILLs itself
instead at the first commit from the COMMITS-th on that would write out the deferred stream
index, before that commit: the commits acknowledged since the last flush have their stream index
entries only in memory when the process dies.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import msgspec
import trio

from cuelog.runtime import AppendPart, EventLog, RawEvent, open_event_log

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


async def append_pairs_forever(log: EventLog, prefix: str) -> None:
    version = 0
    while True:
        versions = range(version + 1, version + 2 + version % 2)
        parts = [
            AppendPart(
                f"{prefix}-{side}",
                [RawEvent("Tick", payload(f"{prefix}-{side}", v)) for v in versions],
                expected_version=version,
            )
            for side in "ab"
        ]
        recorded = await log.append_many(parts)
        version = recorded[0][-1].version
        lines = (f"{r.seq} {r.stream} {r.version}\n" for part in recorded for r in part)
        sys.stdout.write("".join(lines))
        sys.stdout.flush()


def kill_after_commits(log: EventLog, commits: int) -> None:
    """Wrap the log's durable write so that the process dies between a commit and its acks."""
    backend = type(log)
    write = backend._write  # type: ignore[attr-defined]
    done = 0

    def write_then_maybe_die(self: Any, plan: Any) -> None:
        nonlocal done
        write(self, plan)
        done += 1
        if done >= commits:
            os.kill(os.getpid(), signal.SIGKILL)

    backend._write = write_then_maybe_die  # type: ignore[attr-defined]


def kill_before_index_flush(log: EventLog, commits: int) -> None:
    """Wrap the log's durable write so that the process dies when, from its `commits`-th group
    commit on, a commit is about to write out the deferred stream index."""
    backend = type(log)
    write = backend._write  # type: ignore[attr-defined]
    done = 0

    def die_before_flush(self: Any, plan: Any) -> None:
        nonlocal done
        if done >= commits and plan.flushing is not None:
            os.kill(os.getpid(), signal.SIGKILL)
        write(self, plan)
        done += 1

    backend._write = die_before_flush  # type: ignore[attr-defined]


async def main(path: str, round_: str, commits: int | None, where: str) -> None:
    async with open_event_log(path) as log, trio.open_nursery() as nursery:
        if commits is not None and where == "flush":
            kill_before_index_flush(log, commits)
        elif commits is not None:
            kill_after_commits(log, commits)
        print("appending", flush=True)
        for task in range(TASKS):
            nursery.start_soon(append_forever, log, f"round{round_}-task{task}", task)
        nursery.start_soon(append_pairs_forever, log, f"round{round_}-pair")


if __name__ == "__main__":
    trio.run(
        main,
        sys.argv[1],
        sys.argv[2],
        int(sys.argv[3]) if len(sys.argv) > 3 else None,
        sys.argv[4] if len(sys.argv) > 4 else "ack",
    )
