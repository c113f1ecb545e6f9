"""A revoked or expired key's open SSE streams end within a second, with an `error` frame."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import trio

from tests.http.live import Live, live_server


async def _key(live: Live, scopes: list[str], **extra: Any) -> tuple[str, dict[str, str]]:
    made = await live.client.post("/v1/keys", json={"name": "k", "scopes": scopes, **extra})
    assert made.status_code == 201, made.text
    return made.json()["id"], {"Authorization": f"Bearer {made.json()['key']}"}


async def _until_end(
    response: httpx.Response, opened: trio.Event, ended: list[float], done: trio.Event
) -> list[str]:
    """Read an SSE response to its end; note when it ended."""
    lines = []
    opened.set()
    async for line in response.aiter_lines():
        lines.append(line)
    ended.append(time.monotonic())
    done.set()
    return lines


async def _stream_ends_after(
    live: Live, path: str, headers: dict[str, str], end_key: Any
) -> tuple[float, list[str]]:
    """Open `path` as SSE, call `end_key()` (which returns when the key stopped being valid),
    and return how long after that the stream ended, and its lines."""
    ended: list[float] = []
    done = trio.Event()
    lines: list[str] = []
    async with httpx.AsyncClient(base_url=live.url, headers=headers, timeout=30) as client:
        sse = {"Accept": "text/event-stream"}
        async with client.stream("GET", path, headers=sse) as response:
            assert response.status_code == 200
            opened = trio.Event()
            async with trio.open_nursery() as nursery:

                async def read() -> None:
                    lines.extend(await _until_end(response, opened, ended, done))

                nursery.start_soon(read)
                await opened.wait()
                await trio.sleep(0.2)
                assert not ended, "the stream ended before the key did"
                invalid_at = await end_key()
                with trio.move_on_after(5):
                    await done.wait()
                nursery.cancel_scope.cancel()
    assert ended, f"{path}: the stream went on after its key ended"
    return ended[0] - invalid_at, lines


async def test_revoking_a_key_ends_its_open_streams(tmp_path: Path) -> None:
    """The firehose and a session's event stream of a key end within 1 s of its revocation,
    with a final `error` frame, while another key's stream goes on."""
    async with live_server(tmp_path / "data") as live:
        for template, scopes in [
            ("/v1/events", ["admin"]),
            ("/v1/sessions/{session}/events", ["wake"]),
        ]:
            key_id, headers = await _key(live, [*scopes, "read"])
            sent = await live.client.post(
                "/v1/agents/default/wake",
                json={"message": "hi", "session_key": f"s-{key_id}"},
                headers=headers,
            )
            assert sent.status_code == 200, sent.text

            async def revoke(key_id: str = key_id) -> float:
                response = await live.client.delete(f"/v1/keys/{key_id}")
                assert response.status_code == 200
                return time.monotonic()

            path = template.format(session=f"s-{key_id}")
            took, lines = await _stream_ends_after(live, path, headers, revoke)
            assert took < 1.0, f"{path}: ended {took:.2f} s after the revocation"
            assert "event: error" in lines, lines
            assert any("key_revoked" in line for line in lines), lines


async def test_an_expiring_key_ends_its_open_streams(tmp_path: Path) -> None:
    """A key's open firehose stream ends within 1 s of the key's `expires_at`."""
    async with live_server(tmp_path / "data") as live:
        expires_at = int(time.time()) + 2
        _, headers = await _key(live, ["admin"], expires_at=expires_at)

        async def expire() -> float:
            await trio.sleep(max(0.0, expires_at - time.time()))
            return time.monotonic()

        took, lines = await _stream_ends_after(live, "/v1/events", headers, expire)
        assert took < 1.0, f"ended {took:.2f} s after the key expired"
        assert "event: error" in lines, lines
