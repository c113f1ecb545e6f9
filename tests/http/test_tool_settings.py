"""Built-in tool settings changed at run time through `/v1/tools/{name}`, and kept across a
restart; the config file's `[tools]` keys set the same things."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.http.operator_support import Served, serving

AUTO = {"invoke_approval": "auto"}


async def invoke(served: Served, name: str, args: dict[str, Any]) -> Any:
    return await served.admin.post("/v1/tools/invoke", json={"name": name, "args": args})


async def test_files_tool_turned_on_at_run_time_and_kept_after_restart(tmp_path: Path) -> None:
    """`files` is off without a sandbox; enabling it without one is refused and writes nothing;
    with `files_root` it works at once, is still on after a restart, and turning it off
    refuses calls."""
    data, sandbox = tmp_path / "data", tmp_path / "sandbox"
    async with serving(data, tools=AUTO) as served:
        view = (await served.admin.get("/v1/tools/files")).json()
        assert view == {"name": "files", "enabled": False, "files_root": None, "allow_hosts": None}
        head = (await served.admin.get("/v1/health")).json()["head_seq"]
        refused = await served.admin.patch("/v1/tools/files", json={"enabled": True})
        assert refused.status_code == 400 and "files_root" in refused.text
        assert (await served.admin.get("/v1/health")).json()["head_seq"] == head

        on = await served.admin.patch(
            "/v1/tools/files", json={"enabled": True, "files_root": str(sandbox)}
        )
        assert on.status_code == 200, on.text
        assert on.json()["enabled"] and on.json()["files_root"] == str(sandbox)
        wrote = await invoke(served, "files", {"op": "write", "path": "n.txt", "content": "hi"})
        assert wrote.status_code == 200, wrote.text
        assert (sandbox / "n.txt").read_text() == "hi"
        listed = (await served.admin.get("/v1/tools")).json()["data"]
        assert {"name": "files", "enabled": True}.items() <= next(
            t for t in listed if t["name"] == "files"
        ).items()

    async with serving(data, tools=AUTO) as served:
        read = await invoke(served, "files", {"op": "read", "path": "n.txt"})
        assert read.json()["output"] == "hi"
        off = await served.admin.patch("/v1/tools/files", json={"enabled": False})
        assert off.json()["enabled"] is False
        refused = await invoke(served, "files", {"op": "read", "path": "n.txt"})
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "tool_disabled"


async def test_http_fetch_allow_list_from_config_and_at_run_time(tmp_path: Path) -> None:
    """`tools.http_fetch_allow_hosts` from the config shows in the settings; a PATCH replaces
    it and turns the tool on, and a host outside the list is refused before any lookup."""
    tools = {**AUTO, "http_fetch_allow_hosts": ["docs.example.org"]}
    async with serving(tmp_path / "data", tools=tools) as served:
        view = (await served.admin.get("/v1/tools/http_fetch")).json()
        assert view["enabled"] is False and view["allow_hosts"] == ["docs.example.org"]
        changed = await served.admin.patch(
            "/v1/tools/http_fetch", json={"enabled": True, "allow_hosts": ["*.cuelog.test"]}
        )
        assert changed.status_code == 200, changed.text
        assert changed.json()["allow_hosts"] == ["*.cuelog.test"]
        answer = await invoke(served, "http_fetch", {"url": "http://docs.example.org/"})
        assert answer.status_code == 200, answer.text
        assert "not in tools.http_fetch_allow_hosts" in answer.json()["output"]


async def test_bad_tool_settings_are_refused(tmp_path: Path) -> None:
    """An unknown tool is 404; a setting another tool owns, a relative sandbox and a malformed
    host pattern are 400 naming the field."""
    async with serving(tmp_path / "data") as served:
        assert (await served.admin.get("/v1/tools/nope")).status_code == 404
        assert (
            await served.admin.patch("/v1/tools/nope", json={"enabled": True})
        ).status_code == 404
        cases = [
            ("clock", {"files_root": "/tmp/x"}, "files_root"),
            ("files", {"files_root": "relative/dir"}, "files_root"),
            ("http_fetch", {"allow_hosts": ["bad host!"]}, "allow_hosts"),
            ("clock", {"bogus": True}, "bogus"),
        ]
        for name, body, word in cases:
            response = await served.admin.patch(f"/v1/tools/{name}", json=body)
            assert response.status_code == 400, response.text
            assert word in response.text
