"""HTTP throughput and latency of the run pipeline against a bare Quart-Trio endpoint.

Both servers are subprocesses on 127.0.0.1 with the same Hypercorn `Config` (from
`hypercorn_config`); the bare one runs on Hypercorn's own HTTP/1.1 protocol (h11), cuelog on its
connections (httptools), and the bare app is measured on those too, which leaves the run
pipeline's own cost. The load comes from `wrk` (a C load generator; `make bench` installs it),
WRK_CONNECTIONS keep-alive connections for DURATION seconds, and each line prints wrk's CPU share
beside the server's, so it shows when the generator is the limit. The bare endpoint answers the
same JSON body the pipeline does, with no auth, actors or log: non-streaming chat completions and
synchronous wakes are measured against it. Then one client alone: synchronous wake p50/p99 and
the server's CPU per wake, and a streamed chat's time to its first frame. Then SSE: events/s
delivered to 1 and to 32 clients following `GET /v1/events` while runs are being produced.
Then the read models' cost: chat with the projections kept by a projector process, kept inline,
and off, rounds rotating.
Set CUELOG_BENCH_SCALE=0.25 for a quick run.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import trio

from benchmarks._wrk import INSTALL_HINT, WrkResult, process_cpu, run_wrk, wrk_path

SCALE = float(os.environ.get("CUELOG_BENCH_SCALE", "1"))
DURATION = max(8.0 * SCALE, 1.0)
SINGLE_DURATION = max(10.0 * SCALE, 2.0)
SSE_DURATION = max(5.0 * SCALE, 1.0)
WRK_CONNECTIONS = 32
SSE_CLIENTS = 32
IDLE_FOLLOWERS = 2_000 if SCALE >= 1 else 500
SSE_EVENTS = 20_000
SSE_TARGET = 0.80
STALL_CLIENTS = 16
STALL_DURATION = max(60.0 * SCALE, 5.0)
PRODUCERS = 8
API_KEY = "bench-key-0123456789abcdef"
TARGET = 0.60
CHAT_BODY = {"model": "default", "messages": [{"role": "user", "content": "hello benchmark"}]}
WAKE_BODY = {"message": "hello benchmark", "mode": "sync"}
WAKE_PATH = "/v1/agents/default/wake"

# The bare baseline: the same Hypercorn config, routes answering the pipeline's JSON bodies.
BARE_APP = """
import json, os, sys, trio
from hypercorn.trio import serve
from quart import Response, request
from quart_trio import QuartTrio
from cuelog.http.api import chat_completion, load_settings
from cuelog.actors import Usage

BODY = chat_completion("run_0123456789abcdef01234567", "default", 1700000000,
                       "Echo: hello benchmark",
                       Usage(prompt_tokens=2, completion_tokens=3, total_tokens=5))
WAKE = json.dumps({"content": "Echo: hello benchmark", "run_id": "run_0123456789abcdef01234567",
                   "session_key": "sess_0123456789abcdef01234567", "status": "completed",
                   "usage": {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5},
                   "error": None}).encode()
HEADERS = {"X-Run-Id": "run_0123456789abcdef01234567",
           "X-Session-Key": "sess_0123456789abcdef01234567"}
app = QuartTrio("bare")

@app.post("/v1/chat/completions")
async def chat() -> Response:
    await request.get_data()  # the pipeline reads the body too (and keep-alive needs it read)
    return Response(BODY, content_type="application/json", headers=HEADERS)

@app.post("/v1/agents/default/wake")
async def wake() -> Response:
    await request.get_data()
    return Response(WAKE, content_type="application/json", headers=HEADERS)

FRAMES: list[bytes] = []

@app.get("/v1/events")
async def events() -> Response:
    # The frames a cuelog server sent for its log, sent back the same way: one frame a chunk.
    if not FRAMES:
        import os
        raw = open(os.environ["BARE_FRAMES"], "rb").read()
        FRAMES.extend(f + b"\\n\\n" for f in raw.split(b"\\n\\n") if f)
    async def frames():
        for frame in FRAMES:
            yield frame
    response = Response(frames(), content_type="text/event-stream")
    response.timeout = None
    return response

