"""HTTP throughput: chat completions through the whole pipeline against a bare Quart-Trio endpoint.

Both servers are subprocesses on 127.0.0.1 with the same Hypercorn `Config` (from
`hypercorn_config`), loaded by the same trio + httpx load generator: CONCURRENCY workers, each
sending non-streaming chat completions back to back for DURATION seconds. The bare endpoint
answers the same JSON body the pipeline does, with no auth, actors or log. Then SSE: events/s
delivered to 1 and to 32 clients following `GET /v1/events` while runs are being produced.
Set CUELOG_BENCH_SCALE=0.25 for a quick run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import trio

SCALE = float(os.environ.get("CUELOG_BENCH_SCALE", "1"))
DURATION = max(8.0 * SCALE, 1.0)
SSE_DURATION = max(5.0 * SCALE, 1.0)
CONCURRENCY = 32
PRODUCERS = 8
API_KEY = "bench-key-0123456789abcdef"
TARGET = 0.60
CHAT_BODY = {"model": "default", "messages": [{"role": "user", "content": "hello benchmark"}]}

# The bare baseline: the same Hypercorn config, one route answering the pipeline's JSON body.
BARE_APP = """
import json, sys, trio
from hypercorn.trio import serve
from quart import Response, request
from quart_trio import QuartTrio
from cuelog.http.api import chat_completion, load_settings
from cuelog.actors import Usage

BODY = chat_completion("run_0123456789abcdef01234567", "default", 1700000000,
                       "Echo: hello benchmark",
                       Usage(prompt_tokens=2, completion_tokens=3, total_tokens=5))
app = QuartTrio("bare")

@app.post("/v1/chat/completions")
async def chat() -> Response:
    await request.get_data()  # the pipeline reads the body too (and keep-alive needs it read)
    return Response(BODY, content_type="application/json",
                    headers={"X-Run-Id": "run_0123456789abcdef01234567",
                             "X-Session-Key": "sess_0123456789abcdef01234567"})

async def main() -> None:
    from cuelog.http.api import hypercorn_config
    settings = load_settings(None, environ={}, flags={"server": {"port": 0}})
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(lambda task_status: serve(
            app, hypercorn_config(settings), task_status=task_status))
        print(json.dumps({"event": "serving", "urls": binds}), file=sys.stderr, flush=True)

trio.run(main)
"""


class Server:
    """A server subprocess and the URL it logged."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        assert self.proc.stderr is not None
        seen: list[str] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            seen.append(line)
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == "serving":
                self.url: str = record["urls"][0]
                # Keep draining stderr so the server never blocks on a full pipe.
                threading.Thread(target=self.proc.stderr.read, daemon=True).start()
                return
        self.stop()
        raise RuntimeError("server did not start:\n" + "".join(seen))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _pct(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(int(q * len(sorted_values)), len(sorted_values) - 1)]


async def load(url: str, headers: dict[str, str], duration: float) -> tuple[float, float, float]:
    """Requests/s, p50 and p99 latency (ms) of CONCURRENCY workers posting chat completions."""
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    latencies: list[float] = []
    errors = 0
    async with httpx.AsyncClient(
        base_url=url, headers=headers, limits=limits, timeout=30
    ) as client:

        async def worker(deadline: float, record: bool) -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                response = await client.post("/v1/chat/completions", json=CHAT_BODY)
                if response.status_code != 200:
                    errors += 1
                elif record:
                    latencies.append(time.perf_counter() - started)

        for record, seconds in ((False, min(1.0, duration / 4)), (True, duration)):
            deadline = time.perf_counter() + seconds
            started = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for _ in range(CONCURRENCY):
                    nursery.start_soon(worker, deadline, record)
            elapsed = time.perf_counter() - started
    if errors:
        print(f"   {errors} requests failed", flush=True)
    latencies.sort()
    return len(latencies) / elapsed, _pct(latencies, 0.50) * 1e3, _pct(latencies, 0.99) * 1e3


