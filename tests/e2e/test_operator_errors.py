"""Operator mistakes give one line and exit 2, and a log on read-only media can still be checked."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import trio

from cuelog.runtime import RawEvent, open_event_log
from tests.support import CUELOG

NOBODY = 65534


def cuelog(*args: str, as_reader: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the CLI; `as_reader` runs it as a user without write access to read-only files."""
    command = [CUELOG, *args]
    if as_reader and os.geteuid() == 0:
        # root writes through any mode bits: run as nobody, for whom they hold.
        if shutil.which("setpriv") is None:
            pytest.skip("running as root and setpriv is missing: no way to lose write access")
        command = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def one_line_exit_2(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


async def _write_log(path: Path) -> None:
    async with open_event_log(path) as log:
        for n in range(3):
            await log.append(f"s-{n}", [RawEvent("Noted", msgspec.msgpack.encode({"n": n}))])


@pytest.fixture
def read_only_copy() -> Iterator[Path]:
    """A written log copied into a world-readable directory, with every write bit removed."""
    root = Path(tempfile.mkdtemp(prefix="cuelog-ro-"))
    try:
        trio.run(_write_log, root / "log")
        (root / "log" / "writer.lock").unlink(missing_ok=True)
        for path in [root / "log", *(root / "log").iterdir()]:
            path.chmod(stat.S_IMODE(path.stat().st_mode) & ~0o222 | 0o444)
        (root / "log").chmod(0o555)
        root.chmod(0o755)
        yield root / "log"
    finally:
        (root / "log").chmod(0o755)
        shutil.rmtree(root)


def _snapshot(path: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in path.iterdir()}


def test_verify_and_export_read_a_copy_they_cannot_write(read_only_copy: Path) -> None:
    """`cuelog verify` and `cuelog export` work on a log whose files and directory they may only
    read (LMDB opened without its lock file) and change nothing there."""
    before = _snapshot(read_only_copy)
    verified = cuelog("verify", str(read_only_copy), as_reader=True)
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.startswith("ok: 3 events"), verified.stdout
    exported = cuelog("export", str(read_only_copy), "--jsonl", as_reader=True)
    assert exported.returncode == 0, exported.stderr
    events = [json.loads(line) for line in exported.stdout.splitlines()]
    assert [event["stream"] for event in events] == ["s-0", "s-1", "s-2"]
    assert _snapshot(read_only_copy) == before


def test_serving_a_read_only_data_dir_is_one_line_and_exit_2(read_only_copy: Path) -> None:
    """`cuelog serve` on a data dir it cannot write, or under a parent it cannot write, says so
    in one line and exits 2."""
    for data_dir in (read_only_copy, read_only_copy / "new"):
        result = cuelog("serve", "--port", "0", "--data-dir", str(data_dir), as_reader=True)
        line = one_line_exit_2(result)
        assert line == f"cuelog: cannot write the data dir {data_dir}: Permission denied"


def test_a_port_in_use_is_one_line_exit_2_and_creates_nothing(tmp_path: Path) -> None:
    """`cuelog serve` on a port another process listens on says so in one line, exits 2, and
    has not created the data dir."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        data_dir = tmp_path / "data"
        result = cuelog("serve", "--port", str(port), "--data-dir", str(data_dir))
    line = one_line_exit_2(result)
    assert line == f"cuelog: server.port: cannot bind 127.0.0.1:{port}: Address already in use"
    assert not data_dir.exists()
