"""Through a real server: a tool output bigger than the log's event limit, stored by digest."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any, Final

import trio

from cuelog.runtime import open_event_log
from tests.http.operator_support import serving
from tests.support import CUELOG

SIZE: Final = 2 * 1024 * 1024 + 5


def files_tool(sandbox: Path) -> dict[str, Any]:
    return {
        "files_root": sandbox,
        "invoke_approval": "auto",
        "files_max_bytes": 4 * 1024 * 1024,
        "files_quota_bytes": 16 * 1024 * 1024,
    }


async def test_a_2_mib_file_read_completes_survives_a_restart_and_verify_names_a_bad_blob(
    tmp_path: Path,
) -> None:
    """The `files` tool reading a 2 MiB file completes its run with every event small, the run
    answers the whole output before and after a restart, and `cuelog verify` (clean at first)
    names the blob once one of its bytes is changed."""
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    text = "".join(f"{i:07d} the quick brown fox\n" for i in range(SIZE // 28 + 1))[:SIZE]
    (sandbox / "big.txt").write_text(text)
    digest = hashlib.sha256(text.encode()).hexdigest()
    tools = ["clock", "calculator", "files"]
    async with serving(tmp_path / "data", enabled_tools=tools, tools=files_tool(sandbox)) as s:
        response = await s.admin.post(
            "/v1/tools/invoke", json={"name": "files", "args": {"op": "read", "path": "big.txt"}}
        )
        assert response.status_code == 200, response.text[:500]
        body = response.json()
        assert body["status"] == "completed" and body["output"] == text
        run_id = body["run_id"]
    async with serving(tmp_path / "data", enabled_tools=tools, tools=files_tool(sandbox)) as s:
        run = (await s.admin.get(f"/v1/runs/{run_id}")).json()
        assert [m["content"] for m in run["messages"] if m["role"] == "tool"] == [text]
        # The model was sent all of it: echo answers with the sha256 of what it got.
        assert f"sha256 {digest}" in run["messages"][-1]["content"]
    async with open_event_log(tmp_path / "data", readonly=True) as log:
        assert max(len(r.data) for r in log.read_all(0, 10_000)) < 16 * 1024
    blob = tmp_path / "data" / "content" / digest
    assert blob.stat().st_size == len(text.encode())
    clean = await trio.to_thread.run_sync(verify, tmp_path / "data")
    assert clean.returncode == 0 and "1 stored contents" in clean.stdout, clean
    data = bytearray(blob.read_bytes())
    data[-3] ^= 0x20
    blob.write_bytes(bytes(data))
    tampered = await trio.to_thread.run_sync(verify, tmp_path / "data")
    assert tampered.returncode != 0
    assert f"TAMPERED content {digest}" in tampered.stdout, tampered


def verify(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CUELOG, "verify", str(data_dir)], check=False, capture_output=True, text=True
    )


async def test_log_content_threshold_is_what_the_server_stores_by(tmp_path: Path) -> None:
    """With `log.content_threshold` at 4096, a 5,000-byte output is stored by digest (under the
    64 KiB default it would be inline) and the answer is still the whole output."""
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    text = "x" * 4999 + "\n"
    (sandbox / "mid.txt").write_text(text)
    async with serving(
        tmp_path / "data",
        log={"content_threshold": 4096},
        enabled_tools=["files"],
        tools=files_tool(sandbox),
    ) as s:
        response = await s.admin.post(
            "/v1/tools/invoke", json={"name": "files", "args": {"op": "read", "path": "mid.txt"}}
        )
        assert response.json()["output"] == text
    digest = hashlib.sha256(text.encode()).hexdigest()
    assert [p.name for p in (tmp_path / "data" / "content").iterdir()] == [digest]
