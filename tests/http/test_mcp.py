"""MCP servers through the API, against a real MCP server (tests/fixtures/mcp_server.py) run
over stdio and over streamable HTTP on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import trio

from tests.http.live import Live, live_server, on_every_backend

SERVER = str(Path(__file__).resolve().parent.parent / "fixtures" / "mcp_server.py")
SECRET = "s3cret-token-value-0123"
CUELOG = shutil.which("cuelog", path=str(Path(sys.executable).parent)) or "cuelog"


def stdio_server(server_id: str = "t", **extra: Any) -> dict[str, Any]:
    return {
        "name": server_id,
        "command": sys.executable,
        "args": [SERVER, "stdio"],
        "env": {"CUELOG_TEST_SECRET": SECRET},
        **extra,
    }


async def until(live: Live, server_id: str, check: Callable[[dict[str, Any]], bool]) -> Any:
    """The server's answer once `check` holds (within 30 s)."""
    with trio.fail_after(30):
        while True:
            response = await live.client.get(f"/v1/mcp/servers/{server_id}")
            assert response.status_code == 200, response.text
            body = response.json()
            if check(body):
                return body
            await trio.sleep(0.05)


async def eventually(probe: Callable[[], Awaitable[Any]]) -> Any:
    """The first truthy value `probe` returns (within 30 s)."""
    with trio.fail_after(30):
        while True:
            value = await probe()
            if value:
                return value
            await trio.sleep(0.05)


