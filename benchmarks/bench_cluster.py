"""Cluster mode on PostgreSQL: synchronous wake throughput with 1, 2 and 3 `cuelog serve`
processes on one database, against one process without cluster mode on the same database (the
baseline, measured in the same run), and the cost of the forward hop (a request for a session
landing on a process that does not own it).

Load comes from `wrk` (one instance per process, the connections split between them), each wake
on a new session so work spreads by where it lands. Every process, wrk and PostgreSQL share this
machine's cores, so the scaling figure says what a second and third process cost or give here,
not on separate machines. Set CUELOG_BENCH_SCALE=0.25 for a quick run; PostgreSQL is
CUELOG_BENCH_POSTGRES (default postgresql://postgres@127.0.0.1:5432).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psycopg

from benchmarks._wrk import INSTALL_HINT, run_wrk, wrk_path
from benchmarks.bench_append import POSTGRES, postgres_database
from benchmarks.bench_http import Server

SCALE = float(os.environ.get("CUELOG_BENCH_SCALE", "1"))
DURATION = max(8.0 * SCALE, 2.0)
CONNECTIONS = 24
HOPS = max(int(300 * SCALE), 50)
API_KEY = "bench-cluster-key-0123456789abcdef"
HEADERS = {"Authorization": f"Bearer {API_KEY}"}
WAKE = json.dumps({"message": "hello benchmark", "mode": "sync"}).encode()
CUELOG = str(Path(sys.executable).parent / "cuelog")
# What each measurement runs: one process per entry, a node name or None (no cluster mode).
SETUPS: list[tuple[str, list[str | None]]] = [
    ("1 process, alone", [None]),
    ("1 process, cluster mode", ["a"]),
    ("2 processes", ["a", "b"]),
    ("3 processes", ["a", "b", "c"]),
]


@contextmanager
def processes(url: str, work: Path, nodes: list[str | None]) -> Iterator[list[Server]]:
    """`cuelog serve` on `url`, one per entry (a node name, or None: no cluster mode)."""
    servers: list[Server] = []
    try:
        for index, node in enumerate(nodes):
            args = [CUELOG, "serve", "--port", "0", "--log", url, "--api-key", API_KEY]
            args += ["--data-dir", str(work / f"p{index}")]
            if node is not None:
                args += ["--node", node]
            servers.append(Server(args))
        yield servers
    finally:
        for server in servers:
            server.stop()


def throughput(servers: list[Server]) -> tuple[float, int]:
    """Wakes per second over all processes, and the errors wrk saw."""
    share = max(CONNECTIONS // len(servers), 2)
    rates: list[float] = [0.0] * len(servers)
    errors = [0] * len(servers)

    def drive(index: int) -> None:
        result = run_wrk(
            servers[index].url + "/v1/agents/default/wake",
            WAKE,
            HEADERS,
            duration=DURATION,
            connections=share,
            threads=1,
        )
        rates[index] = result.rate
        errors[index] = result.errors

    threads = [threading.Thread(target=drive, args=(i,)) for i in range(len(servers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(rates), sum(errors)


def hop_latency(direct: str, forwarded: str) -> tuple[float, float]:
    """Median milliseconds of a sync wake on one session sent to its owner, then to another
    process that forwards it (alternating, so both see the same load)."""
    times: dict[str, list[float]] = {direct: [], forwarded: []}
    with httpx.Client(headers=HEADERS, timeout=30) as http:
        body = {"message": "hop", "session_key": "hop", "mode": "sync"}
        assert http.post(f"{direct}/v1/agents/default/wake", json=body).status_code == 200
        for _ in range(HOPS):
            for base in (direct, forwarded):
                started = time.perf_counter()
                response = http.post(f"{base}/v1/agents/default/wake", json=body)
                times[base].append((time.perf_counter() - started) * 1000)
                assert response.status_code == 200, response.text
    return statistics.median(times[direct]), statistics.median(times[forwarded])


def main() -> None:
    if wrk_path() is None:
        print(f"cluster: skipped, wrk is not installed ({INSTALL_HINT})")
        return
    try:
        with psycopg.connect(f"{POSTGRES}/postgres", connect_timeout=3):
            pass
    except psycopg.Error as exc:
        print(f"cluster: skipped, {POSTGRES} does not answer ({exc})")
        return
    with tempfile.TemporaryDirectory(prefix="cuelog-bench-") as tmp:
        work = Path(tmp)
        print(f"sync wakes/s, {CONNECTIONS} wrk connections split over the processes", flush=True)
        results: dict[str, float] = {}
        for step, (label, nodes) in enumerate(SETUPS):
            with postgres_database() as url, processes(url, work / f"s{step}", nodes) as servers:
                rate, errors = throughput(servers)
            results[label] = rate
            base = results["1 process, alone"]
            print(
                f"  {label:<26}{rate:8.0f} wakes/s  {rate / base:5.2f}x alone"
                + (f"  ({errors} errors)" if errors else ""),
                flush=True,
            )
        with postgres_database() as url, processes(url, work / "hop", ["a", "b"]) as servers:
            direct, forwarded = hop_latency(servers[0].url, servers[1].url)
        print(
            f"forward hop, one client, sync wake on one session ({HOPS} each):\n"
            f"  to the owner  p50 {direct:6.2f} ms\n"
            f"  forwarded     p50 {forwarded:6.2f} ms  {forwarded / direct:5.2f}x, "
            f"+{forwarded - direct:.2f} ms",
            flush=True,
        )


if __name__ == "__main__":
    main()
