"""A log writer in its own process that keeps its stream index in memory until told to flush.

Usage: python _index_writer.py DIR. The deferred index is written out only every 1,000 commits
and never for being idle. Prints `ready` once the log is open; then each stdin line
`STREAM N` appends N events to STREAM in one commit and prints `appended SEQ`; EOF closes the log
(which writes the index out). The parent SIGKILLs it to leave entries only in memory.
"""

from __future__ import annotations

import sys

import msgspec
import trio

from cuelog.runtime import RawEvent, _lmdb, open_event_log


async def main(path: str) -> None:
    _lmdb._FLUSH_EVERY = 1000
    _lmdb._IDLE_FLUSH = 3600.0
    async with open_event_log(path) as log:
        print("ready", flush=True)
        while True:
            line = await trio.to_thread.run_sync(sys.stdin.readline)
            if not line:
                return
            stream, count = line.split()
            events = [RawEvent("Tick", msgspec.msgpack.encode(i)) for i in range(int(count))]
            records = await log.append(stream, events)
            print(f"appended {records[-1].seq}", flush=True)


if __name__ == "__main__":
    trio.run(main, sys.argv[1])