async def main() -> None:
    from cuelog.http.api import hypercorn_config
    settings = load_settings(None, environ={}, flags={"server": {"port": 0}})
    config = hypercorn_config(settings)
    async with trio.open_nursery() as nursery:
        if os.environ.get("BARE_CONNECTIONS") == "cuelog":  # cuelog's own HTTP/1.1 connections
            from cuelog.http._connections import serve_http
            from cuelog.http._server import bind_sockets
            binds = await nursery.start(lambda task_status: serve_http(
                app, config, bind_sockets(settings, config), max_connections=1024,
                max_body=settings.server.max_body_bytes, shutdown_trigger=trio.sleep_forever,
                task_status=task_status))
        else:
            binds = await nursery.start(lambda task_status: serve(
                app, config, task_status=task_status))
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


async def _read_events(url: str, path: str, headers: dict[str, str], count: int) -> bytes:
    """GET an SSE `path` and read until `count` frames with an `id:` have come; return them."""
    parts = urlsplit(url)
    stream = await trio.open_tcp_stream(parts.hostname or "127.0.0.1", parts.port or 80)
    lines = [f"GET {path} HTTP/1.1", f"Host: {parts.netloc}", "Accept: text/event-stream"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
    received = bytearray()
    seen = 0
    tail = b""  # the end of the last read, so a marker split between two reads is counted
    try:
        with trio.move_on_after(120):
            while seen < count:
                data = await stream.receive_some(1 << 16)
                if not data:
                    break
                seen += (tail + data).count(b"\nid: ")
                tail = data[-4:]
                received += data
    finally:
        stream.socket.close()
    return bytes(received)


def _frames_only(raw: bytes) -> bytes:
    """The SSE frames of a chunked HTTP answer, without the HTTP head and chunk sizes."""
    body = raw.partition(b"\r\n\r\n")[2]
    out = bytearray()
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return bytes(out)


async def fan_out(url: str, path: str, headers: dict[str, str], clients: int, count: int) -> float:
    """Events a second delivered to `clients` readers of `path`, each reading `count` events."""
    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(clients):
            nursery.start_soon(_read_events, url, path, headers, count)
    return clients * count / (time.perf_counter() - started)


def sse_against_bare(full: Server, auth: dict[str, str], workdir: str) -> None:
    """SSE fan-out of a busy log (every event it holds) to SSE_CLIENTS followers of
    `GET /v1/events`, against a bare Quart-Trio endpoint sending the same frames."""
    with httpx.Client(base_url=full.url, headers=auth, timeout=30) as client:
        head = client.get("/v1/health").json()["head_seq"]
    count = min(head, SSE_EVENTS)
    raw = trio.run(_read_events, full.url, "/v1/events?after=0", auth, count)
    frames = Path(workdir) / "frames.sse"
    kept = b"\n\n".join(_frames_only(raw).split(b"\n\n")[:count]) + b"\n\n"
    frames.write_bytes(kept)
    bare = Server([sys.executable, "-c", BARE_APP], env={"BARE_FRAMES": str(frames)})
    try:
        base = trio.run(fan_out, bare.url, "/v1/events", {}, SSE_CLIENTS, count)
    finally:
        bare.stop()
    mine = trio.run(fan_out, full.url, "/v1/events?after=0", auth, SSE_CLIENTS, count)
    print(
        f"   {SSE_CLIENTS} followers of {count:,} events: bare {base:9.0f} events/s   "
        f"cuelog {mine:9.0f} events/s",
        flush=True,
    )
    print(_ratio("SSE fan-out", mine, base, SSE_TARGET), flush=True)


def _ratio(label: str, value: float, base: float, target: float) -> str:
    ratio = value / base if base else float("nan")
    verdict = "meets" if ratio >= target else "BELOW"
    return f"   {label}: {ratio:.2f} of the bare endpoint ({verdict} the {target:.2f} target)"


def wrk_pair(
    bare: Server, full: Server, path: str, body: object, auth: dict[str, str], label: str
) -> tuple[WrkResult, WrkResult]:
    """The same wrk load on the bare endpoint and on cuelog."""
    raw = json.dumps(body).encode()
    base = run_wrk(
        bare.url + path,
        raw,
        {},
        duration=DURATION,
        connections=WRK_CONNECTIONS,
        server_pid=bare.proc.pid,
    )
    print(base.line(f"bare {label}"), flush=True)
    mine = run_wrk(
        full.url + path,
        raw,
        auth,
        duration=DURATION,
        connections=WRK_CONNECTIONS,
        server_pid=full.proc.pid,
    )
    print(mine.line(f"cuelog {label}"), flush=True)
    return base, mine


def pipeline_share(chat: WrkResult, wake: WrkResult) -> None:
    """The bare app again, on cuelog's own HTTP/1.1 connections instead of Hypercorn's: what is
    left between it and cuelog is the run pipeline alone."""
    bare = Server([sys.executable, "-c", BARE_APP], env={"BARE_CONNECTIONS": "cuelog"})
    try:
        for label, path, body, mine in (
            ("chat", "/v1/chat/completions", CHAT_BODY, chat),
            ("sync wake", WAKE_PATH, WAKE_BODY, wake),
        ):
            base = run_wrk(
                bare.url + path,
                json.dumps(body).encode(),
                {},
                duration=DURATION,
                connections=WRK_CONNECTIONS,
                server_pid=bare.proc.pid,
            )
            print(base.line(f"bare {label}, cuelog's connections"), flush=True)
            print(
                f"   {label}: {mine.rate / base.rate:.2f} of the bare app on the same connections "
                "(the run pipeline's own cost)",
                flush=True,
            )
    finally:
        bare.stop()


def log_counters(client: httpx.Client) -> tuple[float, float]:
    """The server's group commits (each one fsync) and events appended so far, from /metrics."""
    values: dict[str, float] = {}
    for line in client.get("/metrics").text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("cuelog_log_group_commits_total", "cuelog_log_events_appended_total"):
            values[name] = float(value)
    return values["cuelog_log_group_commits_total"], values["cuelog_log_events_appended_total"]


def fdatasync_ms(directory: str) -> tuple[float, float]:
    """p50 and p99 of one 4 KiB write + fdatasync in `directory`: the floor under a commit."""
    path = os.path.join(directory, "fsync-probe")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    times: list[float] = []
    try:
        for _ in range(100):
            os.write(fd, b"x" * 4096)
            started = time.perf_counter()
            os.fdatasync(fd)
            times.append(time.perf_counter() - started)
    finally:
        os.close(fd)
        os.unlink(path)
    times.sort()
    return _pct(times, 0.5) * 1e3, _pct(times, 0.99) * 1e3


def single_client_wakes(url: str, auth: dict[str, str], pid: int) -> None:
    """One wrk connection, one wake at a time: latency percentiles, the server's CPU per wake
    and the commits (fsyncs) and events each wake costs."""
    with httpx.Client(base_url=url, headers=auth, timeout=30) as client:
        for _ in range(20):  # warm up the server
            client.post(WAKE_PATH, json=WAKE_BODY)
        commits_before, events_before = log_counters(client)
        result = run_wrk(
            url + WAKE_PATH,
            json.dumps(WAKE_BODY).encode(),
            auth,
            duration=SINGLE_DURATION,
            connections=1,
            threads=1,
            server_pid=pid,
        )
        commits, events = log_counters(client)
    wakes = max(result.rate * SINGLE_DURATION, 1.0)
    print(
        f"   one client, sync wake   {result.rate:6.0f} wakes/s   "
        f"p50 {result.p50_ms:5.2f} ms (target <= 2)   p99 {result.p99_ms:5.2f} ms (target <= 10)",
        flush=True,
    )
    print(
        f"   server CPU a wake at one client {result.server_cpu / result.rate * 1e3:4.2f} ms "
        f"(target <= 1)   {(commits - commits_before) / wakes:.1f} fsynced commits and "
        f"{(events - events_before) / wakes:.1f} events a wake (target: 2 commits)",
        flush=True,
    )


async def _make_sessions(url: str, auth: dict[str, str], count: int) -> None:
    """`count` sessions named idle-1 … idle-N, each with one chat."""
    limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
    todo = list(range(1, count + 1))
    async with httpx.AsyncClient(base_url=url, headers=auth, limits=limits, timeout=60) as client:

        async def worker() -> None:
            while todo:
                key = f"idle-{todo.pop()}"
                answer = await client.post(
                    "/v1/chat/completions", json=CHAT_BODY, headers={"X-Session-Key": key}
                )
                assert answer.status_code == 200, answer.text

        async with trio.open_nursery() as nursery:
            for _ in range(16):
                nursery.start_soon(worker)


async def _hold_followers(
    url: str, auth: dict[str, str], count: int, opened: trio.Semaphore
) -> None:
    """Follow `GET /v1/sessions/idle-N/events` for N = 1 … count, and hold them open."""
    parts = urlsplit(url)
    head = "".join(f"{k}: {v}\r\n" for k, v in auth.items())

    async def follow(n: int) -> None:
        stream = await trio.open_tcp_stream(parts.hostname or "127.0.0.1", parts.port or 80)
        try:
            await stream.send_all(
                f"GET /v1/sessions/idle-{n}/events HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                f"Accept: text/event-stream\r\n{head}\r\n".encode()
            )
            first = await stream.receive_some(1 << 16)
            assert b" 200 " in first.partition(b"\r\n")[0], first[:200]
            opened.release()
            while await stream.receive_some(1 << 16):
                pass
        finally:
            stream.socket.close()

    async with trio.open_nursery() as nursery:
        for n in range(1, count + 1):
            nursery.start_soon(follow, n)
            if n % 100 == 0:
                await trio.sleep(0.02)


def idle_followers(url: str, auth: dict[str, str], pid: int) -> None:
    """One client's chat latency (wrk, one connection) without and with IDLE_FOLLOWERS open
    SSE streams following sessions that nothing writes to."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * IDLE_FOLLOWERS)), hard))
    trio.run(_make_sessions, url, auth, IDLE_FOLLOWERS)
    chat = json.dumps(CHAT_BODY).encode()
    seconds = max(SINGLE_DURATION / 2, 2.0)
    one_client = functools.partial(
        run_wrk,
        url + "/v1/chat/completions",
        chat,
        auth,
        duration=seconds,
        connections=1,
        threads=1,
        server_pid=pid,
    )
    alone = one_client()
    print(alone.line("chat, no followers"), flush=True)

    async def measure() -> WrkResult:
        opened = trio.Semaphore(0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_hold_followers, url, auth, IDLE_FOLLOWERS, opened)
            for _ in range(IDLE_FOLLOWERS):
                await opened.acquire()
            await trio.sleep(1)
            result = await trio.to_thread.run_sync(one_client)
            nursery.cancel_scope.cancel()
        return result

    followed = trio.run(measure)
    print(followed.line(f"chat, {IDLE_FOLLOWERS:,} idle"), flush=True)
    print(
        f"   p50 with the followers open: {followed.p50_ms / alone.p50_ms:.2f}x the p50 without",
        flush=True,
    )


def gc_counters(client: httpx.Client) -> dict[str, float]:
    """The server's garbage-collector figures from /metrics, by metric and generation."""
    values: dict[str, float] = {}
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("cuelog_gc_"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def stalls(url: str, auth: dict[str, str], duration: float, pid: int) -> None:
    """/health latency, probed every 5 ms from another thread, while wrk sends asynchronous
    wakes (a new session each) from STALL_CLIENTS connections; and the collector's pauses."""
    probes: list[float] = []
    done = threading.Event()

    def probe() -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            while not done.is_set():
                started = time.perf_counter()
                client.get("/health")
                probes.append(time.perf_counter() - started)
                time.sleep(0.005)

    with httpx.Client(base_url=url, headers=auth, timeout=30) as client:
        before = gc_counters(client)
        live_before = _metric(client, "cuelog_actors_live")
        thread = threading.Thread(target=probe, daemon=True)
        thread.start()
        try:
            result = run_wrk(
                url + WAKE_PATH,
                json.dumps({**WAKE_BODY, "mode": "async"}).encode(),
                auth,
                duration=duration,
                connections=STALL_CLIENTS,
                server_pid=pid,
            )
        finally:
            done.set()
            thread.join()
        after = gc_counters(client)
        live = _metric(client, "cuelog_actors_live")
    probes.sort()
    print(result.line("async wake"), flush=True)
    print(
        f"   /health while loaded: p50 {_pct(probes, 0.5) * 1e3:5.2f} ms   "
        f"p99 {_pct(probes, 0.99) * 1e3:6.2f} ms (target <= 10)   max {probes[-1] * 1e3:6.1f} ms"
        f"   over 100 ms: {sum(1 for p in probes if p > 0.1)} of {len(probes)}",
        flush=True,
    )
    for generation in range(3):
        label = f'{{generation="{generation}"}}'
        count = after.get(f"cuelog_gc_collections_total{label}", 0) - before.get(
            f"cuelog_gc_collections_total{label}", 0
        )
        paused = after.get(f"cuelog_gc_pause_seconds_total{label}", 0) - before.get(
            f"cuelog_gc_pause_seconds_total{label}", 0
        )
        longest = after.get(f"cuelog_gc_max_pause_seconds{label}", 0)
        print(
            f"   gc generation {generation}: {count:6.0f} collections, {paused * 1e3:7.1f} ms "
            f"paused in all, longest {longest * 1e3:6.1f} ms (since start)",
            flush=True,
        )
    print(f"   live actors {live_before:.0f} before, {live:.0f} after", flush=True)


def _metric(client: httpx.Client, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.rpartition(" ")[2])
    return float("nan")


def streamed_ttft(url: str, auth: dict[str, str]) -> None:
    """One client, streamed chats one at a time: time from the request to its first frame."""
    firsts: list[float] = []
    body = {**CHAT_BODY, "stream": True}
    with httpx.Client(base_url=url, headers=auth, timeout=30) as client:
        deadline = time.perf_counter() + SINGLE_DURATION / 2
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            first: float | None = None
            with client.stream("POST", "/v1/chat/completions", json=body) as response:
                for line in response.iter_lines():
                    if first is None and line.startswith("data: "):
                        first = time.perf_counter() - started
            assert first is not None
            firsts.append(first)
    firsts.sort()
    print(
        f"   one client, streamed chat: first frame p50 {_pct(firsts, 0.5) * 1e3:5.2f} ms "
        f"(target <= 2)   p99 {_pct(firsts, 0.99) * 1e3:5.2f} ms   ({len(firsts)} chats)",
        flush=True,
    )


def main() -> None:
    cuelog = str(Path(sys.executable).parent / "cuelog")
    auth = {"Authorization": f"Bearer {API_KEY}"}
    if wrk_path() is None:
        print(f"-- wrk is not installed, so the HTTP figures are skipped: {INSTALL_HINT}")
        return
    print(
        f"-- wrk, {WRK_CONNECTIONS} connections, {DURATION:g} s each: "
        "non-streaming chat and synchronous wake",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="cuelog-bench-http-") as workdir:
        bare = Server([sys.executable, "-c", BARE_APP])
        full = Server(
            [cuelog, "serve", "--port", "0", "--data-dir", f"{workdir}/data", "--api-key", API_KEY],
            # room for the idle followers: an SSE stream each, a connection each
            env={
                "CUELOG_SERVER_MAX_STREAMS_PER_KEY": str(2 * IDLE_FOLLOWERS),
                "CUELOG_SERVER_MAX_CONNECTIONS": str(2 * IDLE_FOLLOWERS),
            },
        )
        try:
            chat_base, chat = wrk_pair(bare, full, "/v1/chat/completions", CHAT_BODY, auth, "chat")
            wake_base, wake = wrk_pair(bare, full, WAKE_PATH, WAKE_BODY, auth, "sync wake")
            print(_ratio("chat", chat.rate, chat_base.rate, TARGET))
            print(_ratio("sync wake", wake.rate, wake_base.rate, TARGET), flush=True)
            bare.stop()
            pipeline_share(chat, wake)
            print("-- one client at a time", flush=True)
            sync50, sync99 = fdatasync_ms(workdir)
            print(
                f"   this disk: fdatasync p50 {sync50:5.2f} ms, p99 {sync99:5.2f} ms "
                "(each fsynced commit costs one)",
                flush=True,
            )
            single_client_wakes(full.url, auth, full.proc.pid)
            streamed_ttft(full.url, auth)
            print(f"-- {IDLE_FOLLOWERS:,} idle session followers: one client's chat", flush=True)
            idle_followers(full.url, auth, full.proc.pid)
            print(
                f"-- stalls: {STALL_CLIENTS} connections of asynchronous wakes for "
                f"{STALL_DURATION:g} s",
                flush=True,
            )
            stalls(full.url, auth, STALL_DURATION, full.proc.pid)
            print(
                f"-- SSE fan-out: {SSE_CLIENTS} followers of GET /v1/events read the log",
                flush=True,
            )
            sse_against_bare(full, auth, workdir)
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
            bare.stop()
            full.stop()
        print(
            "-- the read models' cost: chat with them in a projector process, inline and off, "
            "wrk as above",
            flush=True,
        )
        read_models_cost(cuelog, auth, workdir)
        postgres_chat(cuelog, auth, chat.rate)


READ_MODELS_ROUNDS = 4 if SCALE >= 1 else 2
READ_MODELS_TARGET = 0.05
# How the read models are kept in each variant: CUELOG_LOG_READ_MODELS, CUELOG_LOG_PROJECTOR.
READ_MODELS_VARIANTS = {
    "projector": ("true", "process"),
    "inline": ("true", "inline"),
    "off": ("false", "inline"),
}


def read_models_cost(cuelog: str, auth: dict[str, str], workdir: str) -> None:
    """Chat throughput and CPU a chat with the read models kept by a projector process (what
    "auto" does under load), kept in the server's event loop, and off (`log.read_models =
    false`), in rounds on three servers side by side, the order rotating each round."""
    raw = json.dumps(CHAT_BODY).encode()
    servers = {
        name: Server(
            [
                cuelog,
                "serve",
                "--port",
                "0",
                "--api-key",
                API_KEY,
                "--data-dir",
                f"{workdir}/read-models-{name}",
            ],
            env={"CUELOG_LOG_READ_MODELS": live, "CUELOG_LOG_PROJECTOR": projector},
        )
        for name, (live, projector) in READ_MODELS_VARIANTS.items()
    }
    names = list(servers)
    rates: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}  # ms of server CPU a chat
    spent = {name: [0.0, 0.0] for name in names}  # read models' CPU seconds, the server's
    clients = {name: httpx.Client(base_url=servers[name].url, headers=auth) for name in names}
    try:
        deadline = time.monotonic() + 30
        while _metric(clients["projector"], "cuelog_projector_process") != 1.0:
            if time.monotonic() > deadline:
                raise RuntimeError("the projector process did not take over")
            time.sleep(0.1)
        for round_ in range(READ_MODELS_ROUNDS):
            for name in names[round_ % 3 :] + names[: round_ % 3]:
                server, client = servers[name], clients[name]
                live = name != "off"
                if live:
                    before = _metric(client, "cuelog_projection_cpu_seconds_total")
                cpu_before = process_cpu(server.proc.pid)
                result = run_wrk(
                    server.url + "/v1/chat/completions",
                    raw,
                    auth,
                    duration=max(DURATION / 2, 1.0),
                    connections=WRK_CONNECTIONS,
                    server_pid=server.proc.pid,
                )
                rates[name].append(result.rate)
                cpu[name].append(result.server_cpu / result.rate * 1e3 if result.rate else 0.0)
                if live:
                    spent[name][0] += (
                        _metric(client, "cuelog_projection_cpu_seconds_total") - before
                    )
                spent[name][1] += process_cpu(server.proc.pid) - cpu_before
    finally:
        for client in clients.values():
            client.close()
        for server in servers.values():
            server.stop()
    rate = {name: sum(rates[name]) / len(rates[name]) for name in names}
    ms = {name: sum(cpu[name]) / len(cpu[name]) for name in names}
    off = rate["off"]
    chats = {name: rate[name] * max(DURATION / 2, 1.0) * READ_MODELS_ROUNDS for name in names}
    projector_ms = spent["projector"][0] / chats["projector"] * 1e3 if chats["projector"] else 0
    print(
        f"   chat, read models off       {off:7.0f} req/s, {ms['off']:4.2f} ms server CPU a chat\n"
        f"   chat, read models inline    {rate['inline']:7.0f} req/s, {ms['inline']:4.2f} ms "
        f"server CPU a chat, {spent['inline'][0] / spent['inline'][1]:.1%} of it theirs\n"
        f"   chat, projector process     {rate['projector']:7.0f} req/s, "
        f"{ms['projector']:4.2f} ms server CPU a chat, + {projector_ms:4.2f} ms in the projector",
        flush=True,
    )
    for name in ("inline", "projector"):
        cost = 1 - rate[name] / off if off else float("nan")
        verdict = "meets" if cost <= READ_MODELS_TARGET else "ABOVE"
        print(
            f"   their cost, {name + ':':<11} {cost:6.1%} of chat throughput ({verdict} the "
            f"{READ_MODELS_TARGET:.0%} target)",
            flush=True,
        )
    print(
        f'   ({READ_MODELS_ROUNDS} rounds each, order rotating; "auto", the default, moves '
        "the read models to a projector process once they take 2% of a core)",
        flush=True,
    )


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
                result = run_wrk(
                    server.url + "/v1/chat/completions",
                    json.dumps(CHAT_BODY).encode(),
                    auth,
                    duration=DURATION,
                    connections=WRK_CONNECTIONS,
                    server_pid=server.proc.pid,
                )
            finally:
                server.stop()
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(result.line("PostgreSQL chat") + f"   ({result.rate / lmdb_rps:.2f} of LMDB)")
