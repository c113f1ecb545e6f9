"""Helpers to run a real `cuelog serve` in a subprocess and find the port it bound."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

CUELOG = str(Path(sys.executable).parent / "cuelog")


@dataclass
class ServerProcess:
    proc: subprocess.Popen[str]
    url: str
    log_lines: list[str]

    def terminate(self, timeout: float = 15.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=15)


def start_server(
    data_dir: Path,
    *args: str,
    timeout: float = 20.0,
    cuelog: str = CUELOG,
    prefix: Sequence[str] = (),
) -> ServerProcess:
    """Start `cuelog serve --port 0` and wait until it logs the URL it is serving on
    (`prefix` runs before it and execs it, e.g. to lower its limits)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [*prefix, cuelog, "serve", "--port", "0", "--data-dir", str(data_dir), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == "serving":
            # Keep draining stderr: a pipe nobody reads fills up and then blocks the server.
            threading.Thread(target=_drain, args=(proc.stderr, lines), daemon=True).start()
            return ServerProcess(proc, record["urls"][0], lines)
    proc.kill()
    proc.wait()
    raise RuntimeError("cuelog serve did not start:\n" + "".join(lines))


def _drain(stream: IO[str], lines: list[str], keep: int = 2000) -> None:
    for line in stream:
        lines.append(line)
        if len(lines) > keep:
            del lines[: len(lines) - keep]


@contextmanager
def running_server(
    data_dir: Path, *args: str, prefix: Sequence[str] = ()
) -> Iterator[ServerProcess]:
    server = start_server(data_dir, *args, prefix=prefix)
    try:
        yield server
    finally:
        if server.proc.poll() is None:
            server.kill()


def exited(pid: int) -> bool:
    """The process has exited: no such process, or a zombie its parent has not reaped yet."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status
