"""Drive an HTTP server with `wrk`, a C load generator, and read what it and the server cost.

Python load generators on this 2-core machine saturate before a Quart-Trio server does, so
their rate measures the client. `wrk` (Debian package `wrk`) runs one event loop per thread in
C; `run_wrk` reports its CPU share next to its rate, so a reader sees whether it was the limit.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

INSTALL_HINT = "install it with `apt-get install -y wrk` (Debian/Ubuntu) or `brew install wrk`"
_TICKS = os.sysconf("SC_CLK_TCK")
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk_path() -> str | None:
    return shutil.which("wrk")


def ncpu() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) the process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


@dataclass(frozen=True)
class WrkResult:
    rate: float  # requests per second
    p50_ms: float
    p99_ms: float
    errors: int  # non-2xx answers and socket errors
    client_cpu: float  # the generator's CPU seconds per second of wall time (1.0 = one core)
    server_cpu: float  # the server's, the same way

    def line(self, label: str) -> str:
        return (
            f"   {label:<22}{self.rate:9.0f} req/s   p50 {self.p50_ms:6.1f} ms   "
            f"p99 {self.p99_ms:6.1f} ms   server CPU {self.server_cpu:4.2f}   "
            f"wrk CPU {self.client_cpu:4.2f} of {ncpu()} cores"
            + (f"   ({self.errors} errors)" if self.errors else "")
        )


def _lua(body: bytes, headers: dict[str, str]) -> str:
    lines = ['wrk.method = "POST"', f"wrk.body = {_lua_string(body.decode())}"]
    lines += [f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}" for k, v in headers.items()]
    return "\n".join(lines) + "\n"


def _lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _ms(value: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", value)
    if match is None:
        return float("nan")
    return float(match.group(1)) * _UNITS[match.group(2)]


def run_wrk(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    duration: float,
    connections: int = 32,
    threads: int = 2,
    server_pid: int | None = None,
) -> WrkResult:
    """POST `body` to `url` from `connections` keep-alive connections for `duration` seconds."""
    wrk = wrk_path()
    if wrk is None:
        raise RuntimeError(f"wrk is not installed: {INSTALL_HINT}")
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(_lua(body, {"Content-Type": "application/json", **headers}))
        script.flush()
        server_before = process_cpu(server_pid) if server_pid else 0.0
        started = time.perf_counter()
        proc = subprocess.Popen(
            [
                wrk,
                f"-t{threads}",
                f"-c{connections}",
                f"-d{max(round(duration), 1)}s",
                "--latency",
                "-s",
                script.name,
                url,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert proc.stdout is not None
        output = proc.stdout.read()
        _, _, usage = os.wait4(proc.pid, 0)
        proc.returncode = 0
        elapsed = time.perf_counter() - started
        server_after = process_cpu(server_pid) if server_pid else 0.0
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if rate is None:
        raise RuntimeError(f"wrk gave no rate:\n{output}")
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", output, re.MULTILINE))
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", output))
    socket = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if socket:
        errors += sum(int(n) for n in socket.groups())
    return WrkResult(
        rate=float(rate.group(1)),
        p50_ms=_ms(latency.get("50", "")),
        p99_ms=_ms(latency.get("99", "")),
        errors=errors,
        client_cpu=(usage.ru_utime + usage.ru_stime) / elapsed,
        server_cpu=(server_after - server_before) / elapsed,
    )
