"""200 SSE clients that stop reading: the server's memory stays bounded, a fast client's wakes
stay fast, and with `server.stall_timeout` the stalled streams are closed.

Each stalled client is a raw socket with a small receive buffer that sends one
`GET /v1/events` (SSE, from seq 0) and never reads, so its stream blocks as soon as the kernel
buffers are full. Measured numbers are printed (`pytest -s`).
"""

from __future__ import annotations

import socket
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil
import pytest

from tests.support import ServerProcess, start_server

KEY = "slow-consumers-admin-key-01234567"
HEADERS = {"Authorization": f"Bearer {KEY}"}
STALLED = 200
# The writer's messages: each run puts ~5 copies on every stream, so a few dozen runs fill the
# ~4 MB that the kernel buffers per connection (tcp_wmem) and the streams block in the server.
BULK = "y" * 50_000
FILL_RUNS = 30


def start(tmp_path: Path, stall_timeout: float) -> ServerProcess:
    config = tmp_path / "cuelog.toml"
    config.write_text(
        f"[server]\nstall_timeout = {stall_timeout}\nmax_streams_per_key = 0\n"
        "graceful_timeout = 3.0\n"
    )
    return start_server(tmp_path / "data", "--api-key", KEY, "--config", str(config))


@contextmanager
def stalled_clients(url: str, count: int) -> Iterator[list[socket.socket]]:
    """`count` sockets following the firehose as SSE that never read a byte."""
    parts = urlsplit(url)
    address = (parts.hostname or "127.0.0.1", parts.port or 80)
    request = (
        f"GET /v1/events?after=0 HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Authorization: Bearer {KEY}\r\nAccept: text/event-stream\r\n\r\n"
    ).encode()
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(address)
            sock.sendall(request)
            sockets.append(sock)
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


class Writer:
    """A thread that keeps starting runs with large messages until stopped."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.stop = threading.Event()
        self.runs = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        with httpx.Client(base_url=self.url, headers=HEADERS, timeout=30) as http:
            while not self.stop.is_set():
                response = http.post(
                    "/v1/agents/default/wake",
                    json={"message": f"{self.runs} {BULK}", "mode": "async"},
                )
                assert response.status_code == 202, response.text
                self.runs += 1
                time.sleep(0.05)

    def __enter__(self) -> Writer:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


def sse_clients(http: httpx.Client) -> float:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith("cuelog_sse_clients "):
            return float(line.split()[1])
    raise AssertionError("GET /metrics has no cuelog_sse_clients")


def wait_for_clients(http: httpx.Client, expected: float, seconds: float) -> float:
    deadline = time.monotonic() + seconds
    while (count := sse_clients(http)) != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    return count


def wake_p50(http: httpx.Client, rounds: int = 25) -> float:
    """Median seconds of a sync wake by a client that reads its answers."""
    took = []
    for number in range(rounds):
        started = time.perf_counter()
        response = http.post("/v1/agents/default/wake", json={"message": f"fast {number}"})
        took.append(time.perf_counter() - started)
        assert response.status_code == 200, response.text
        assert response.json()["content"] == f"Echo: fast {number}"
    return statistics.median(took)


def rss(server: ServerProcess) -> int:
    return int(psutil.Process(server.proc.pid).memory_info().rss)


@pytest.mark.serial  # compares two wake latencies: other tests' load would skew one
def test_stalled_sse_clients_cost_bounded_memory_and_no_wake_latency(tmp_path: Path) -> None:
    """With 200 SSE clients that never read, the server's RSS grows by well under 150 MB and a
    fast client's median wake latency stays under twice the median without them (plus 5 ms)."""
    server = start(tmp_path, stall_timeout=600)
    try:
        with (
            httpx.Client(base_url=server.url, headers=HEADERS, timeout=30) as http,
            Writer(server.url) as writer,
        ):
            wake_p50(http, 5)  # warm up
            baseline = wake_p50(http)
            rss_before = rss(server)
            with stalled_clients(server.url, STALLED):
                assert wait_for_clients(http, STALLED, 20) == STALLED
                runs_at_start = writer.runs
                deadline = time.monotonic() + 20
                # Enough bulk for every stalled stream to fill its socket buffers and block.
                while writer.runs - runs_at_start < FILL_RUNS and time.monotonic() < deadline:
                    time.sleep(0.1)
                with_stalled = wake_p50(http)
                rss_after = rss(server)
                assert sse_clients(http) == STALLED  # nobody was closed: the timeout is long
                runs = writer.runs - runs_at_start
        grown_mb = (rss_after - rss_before) / 2**20
        print(
            f"\nslow consumers: RSS {rss_before / 2**20:.1f} MB -> {rss_after / 2**20:.1f} MB "
            f"(+{grown_mb:.1f} MB) with {STALLED} stalled streams over {runs} bulk runs; "
            f"wake p50 {baseline * 1000:.1f} ms -> {with_stalled * 1000:.1f} ms"
        )
        assert runs >= FILL_RUNS, "the writer produced too little to fill the stalled streams"
        # A few ms of slack for a noisy machine; streams that cost work per commit add tens.
        assert with_stalled < 2 * baseline + 0.005, (baseline, with_stalled)
        assert grown_mb < 150, grown_mb
    finally:
        assert server.terminate() == 0


def test_stalled_sse_streams_are_closed_after_the_stall_timeout(tmp_path: Path) -> None:
    """With server.stall_timeout = 2, 200 streams whose clients stop reading are all closed (the
    open SSE count drops back to 0, the sockets see EOF or a reset) while runs keep coming."""
    server = start(tmp_path, stall_timeout=2)
    try:
        with (
            httpx.Client(base_url=server.url, headers=HEADERS, timeout=30) as http,
            stalled_clients(server.url, STALLED) as sockets,
        ):
            assert wait_for_clients(http, STALLED, 20) == STALLED
            started = time.monotonic()
            with Writer(server.url):
                remaining = wait_for_clients(http, 0, 12)
            closed_after = time.monotonic() - started
            print(f"\nstall timeout: {STALLED} stalled streams closed within {closed_after:.1f} s")
            assert remaining == 0, f"{remaining} stalled streams are still open"
            for sock in sockets:
                sock.settimeout(5)
                try:
                    while sock.recv(1 << 16):
                        pass  # what the kernel had buffered, then EOF
                except ConnectionResetError:
                    pass  # the kernel's user timeout aborts the connection with a reset
            # The server still serves a fast client normally.
            assert wake_p50(http, 3) < 5
    finally:
        assert server.terminate() == 0
