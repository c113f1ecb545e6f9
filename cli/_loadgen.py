"""`cuelog bench`: an async load generator for a cuelog server, and the report it prints.

Workers are trio tasks sharing one lean keep-alive client (`cuelog.cli._lean_http`: h11 over
trio streams) with a connection per request in flight, so no request waits for a connection and
the client reaches the rate `wrk` gets from the same server. Each worker sends its workload's
requests back to back: first for the warmup (not counted), then for the measured window, which
ends at the duration or after the requested count; requests in flight then finish and are
counted. The server's own durable work is read from its log head (`GET /v1/health` with the key)
at the start and the end of the window, and the generator measures its own CPU so a saturated
client shows.
"""

from __future__ import annotations

import math
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import httpx
import msgspec
import trio

from cuelog.actors import ASSISTANT_DELTA, RUN_CANCELLED, RUN_COMPLETED, RUN_FAILED
from cuelog.cli._lean_http import ConnectFailed, LeanClient, TransportError

WORKLOADS: Final = ("chat", "chat-stream", "wake-sync", "wake-async", "sessions", "mixed")
# `mixed` cycles through this blend: mostly chat, as a chat front end would see it.
MIXED_BLEND: Final = ("chat", "chat-stream", "chat", "wake-sync", "wake-async", "sessions")
# One request may take this long before it counts as a `timeout` error; it also bounds how long
# the end of a run waits for requests in flight.
REQUEST_DEADLINE: Final = 60.0
SERVER_START_DEADLINE: Final = 30.0
CLIENT_LIMIT_CPU: Final = 0.8

_JSON = {"Content-Type": "application/json"}
_encode = msgspec.json.Encoder().encode


class BenchError(Exception):
    """The benchmark cannot run: the server is unreachable, refuses the key, or lacks the agent."""


# -- what a run is ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One server to load: its root URL, key, and the model (agent) the requests name."""

    url: str
    key: str | None
    model: str
    api_base: str  # where `/chat/completions` lives: `<url>/v1` for cuelog
    cuelog: bool = True  # a cuelog server: wake routes and the log head are available

    @classmethod
    def for_cuelog(cls, url: str, key: str | None, agent: str) -> Target:
        url = url.rstrip("/")
        return cls(url=url, key=key, model=agent, api_base=f"{url}/v1")

    @classmethod
    def for_openai(cls, url: str, key: str | None, model: str) -> Target:
        """Any OpenAI-compatible endpoint; `url` may be the root or the `/v1` base."""
        base = url.rstrip("/")
        if not base.endswith("/v1"):
            base += "/v1"
        return cls(url=base.removesuffix("/v1"), key=key, model=model, api_base=base, cuelog=False)


@dataclass(frozen=True)
class LoadPlan:
    """How hard and how long: workers, window, warmup, and the session keys to spread over."""

    workload: str
    concurrency: int
    duration: float | None  # seconds of measured window; None: until `requests` are sent
    requests: int | None  # how many measured requests; None: as many as fit the duration
    warmup: float
    sessions: int | None  # distinct session keys for `sessions`; None: a new key every request


# -- what one run measured -------------------------------------------------------------------------


@dataclass
class KindTally:
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def requests(self) -> int:
        return len(self.latencies) + sum(self.errors.values())


@dataclass
class Tally:
    """Every measured request, by workload kind."""

    kinds: dict[str, KindTally] = field(default_factory=dict)
    started: int = 0  # measured requests sent so far (for `--requests` and the progress bar)
    finished: int = 0
    failed: int = 0

    def add(self, kind: str, latency: float, ttft: float | None, error: str | None) -> None:
        tally = self.kinds.setdefault(kind, KindTally())
        self.finished += 1
        if error is None:
            tally.latencies.append(latency)
            if ttft is not None:
                tally.ttfts.append(ttft)
        else:
            self.failed += 1
            tally.errors[error] += 1


