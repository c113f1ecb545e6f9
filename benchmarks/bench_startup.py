"""Start-up with many sessions in the log: `cuelog serve` from process start to `/health`
answering and to the first `GET /v1/sessions` page served.

The log holds 100,000 sessions (CUELOG_BENCH_SCALE=0.1: 10,000), each with one completed run,
appended straight to the log with the domain's own events (the events a chat records: session
created, message accepted, run assigned, started, model requested, answered, completed, settled),
plus 100 sessions whose last run a crash interrupted, for recovery to close. The server starts
three times: the first start builds the catalogs from seq 0 (once, on the first start after an
upgrade), the second finds them current, the third finds them behind by 1,000 sessions written
while it was down.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import trio

from cuelog.actors import DOMAIN_EVENTS, AgentSpec, ChatMessage, Usage
from cuelog.runtime import AppendPart, Event, open_event_log

SCALE = float(os.environ.get("CUELOG_BENCH_SCALE", "1"))
SESSIONS = int(os.environ.get("CUELOG_MANY_SESSIONS", str(max(int(100_000 * SCALE), 1_000))))
INTERRUPTED = 100
LATER = 1_000
BATCH = 200  # sessions a commit

EVENTS = {cls.__name__: cls for cls in DOMAIN_EVENTS}
SPEC = AgentSpec(name="default")


def event(name: str, **fields: Any) -> Event:
    made: Event = EVENTS[name](**fields)
    return made


def session_parts(n: int, *, interrupted: bool = False) -> list[AppendPart]:
    key, run = f"sess_{n:07d}", f"run_{n:07d}"
    question = ChatMessage(role="user", content=f"question number {n}")
    answer = ChatMessage(role="assistant", content=f"Echo: question number {n}")
    usage = Usage(prompt_tokens=4, completion_tokens=6, total_tokens=10)
    session = [
        event("SessionCreated", session_key=key, agent_id="default"),
        event("MessageAccepted", run_id=run, messages=[question], spec=SPEC),
        event("RunAssigned", run_id=run),
    ]
    runs = [
        event(
            "RunStarted",
            run_id=run,
            session_key=key,
            agent_id="default",
            spec=SPEC,
            messages=[question],
            history_stream=f"session:{key}",
            history_version=2,
        ),
        event("ModelRequested", step=1, message_count=1, model="echo-1"),
    ]
    if not interrupted:
        runs += [
            event("AssistantMessage", step=1, message=answer, finish_reason="stop", usage=usage),
            event("RunCompleted", usage=usage, content=answer.content),
        ]
        session.append(event("RunSettled", run_id=run, status="completed", messages=[answer]))
    return [AppendPart(f"session:{key}", session), AppendPart(f"run:{run}", runs)]


async def build_log(path: Path, first: int, count: int, interrupted: int = 0) -> int:
    async with open_event_log(path, sync=False, initial_map_size=1 << 31) as log:
        for start in range(first, first + count, BATCH):
            parts = []
            for n in range(start, min(start + BATCH, first + count)):
                parts += session_parts(n)
            await log.append_many(parts)
        for n in range(first + count, first + count + interrupted):
            await log.append_many(session_parts(n, interrupted=True))
        return log.head().seq


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_and_measure(path: Path) -> tuple[float, float]:
    """Seconds from starting `cuelog serve` to `/health` answering 200, and to the first page
    of `GET /v1/sessions`; then stop it."""
    port = free_port()
    cuelog = str(Path(sys.executable).with_name("cuelog"))
    started = time.perf_counter()
    proc = subprocess.Popen(
        [cuelog, "serve", "--port", str(port), "--data-dir", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600) as client:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"cuelog serve exited with {proc.returncode}")
                try:
                    if client.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.02)
            health = time.perf_counter() - started
            page = client.get("/v1/sessions", params={"limit": 50})
            assert page.status_code == 200, page.text
            assert len(page.json()["data"]) == 50
            first = time.perf_counter() - started
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return health, first


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="cuelog-bench-startup-") as tmp:
        path = Path(tmp) / "data"
        print(f"startup: writing {SESSIONS:,} sessions to the log", flush=True)
        head = trio.run(build_log, path, 0, SESSIONS, INTERRUPTED)
        print(f"  {head:,} events ({INTERRUPTED} runs interrupted by a crash)")
        for what in ("first start (catalogs built from 0)", "second start (catalogs current)"):
            health, first = start_and_measure(path)
            print(f"  {what:<40} /health {health:6.2f} s   first page {first:6.2f} s")
        trio.run(build_log, path, SESSIONS + INTERRUPTED, LATER)
        health, first = start_and_measure(path)
        what = f"third start ({LATER:,} sessions since)"
        print(f"  {what:<40} /health {health:6.2f} s   first page {first:6.2f} s")


if __name__ == "__main__":
    main()
