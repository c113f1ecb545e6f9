"""One writer per data dir, between real `cuelog serve` processes: deleting `writer.lock` does
not let a second server in, and a server whose log file is taken away exits loudly."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import httpx

from tests.support import CUELOG, running_server

WAKE = {"message": "hi", "mode": "sync"}


def test_deleting_writer_lock_does_not_let_a_second_server_write(tmp_path: Path) -> None:
    """With `writer.lock` deleted, a second server on the same data dir exits 2 with one line
    naming the lock, and the first one goes on writing."""
    data = tmp_path / "data"
    with running_server(data) as first:
        (data / "writer.lock").unlink()
        second = subprocess.run(
            [CUELOG, "serve", "--port", "0", "--data-dir", str(data)],
            check=False,
            capture_output=True,
            text=True,
            timeout=15,
        )
        assert second.returncode == 2, second.stderr
        last = second.stderr.strip().splitlines()[-1]
        assert last.startswith(f"cuelog: data dir {data} is locked by"), second.stderr
        assert "Traceback" not in second.stderr
        response = httpx.post(f"{first.url}/v1/agents/default/wake", json=WAKE, timeout=10)
        assert response.status_code == 200, response.text


def test_a_server_whose_log_file_is_replaced_exits_loudly(tmp_path: Path) -> None:
    """When data.mdb is replaced under a running server, it stops within seconds with a non-zero
    exit and one line saying why, instead of living on without writing."""
    data = tmp_path / "data"
    with running_server(data) as server:
        shutil.copy(data / "data.mdb", tmp_path / "data.mdb.copy")
        os.replace(tmp_path / "data.mdb.copy", data / "data.mdb")
        code = server.proc.wait(timeout=15)
        assert code != 0
        lines = [line for line in server.log_lines if line.startswith("cuelog: ")]
        assert lines and "data.mdb was removed or replaced" in lines[-1], server.log_lines[-5:]
        assert not [line for line in server.log_lines if "Traceback" in line]
