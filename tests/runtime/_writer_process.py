"""A log writer in its own process, driven over stdin, for lock and read-only tests.

Usage: python _writer_process.py DIR. Prints `ready PID` once the log is open; then each stdin
line `N` appends N events to stream "child" and prints `appended SEQ`; EOF or `quit` closes.
"""

from __future__ import annotations

import os
import sys

import msgspec
import trio

from cuelog.runtime import RawEvent, open_event_log


async def main(path: str) -> None:
    async with open_event_log(path) as log:
        print(f"ready {os.getpid()}", flush=True)
        while True:
            line = await trio.to_thread.run_sync(sys.stdin.readline)
            if not line or line.strip() == "quit":
                return
            events = [RawEvent("Tick", msgspec.msgpack.encode(i)) for i in range(int(line))]
            records = await log.append("child", events)
            print(f"appended {records[-1].seq}", flush=True)


if __name__ == "__main__":
    trio.run(main, sys.argv[1])