async def sse_fanout(url: str, clients: int, duration: float) -> tuple[float, float, int]:
    """Events/s delivered to all clients, per client, and events appended, while runs happen."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    limits = httpx.Limits(max_connections=clients + PRODUCERS + 2)
    received = [0] * clients
    async with httpx.AsyncClient(
        base_url=url, headers=headers, limits=limits, timeout=30
    ) as client:
        head = (await client.get("/v1/health")).json()["head_seq"]
        ready = trio.Semaphore(0)
        target = sys.maxsize  # events each reader must see; known once the producers stop
        lagging = set(range(clients))
        all_caught_up = trio.Event()

        def caught_up(index: int) -> None:
            lagging.discard(index)
            if not lagging:
                all_caught_up.set()

        async def reader(index: int) -> None:
            async with client.stream(
                "GET",
                "/v1/events",
                params={"after": head},
                headers={"Accept": "text/event-stream"},
            ) as response:
                assert response.status_code == 200, response.status_code
                ready.release()
                async for line in response.aiter_lines():
                    if line.startswith("id: "):
                        received[index] += 1
                        if received[index] >= target:
                            caught_up(index)

        async def producer(deadline: float) -> None:
            while time.perf_counter() < deadline:
                await client.post("/v1/chat/completions", json=CHAT_BODY)

        async with trio.open_nursery() as readers:
            for index in range(clients):
                readers.start_soon(reader, index)
            for _ in range(clients):
                await ready.acquire()
            started = time.perf_counter()
            deadline = started + duration
            async with trio.open_nursery() as producers:
                for _ in range(PRODUCERS):
                    producers.start_soon(producer, deadline)
            produced = (await client.get("/v1/health")).json()["head_seq"] - head
            target = produced
            for index in range(clients):
                if received[index] >= target:
                    caught_up(index)
            # Let the readers catch up with what was appended, a bounded while.
            with trio.move_on_after(10):
                await all_caught_up.wait()
            elapsed = time.perf_counter() - started
            readers.cancel_scope.cancel()
    total = sum(received)
    return total / elapsed, total / clients / elapsed, produced


def main() -> None:
    cuelog = str(Path(sys.executable).parent / "cuelog")
    auth = {"Authorization": f"Bearer {API_KEY}"}
    print(
        f"-- non-streaming chat completions: {CONCURRENCY} concurrent, {DURATION:g} s each",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="cuelog-bench-http-") as workdir:
        bare = Server([sys.executable, "-c", BARE_APP])
        try:
            print("   bare Quart-Trio endpoint ...", flush=True)
            bare_rps, bare_p50, bare_p99 = trio.run(load, bare.url, {}, DURATION)
        finally:
            bare.stop()
        print(
            f"   bare endpoint     {bare_rps:9.0f} req/s   p50 {bare_p50:6.1f} ms"
            f"   p99 {bare_p99:6.1f} ms",
            flush=True,
        )
        full = Server(
            [cuelog, "serve", "--port", "0", "--data-dir", f"{workdir}/data", "--api-key", API_KEY]
        )
        try:
            print("   cuelog pipeline (auth, actors, log, response) ...", flush=True)
            rps, p50, p99 = trio.run(load, full.url, auth, DURATION)
            print(
                f"   cuelog pipeline   {rps:9.0f} req/s   p50 {p50:6.1f} ms   p99 {p99:6.1f} ms",
                flush=True,
            )
            ratio = rps / bare_rps
            verdict = "meets" if ratio >= TARGET else "BELOW"
            print(f"   ratio {ratio:.2f} of the bare endpoint ({verdict} the {TARGET:.2f} target)")
            print(
                f"-- SSE: GET /v1/events followed while {PRODUCERS} producers run chats "
                f"for {SSE_DURATION:g} s",
                flush=True,
            )
            for clients in (1, 32):
                total, per_client, produced = trio.run(sse_fanout, full.url, clients, SSE_DURATION)
                print(
                    f"   {clients:2d} client(s)   {total:9.0f} events/s delivered   "
                    f"{per_client:8.0f} events/s per client   ({produced} events appended)",
                    flush=True,
                )
        finally:
            full.stop()
        postgres_chat(cuelog, auth, rps)


POSTGRES = os.environ.get("CUELOG_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432")


def postgres_chat(cuelog: str, auth: dict[str, str], lmdb_rps: float) -> None:
    """The same chat load through a server on the PostgreSQL log, against the LMDB figure."""
    try:
        import psycopg

        admin = psycopg.connect(f"{POSTGRES}/postgres", autocommit=True, connect_timeout=3)
    except Exception as exc:  # no server here: say so and go on with the other benchmarks
        print(f"-- PostgreSQL log: skipped ({type(exc).__name__}: no server at {POSTGRES})")
        return
    name = f"cuelog_bench_{os.urandom(4).hex()}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            server = Server(
                [
                    cuelog,
                    "serve",
                    "--port",
                    "0",
                    "--log",
                    f"{POSTGRES}/{name}",
                    "--api-key",
                    API_KEY,
                ]
            )
            try:
                print("-- the same chat load on the PostgreSQL log ...", flush=True)
                rps, p50, p99 = trio.run(load, server.url, auth, DURATION)
            finally:
                server.stop()
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(
        f"   PostgreSQL log    {rps:9.0f} req/s   p50 {p50:6.1f} ms   p99 {p99:6.1f} ms"
        f"   ({rps / lmdb_rps:.2f} of the LMDB log)",
        flush=True,
    )
