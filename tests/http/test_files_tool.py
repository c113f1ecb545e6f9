"""The `files` tool can be turned on from the config and works through the API, in its sandbox."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from cuelog.http._config import ConfigError, load_settings
from cuelog.http._server import serve
from tests.http.operator_support import serving


async def test_files_tool_enabled_by_config_reads_and_writes_its_sandbox(tmp_path: Path) -> None:
    """With `files` enabled and `tools.files_root` set, invoke writes and reads a file in the
    sandbox (made at start), and the quota refuses a write past it."""
    sandbox = tmp_path / "sandbox"
    async with serving(
        tmp_path / "data",
        enabled_tools=["clock", "calculator", "files"],
        tools={
            "files_root": sandbox,
            "invoke_approval": "auto",
            "files_max_bytes": 10,
            "files_quota_bytes": 10,
        },
    ) as served:
        assert sandbox.is_dir()

        async def invoke(args: dict[str, str]) -> str:
            response = await served.admin.post(
                "/v1/tools/invoke", json={"name": "files", "args": args}
            )
            assert response.status_code == 200, response.text
            output: str = response.json()["output"]
            return output

        assert "wrote 5 bytes" in await invoke(
            {"op": "write", "path": "a/b.txt", "content": "hello"}
        )
        assert (sandbox / "a" / "b.txt").read_text() == "hello"
        assert await invoke({"op": "read", "path": "a/b.txt"}) == "hello"
        assert "quota" in await invoke({"op": "write", "path": "c.txt", "content": "123456"})
        assert not (sandbox / "c.txt").exists()


async def test_files_enabled_without_a_root_is_a_config_error(tmp_path: Path) -> None:
    """Enabling `files` without `tools.files_root` stops the start with a line naming the key."""
    settings = load_settings(
        None,
        environ={},
        flags={
            "server": {"port": 0, "enabled_tools": ["files"]},
            "log": {"data_dir": tmp_path / "data"},
        },
    )
    with pytest.raises(ConfigError, match=r"tools\.files_root"):
        await serve(settings, shutdown=trio.Event(), handle_signals=False)