class Spread(msgspec.Struct, frozen=True):
    """A latency distribution in milliseconds."""

    p50: float
    p90: float
    p99: float
    max: float
    mean: float

    @classmethod
    def of(cls, seconds: list[float]) -> Spread | None:
        if not seconds:
            return None
        ordered = sorted(seconds)

        def rank(q: float) -> float:
            # Nearest rank: the smallest sample with at least q of the samples at or below it.
            return ordered[max(0, math.ceil(q * len(ordered)) - 1)] * 1000

        return cls(
            p50=round(rank(0.50), 3),
            p90=round(rank(0.90), 3),
            p99=round(rank(0.99), 3),
            max=round(ordered[-1] * 1000, 3),
            mean=round(sum(ordered) / len(ordered) * 1000, 3),
        )


class KindReport(msgspec.Struct, frozen=True):
    requests: int
    errors: int
    latency_ms: Spread | None
    ttft_ms: Spread | None


class EventsReport(msgspec.Struct, frozen=True):
    """Events the server appended to its log during the window (its durable work)."""

    head_before: int
    head_after: int
    appended: int
    per_second: float
    per_request: float


class CpuReport(msgspec.Struct, frozen=True):
    """CPU seconds and the fraction of one core used during the window."""

    seconds: float
    fraction: float


class RunReport(msgspec.Struct, frozen=True):
    """One workload against one server."""

    url: str
    model: str
    workload: str
    concurrency: int
    warmup_s: float
    elapsed_s: float
    requests: int
    ok: int
    errors: dict[str, int]
    error_rate: float
    requests_per_s: float
    latency_ms: Spread | None
    ttft_ms: Spread | None
    events: EventsReport | None
    client_cpu: CpuReport
    server_cpu: CpuReport | None
    kinds: dict[str, KindReport]

    @property
    def client_bound(self) -> bool:
        return self.client_cpu.fraction >= CLIENT_LIMIT_CPU


# -- the workloads ---------------------------------------------------------------------------------