async def finished(live: Live, run_id: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        run: dict[str, Any] = (await live.client.get(f"/v1/runs/{run_id}")).json()
        return run if run["status"] in {"completed", "failed", "cancelled"} else None

    result: dict[str, Any] = await eventually(probe)
    return result


def connected(body: dict[str, Any]) -> bool:
    return bool(body["status"] == "connected")


async def add_agent(live: Live, agent_id: str, tools: list[str], **extra: Any) -> None:
    response = await live.client.post("/v1/agents", json={"id": agent_id, "tools": tools, **extra})
    assert response.status_code == 201, response.text


async def wake(live: Live, agent_id: str, message: str) -> dict[str, Any]:
    response = await live.client.post(f"/v1/agents/{agent_id}/wake", json={"message": message})
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def tool_events(live: Live, run_id: str) -> list[dict[str, Any]]:
    params: dict[str, str | int] = {"prefix": f"run:{run_id}", "limit": 1000}
    page = (await live.client.get("/v1/events", params=params)).json()
    return [e for e in page["data"] if e["type"] in {"ToolCallCompleted", "ToolCallFailed"}]


@on_every_backend
async def test_stdio_server_tools_discovered_granted_called_and_secrets_masked(
    tmp_path: Path, backend: str
) -> None:
    """A stdio server added through the API connects, its tools are listed as `t.<tool>`, an
    agent granted `t.*` calls one, an agent granted only `t.echo` is not offered `t.add`, and the
    env secret appears in no answer while the server received it."""
    async with live_server(tmp_path / "data", backend=backend) as live:
        created = await live.client.post("/v1/mcp/servers", json=stdio_server())
        assert created.status_code == 201, created.text
        assert created.json()["env"] == {"CUELOG_TEST_SECRET": "********"}
        body = await until(live, "t", connected)
        assert {"t.echo", "t.add", "t.slow", "t.grow"} <= set(body["tools"])
        assert body["tool_count"] == len(body["tools"])

        await add_agent(live, "all", ["t.*"])
        # A grant must name a registered server: `nosuch.*` is refused and writes nothing.
        refused = await live.client.post("/v1/agents", json={"id": "x", "tools": ["nosuch.*"]})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "tools.0"
        answer = await wake(live, "all", '/tool t.add {"a": 2, "b": 40}')
        assert answer["status"] == "completed" and "42" in answer["content"]
        [event] = await tool_events(live, answer["run_id"])
        assert event["type"] == "ToolCallCompleted" and event["data"]["name"] == "t.add"

        # The env reached the server (its tool reads it); no answer about the server shows it.
        answer = await wake(live, "all", '/tool t.secret_env {"name": "CUELOG_TEST_SECRET"}')
        assert SECRET in answer["content"]
        for path in ("/v1/mcp/servers", "/v1/mcp/servers/t"):
            response = await live.client.get(path)
            assert response.status_code == 200 and SECRET not in response.text
        # The log holds the env value sealed only (the tool's answer above aside).
        params: dict[str, str | int] = {"prefix": "mcp", "limit": 1000}
        config_events = (await live.client.get("/v1/events", params=params)).json()["data"]
        assert [e["type"] for e in config_events] == ["McpServerSaved"]
        assert config_events[0]["data"]["config"]["env"] == {"CUELOG_TEST_SECRET": ""}
        assert config_events[0]["data"]["sealed"] and SECRET not in str(config_events)

        await add_agent(live, "narrow", ["t.echo"])
        answer = await wake(live, "narrow", '/tool t.add {"a": 1, "b": 1}')
        assert answer["status"] == "completed"
        assert "t.add" in answer["content"] and "t.echo" in answer["content"]  # not offered
        assert await tool_events(live, answer["run_id"]) == []

        stderr = await live.client.get("/v1/mcp/servers/t/stderr")
        assert stderr.status_code == 200
        assert "cuelog-test mcp server started" in stderr.json()["stderr"]

        tools = (await live.client.get("/v1/tools")).json()["data"]
        assert "t.echo" in {tool["name"] for tool in tools}


async def test_tools_list_changed_adds_the_new_tool(tmp_path: Path) -> None:
    """A server that adds a tool and sends `tools/list_changed` gets the tool listed and
    callable without a restart."""
    async with live_server(tmp_path / "data") as live:
        assert (await live.client.post("/v1/mcp/servers", json=stdio_server())).status_code == 201
        await until(live, "t", connected)
        await add_agent(live, "all", ["t.*"])
        assert "grown" in (await wake(live, "all", "/tool t.grow {}"))["content"]
        await until(live, "t", lambda body: "t.extra" in body["tools"])
        assert "extra" in (await wake(live, "all", "/tool t.extra {}"))["content"]


async def test_mcp_call_waits_for_approval_bound_to_its_arguments(tmp_path: Path) -> None:
    """An agent whose policy asks for `t.echo` waits; a decision with another args digest is
    refused, the right one lets the call reach the server."""
    async with live_server(tmp_path / "data") as live:
        assert (await live.client.post("/v1/mcp/servers", json=stdio_server())).status_code == 201
        await until(live, "t", connected)
        await add_agent(live, "careful", ["t.*"], tool_approval={"t.echo": "ask"})
        response = await live.client.post(
            "/v1/agents/careful/wake",
            json={"message": '/tool t.echo {"text": "approved"}', "mode": "async"},
        )
        assert response.status_code == 202, response.text
        run_id = response.json()["run_id"]

        async def pending_approvals() -> list[dict[str, Any]]:
            data: list[dict[str, Any]] = (await live.client.get("/v1/approvals")).json()["data"]
            return data

        pending = await eventually(pending_approvals)
        [approval] = pending
        assert approval["tool"] == "t.echo" and approval["run_id"] == run_id
        wrong = await live.client.post(
            f"/v1/approvals/{approval['id']}",
            json={"decision": "approve", "args_digest": "0" * 64},
        )
        assert wrong.status_code == 400 and "args_digest" in wrong.text
        right = await live.client.post(
            f"/v1/approvals/{approval['id']}",
            json={"decision": "approve", "args_digest": approval["args_digest"]},
        )
        assert right.status_code == 200, right.text
        run = await finished(live, run_id)
        assert run["status"] == "completed" and "echo: approved" in run["content"]


async def test_server_killed_mid_call_fails_the_call_and_is_restarted(tmp_path: Path) -> None:
    """SIGKILL of the server process during a call fails that call cleanly (the run goes on),
    the server is started again with a new process, and the next call works."""
    async with live_server(tmp_path / "data") as live:
        assert (await live.client.post("/v1/mcp/servers", json=stdio_server())).status_code == 201
        body = await until(live, "t", connected)
        pid = body["pid"]
        assert isinstance(pid, int)
        await add_agent(live, "all", ["t.*"])
        response = await live.client.post(
            "/v1/agents/all/wake",
            json={"message": '/tool t.slow {"seconds": 60}', "mode": "async"},
        )
        run_id = response.json()["run_id"]

        async def requested() -> bool:
            params: dict[str, str | int] = {"prefix": f"run:{run_id}", "limit": 1000}
            page = (await live.client.get("/v1/events", params=params)).json()
            return any(e["type"] == "ToolCallRequested" for e in page["data"])

        await eventually(requested)
        await trio.sleep(0.5)  # the request is on the wire
        os.kill(pid, signal.SIGKILL)
        assert (await finished(live, run_id))["status"] == "completed"
        [failed] = await tool_events(live, run_id)
        assert failed["type"] == "ToolCallFailed"
        assert "t.slow" in failed["data"]["error"]
        body = await until(live, "t", lambda b: connected(b) and b["pid"] != pid)
        assert body["restarts"] == 1
        assert "echo: back" in (await wake(live, "all", '/tool t.echo {"text": "back"}'))["content"]


async def test_hung_server_is_restarted_and_its_calls_fail_meanwhile(tmp_path: Path) -> None:
    """A server that stops answering (SIGSTOP) misses its ping and is replaced by a new
    process; a call made while it hangs fails (dropped with the connection, or at the server's
    timeout) instead of hanging."""
    quick = {"mcp": {"ping_interval": 0.5, "ping_timeout": 1.0}}
    async with live_server(tmp_path / "data", sections=quick) as live:
        created = await live.client.post("/v1/mcp/servers", json=stdio_server(timeout=2))
        assert created.status_code == 201, created.text
        pid = (await until(live, "t", connected))["pid"]
        await add_agent(live, "all", ["t.*"])
        os.kill(pid, signal.SIGSTOP)
        try:
            answer = await wake(live, "all", '/tool t.echo {"text": "anyone?"}')
            [failed] = await tool_events(live, answer["run_id"])
            assert failed["type"] == "ToolCallFailed"
            body = await until(live, "t", lambda b: connected(b) and b["pid"] != pid)
            assert body["restarts"] == 1
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        answer = await wake(live, "all", '/tool t.echo {"text": "fresh"}')
        assert "echo: fresh" in answer["content"]


async def test_server_down_fails_its_tools_at_once(tmp_path: Path) -> None:
    """While a server cannot start, it reports `failed` with the reason, its stderr keeps the
    traceback it died with, and restarting it keeps trying."""
    async with live_server(tmp_path / "data") as live:
        bad = stdio_server("bad", args=[SERVER, "no-such-mode"])
        assert (await live.client.post("/v1/mcp/servers", json=bad)).status_code == 201
        body = await until(live, "bad", lambda b: b["status"] == "failed")
        assert body["last_error"] and body["tools"] == []

        async def traceback_kept() -> bool:
            stderr = (await live.client.get("/v1/mcp/servers/bad/stderr")).json()["stderr"]
            return "cuelog-test mcp server started" in stderr and "IndexError" in stderr

        await eventually(traceback_kept)  # what the process wrote before it died
        restarted = await live.client.post("/v1/mcp/servers/bad/restart")
        assert restarted.status_code == 200 and restarted.json()["status"] == "connecting"


@contextmanager
def http_mcp_server() -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, SERVER, "http", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.kill()
        proc.wait()


async def test_http_server_toggle_patch_and_delete(tmp_path: Path) -> None:
    """A streamable HTTP server connects (retrying until it listens), its headers are masked,
    toggling it off withdraws its tools and on brings them back, a patch that sends the mask
    back keeps the header, and delete removes it."""
    with http_mcp_server() as url:
        async with live_server(tmp_path / "data") as live:
            config = {
                "name": "web",
                "transport": "http",
                "url": url,
                "headers": {"X-Api-Key": SECRET},
                "timeout": 20,
            }
            created = await live.client.post("/v1/mcp/servers", json=config)
            assert created.status_code == 201, created.text
            assert SECRET not in created.text
            await until(live, "web", connected)
            await add_agent(live, "all", ["web.*"])
            assert "5" in (await wake(live, "all", '/tool web.add {"a": 2, "b": 3}'))["content"]

            off = await live.client.post("/v1/mcp/servers/web/toggle")
            assert off.status_code == 200 and off.json()["status"] == "disabled"
            answer = await wake(live, "all", '/tool web.add {"a": 2, "b": 3}')
            assert await tool_events(live, answer["run_id"]) == []
            assert (await live.client.post("/v1/mcp/servers/web/toggle")).json()["enabled"]
            await until(live, "web", connected)

            patched = await live.client.patch(
                "/v1/mcp/servers/web", json={"headers": {"X-Api-Key": "********"}, "timeout": 5}
            )
            assert patched.status_code == 200, patched.text
            assert patched.json()["timeout"] == 5 and SECRET not in patched.text
            await until(live, "web", connected)

            gone = await live.client.delete("/v1/mcp/servers/web")
            assert gone.status_code == 200
            assert (await live.client.get("/v1/mcp/servers/web")).status_code == 404
            assert (await live.client.get("/v1/mcp/servers")).json()["data"] == []


async def test_bad_server_configs_are_refused_and_write_nothing(tmp_path: Path) -> None:
    """A stdio server without a command, an http one without a URL, neither or both, a dotted
    name and an unknown field are 400 naming the problem; nothing reaches the log."""
    async with live_server(tmp_path / "data") as live:
        head = await live.head_seq()
        cases = [
            ({"name": "x", "transport": "stdio"}, 400, "command"),
            ({"name": "x", "transport": "http"}, 400, "url"),
            ({"name": "x"}, 400, "command"),
            ({"name": "x", "command": "true", "url": "http://127.0.0.1:9/"}, 400, "command"),
            ({"name": "a.b", "command": "true"}, 400, "name"),
            ({"name": "x", "command": "true", "bogus": 1}, 400, "bogus"),
        ]
        for body, status, word in cases:
            response = await live.client.post("/v1/mcp/servers", json=body)
            assert response.status_code == status, response.text
            assert word in response.text
        assert await live.head_seq() == head


def test_recorded_mcp_run_reruns_offline_after_restart(tmp_path: Path) -> None:
    """The server config survives a restart of cuelog (its env unsealed with the key file, whose
    key is destroyed on delete); a run that used an MCP tool is re-executed by `cuelog rerun`
    with no MCP server anywhere, from the recorded outputs."""
    data = tmp_path / "data"

    async def record() -> None:
        async with live_server(data) as live:
            assert (
                await live.client.post("/v1/mcp/servers", json=stdio_server())
            ).status_code == 201
            await until(live, "t", connected)
            await add_agent(live, "all", ["t.*"])
            answer = await wake(live, "all", '/tool t.echo {"text": "recorded"}')
            assert "echo: recorded" in answer["content"]
        key_file = data / "provider-keys.json"
        assert len(json.loads(key_file.read_text())) == 1  # the env's data key
        async with live_server(data) as live:
            body = await until(live, "t", connected)  # the config came back from the log
            assert body["env"] == {"CUELOG_TEST_SECRET": "********"}
            # The env was unsealed: the restarted server still got the secret.
            answer = await wake(live, "all", '/tool t.secret_env {"name": "CUELOG_TEST_SECRET"}')
            assert SECRET in answer["content"]
            assert (await live.client.delete("/v1/mcp/servers/t")).status_code == 200
        assert json.loads(key_file.read_text()) == {}  # deleting it destroyed its key

    trio.run(record)
    result = subprocess.run(
        [CUELOG, "rerun", str(data)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "re-executed" in result.stdout