class _Message(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    message: _Message


class _Completion(msgspec.Struct):
    choices: list[_Choice]


class _Delta(msgspec.Struct):
    content: str | None = None


class _ChunkChoice(msgspec.Struct):
    delta: _Delta = msgspec.field(default_factory=_Delta)


class _Chunk(msgspec.Struct):
    choices: list[_ChunkChoice] = msgspec.field(default_factory=list)
    error: Any = None


class _WakeSync(msgspec.Struct):
    status: str


class _WakeAsync(msgspec.Struct):
    run_id: str
    events_url: str


_completion = msgspec.json.Decoder(_Completion)
_chunk = msgspec.json.Decoder(_Chunk)
_wake_sync = msgspec.json.Decoder(_WakeSync)
_wake_async = msgspec.json.Decoder(_WakeAsync)

# The SSE event names that end a run, and the error each one counts as.
_TERMINAL = {RUN_COMPLETED: None, RUN_FAILED: "run_failed", RUN_CANCELLED: "run_cancelled"}


@dataclass(frozen=True)
class Outcome:
    """None for a good answer, else the error label; and when the first token arrived."""

    error: str | None
    first_token_at: float | None = None


@dataclass
class Context:
    client: LeanClient
    target: Target
    session_tag: str
    sessions: int | None
    counter: int = 0

    def next_number(self) -> int:
        self.counter += 1
        return self.counter


Workload = Callable[[Context, int], Awaitable[Outcome]]


def _chat_body(ctx: Context, n: int, *, stream: bool = False) -> bytes:
    body: dict[str, Any] = {
        "model": ctx.target.model,
        "messages": [{"role": "user", "content": f"bench message {n}"}],
    }
    if stream:
        body["stream"] = True
    return _encode(body)


async def _chat(ctx: Context, n: int, headers: dict[str, str] | None = None) -> Outcome:
    response = await ctx.client.post(
        f"{ctx.target.api_base}/chat/completions",
        content=_chat_body(ctx, n),
        headers={**_JSON, **(headers or {})},
    )
    if response.status_code != 200:
        return Outcome(str(response.status_code))
    completion = _completion.decode(response.content)
    if not completion.choices or completion.choices[0].message.content is None:
        return Outcome("bad_body")
    return Outcome(None)


async def chat(ctx: Context, n: int) -> Outcome:
    """A non-streaming chat completion, each in a new session."""
    return await _chat(ctx, n)


async def sessions(ctx: Context, n: int) -> Outcome:
    """A chat completion in a session the client names, spread over `--sessions` keys."""
    slot = n if ctx.sessions is None else n % ctx.sessions
    return await _chat(ctx, n, {"X-Session-Key": f"bench-{ctx.session_tag}-{slot}"})


async def chat_stream(ctx: Context, n: int) -> Outcome:
    """A streaming chat completion read to `data: [DONE]`; the first content chunk is TTFT."""
    first: float | None = None
    async with ctx.client.stream(
        "POST",
        f"{ctx.target.api_base}/chat/completions",
        content=_chat_body(ctx, n, stream=True),
        headers=_JSON,
    ) as response:
        if response.status_code != 200:
            await response.aread()
            return Outcome(str(response.status_code))
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                return Outcome(None, first)
            chunk = _chunk.decode(payload)
            if chunk.error is not None:
                return Outcome("run_failed", first)
            if first is None and any(c.delta.content for c in chunk.choices):
                first = trio.current_time()
    return Outcome("incomplete", first)


async def wake_sync(ctx: Context, n: int) -> Outcome:
    """`POST /v1/agents/{id}/wake` in sync mode: the answer comes back in the response."""
    response = await ctx.client.post(
        f"{ctx.target.api_base}/agents/{ctx.target.model}/wake",
        content=_encode({"message": f"bench wake {n}", "mode": "sync"}),
        headers=_JSON,
    )
    if response.status_code != 200:
        return Outcome(str(response.status_code))
    status = _wake_sync.decode(response.content).status
    return Outcome(None if status == "completed" else f"run_{status}")


async def wake_async(ctx: Context, n: int) -> Outcome:
    """Wake in async mode (202), then follow the run's events until its terminal event."""
    response = await ctx.client.post(
        f"{ctx.target.api_base}/agents/{ctx.target.model}/wake",
        content=_encode({"message": f"bench wake {n}", "mode": "async"}),
        headers=_JSON,
    )
    if response.status_code != 202:
        return Outcome(str(response.status_code))
    accepted = _wake_async.decode(response.content)
    first: float | None = None
    async with ctx.client.stream("GET", f"{ctx.target.url}{accepted.events_url}") as events:
        if events.status_code != 200:
            await events.aread()
            return Outcome(f"events_{events.status_code}")
        async for line in events.aiter_lines():
            if not line.startswith("event:"):
                continue
            kind = line[6:].strip()
            if kind == ASSISTANT_DELTA and first is None:
                first = trio.current_time()
            if kind in _TERMINAL:
                return Outcome(_TERMINAL[kind], first)
    return Outcome("incomplete", first)


WORKLOAD_FUNCTIONS: Final[dict[str, Workload]] = {
    "chat": chat,
    "chat-stream": chat_stream,
    "wake-sync": wake_sync,
    "wake-async": wake_async,
    "sessions": sessions,
}


async def _attempt(work: Workload, ctx: Context, n: int) -> Outcome:
    """One request with its deadline; transport and decoding failures become error labels."""
    with trio.move_on_after(REQUEST_DEADLINE):
        try:
            return await work(ctx, n)
        except ConnectFailed:
            return Outcome("connect")
        except TransportError:
            return Outcome("transport")
        except httpx.ConnectError:
            return Outcome("connect")
        except httpx.TimeoutException:
            return Outcome("timeout")
        except httpx.TransportError:
            return Outcome("transport")
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
            return Outcome("bad_body")
    return Outcome("timeout")


# -- the load generator ----------------------------------------------------------------------------


def _client(target: Target, connections: int) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {target.key}"} if target.key else {}
    return httpx.AsyncClient(
        headers=headers,
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        timeout=None,  # each request runs under a trio cancel scope instead
        trust_env=False,  # only the given URL: no proxies from the environment
    )


async def preflight(target: Target) -> None:
    """Fail early and clearly: reachable, the key accepted, and (on cuelog) the agent listed.

    Other endpoints may serve models they do not list (aliases, routers), or not list models at
    all: for them only the connection and the key are checked.
    """
    async with _client(target, 1) as client:
        try:
            with trio.fail_after(15):
                response = await client.get(f"{target.api_base}/models")
        except (httpx.TransportError, trio.TooSlowError) as exc:
            reason = str(exc) or type(exc).__name__
            raise BenchError(f"cannot reach {target.url}: {reason}") from None
        if response.status_code in (401, 403):
            raise BenchError(f"{target.url} refused the key (HTTP {response.status_code})")
        if not target.cuelog:
            return
        if response.status_code != 200:
            raise BenchError(f"GET {target.api_base}/models answered HTTP {response.status_code}")
        try:
            models = [m["id"] for m in msgspec.json.decode(response.content)["data"]]
        except (msgspec.DecodeError, KeyError, TypeError):
            raise BenchError(f"GET {target.api_base}/models did not list models") from None
        if target.model not in models:
            listed = ", ".join(map(str, models[:10])) or "none"
            raise BenchError(f"{target.url} has no model {target.model!r} (it lists: {listed})")


async def read_head(client: httpx.AsyncClient, target: Target) -> int | None:
    """The server's log head seq, or None when it does not show it (no key, not cuelog)."""
    if not target.cuelog:
        return None
    try:
        with trio.fail_after(15):
            response = await client.get(f"{target.url}/v1/health")
        head = msgspec.json.decode(response.content).get("head_seq")
    except (httpx.TransportError, trio.TooSlowError, msgspec.DecodeError, AttributeError):
        return None
    return head if isinstance(head, int) else None


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of another process, from /proc (None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class LoadState:
    """How far a run is, for the progress bar."""

    phase: Literal["warmup", "measuring", "draining", "done"] = "warmup"
    measure_started: float | None = None
    tally: Tally = field(default_factory=Tally)


async def run_load(
    target: Target,
    plan: LoadPlan,
    *,
    server_pid: int | None = None,
    progress: LoadState | None = None,
) -> RunReport:
    """Load `target` with `plan` and report what was measured."""
    state = progress or LoadState()
    tally = state.tally
    blend = MIXED_BLEND if plan.workload == "mixed" else (plan.workload,)
    works = [(kind, WORKLOAD_FUNCTIONS[kind]) for kind in blend]
    now = trio.current_time()
    measure_at = now + plan.warmup
    deadline = None if plan.duration is None else measure_at + plan.duration
    marks: dict[str, Any] = {}

    headers = {"Authorization": f"Bearer {target.key}"} if target.key else {}
    client = LeanClient(target.url, headers)
    async with _client(target, 1) as control:
        ctx = Context(client, target, secrets.token_hex(4), plan.sessions)

        async def start_window() -> None:
            marks["cpu"], marks["wall"] = time.process_time(), trio.current_time()
            marks["server_cpu"] = None if server_pid is None else process_cpu_seconds(server_pid)
            state.phase, state.measure_started = "measuring", marks["wall"]
            marks["head"] = await read_head(control, target)

        async def start_window_after_warmup() -> None:
            await trio.sleep_until(measure_at)
            await start_window()

        async def worker() -> None:
            while True:
                started = trio.current_time()
                if deadline is not None and started >= deadline:
                    return
                measured = "wall" in marks
                if measured:
                    if plan.requests is not None and tally.started >= plan.requests:
                        return
                    tally.started += 1
                n = ctx.next_number()
                kind, work = works[n % len(works)]
                outcome = await _attempt(work, ctx, n)
                if measured:
                    first = outcome.first_token_at
                    tally.add(
                        kind,
                        trio.current_time() - started,
                        None if first is None else first - started,
                        outcome.error,
                    )

        if plan.warmup <= 0:
            await start_window()
        async with trio.open_nursery() as nursery:
            if plan.warmup > 0:
                nursery.start_soon(start_window_after_warmup)
            for _ in range(plan.concurrency):
                nursery.start_soon(worker)
            if deadline is not None:
                await trio.sleep_until(deadline)
                state.phase = "draining"
        ended = trio.current_time()
        cpu = time.process_time() - marks["cpu"]
        await client.aclose()
        server_cpu_end = None if server_pid is None else process_cpu_seconds(server_pid)
        head_after = await read_head(control, target)
    state.phase = "done"
    return _report(target, plan, tally, marks, ended, cpu, server_cpu_end, head_after)


def _report(
    target: Target,
    plan: LoadPlan,
    tally: Tally,
    marks: dict[str, Any],
    ended: float,
    cpu: float,
    server_cpu_end: float | None,
    head_after: int | None,
) -> RunReport:
    elapsed = max(ended - marks["wall"], 1e-9)
    requests = tally.finished
    errors: Counter[str] = Counter()
    latencies: list[float] = []
    ttfts: list[float] = []
    kinds: dict[str, KindReport] = {}
    for kind, kt in sorted(tally.kinds.items()):
        errors.update(kt.errors)
        latencies += kt.latencies
        ttfts += kt.ttfts
        kinds[kind] = KindReport(
            requests=kt.requests,
            errors=sum(kt.errors.values()),
            latency_ms=Spread.of(kt.latencies),
            ttft_ms=Spread.of(kt.ttfts),
        )
    events = None
    head_before = marks.get("head")
    if head_before is not None and head_after is not None:
        appended = head_after - head_before
        events = EventsReport(
            head_before=head_before,
            head_after=head_after,
            appended=appended,
            per_second=round(appended / elapsed, 1),
            per_request=round(appended / requests, 2) if requests else 0.0,
        )
    server_cpu = None
    if marks.get("server_cpu") is not None and server_cpu_end is not None:
        used = server_cpu_end - marks["server_cpu"]
        server_cpu = CpuReport(seconds=round(used, 3), fraction=round(used / elapsed, 3))
    failed = sum(errors.values())
    return RunReport(
        url=target.url,
        model=target.model,
        workload=plan.workload,
        concurrency=plan.concurrency,
        warmup_s=plan.warmup,
        elapsed_s=round(elapsed, 3),
        requests=requests,
        ok=requests - failed,
        errors=dict(errors.most_common()),
        error_rate=round(failed / requests, 4) if requests else 1.0,
        requests_per_s=round((requests - failed) / elapsed, 1),
        latency_ms=Spread.of(latencies),
        ttft_ms=Spread.of(ttfts),
        events=events,
        client_cpu=CpuReport(seconds=round(cpu, 3), fraction=round(cpu / elapsed, 3)),
        server_cpu=server_cpu,
        kinds=kinds,
    )


# -- a throwaway local server ----------------------------------------------------------------------


@dataclass(frozen=True)
class LocalServer:
    url: str
    key: str
    pid: int


@contextmanager
def local_server() -> Iterator[LocalServer]:
    """`cuelog serve` on a free loopback port, a temp data dir, the echo model and a random key.

    Settings come only from here: no ./cuelog.toml and no CUELOG_* variables leak in.
    """
    with tempfile.TemporaryDirectory(prefix="cuelog-bench-") as tmp:
        root = Path(tmp)
        config = root / "cuelog.toml"
        config.write_text("")
        key = secrets.token_urlsafe(24)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CUELOG_")}
        env["CUELOG_SERVER_API_KEY"] = key  # through the environment: not visible in `ps`
        env["PYTHONUNBUFFERED"] = "1"
        log_path = root / "server.log"
        with log_path.open("w") as log_file:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "from cuelog.cli import main; main(prog_name='cuelog')",
                    "serve",
                    "--config",
                    str(config),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--data-dir",
                    str(root / "data"),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log_file,
                env=env,
            )
        try:
            url = _wait_until_serving(proc, log_path)
            yield LocalServer(url=url, key=key, pid=proc.pid)
        finally:
            _stop(proc)


def _wait_until_serving(proc: subprocess.Popen[bytes], log_path: Path) -> str:
    deadline = time.monotonic() + SERVER_START_DEADLINE
    while time.monotonic() < deadline:
        for line in log_path.read_text(errors="replace").splitlines():
            try:
                record = msgspec.json.decode(line)
            except msgspec.DecodeError:
                continue
            if isinstance(record, dict) and record.get("event") == "serving":
                return str(record["urls"][0])
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    tail = log_path.read_text(errors="replace")[-2000:]
    raise BenchError(f"the local cuelog server did not start:\n{tail}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
