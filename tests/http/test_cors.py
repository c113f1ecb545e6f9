"""CORS for the configured origins: preflight answered, responses marked; other origins get
nothing; the key is still required. And health says whether a key is."""

from __future__ import annotations

from pathlib import Path

import httpx
import trio

from tests.http.live import live_server

ORIGIN = "https://app.example"


async def test_preflight_and_responses_for_a_configured_origin(tmp_path: Path) -> None:
    """A preflight from a listed origin is 204 with the methods and headers it may send; the
    real request carries Access-Control-Allow-Origin and exposes X-Run-Id; an origin not
    listed gets no CORS headers; a request without a key is still 401."""
    async with live_server(tmp_path / "data", cors_origins=[ORIGIN]) as live:
        preflight = await live.client.options(
            "/v1/chat/completions",
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
                "Authorization": "",
            },
        )
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == ORIGIN
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert "Authorization" in preflight.headers["access-control-allow-headers"]
        chat = await live.client.post(
            "/v1/chat/completions",
            json={"model": "default", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Origin": ORIGIN},
        )
        assert chat.status_code == 200
        assert chat.headers["access-control-allow-origin"] == ORIGIN
        assert "X-Run-Id" in chat.headers["access-control-expose-headers"]
        other = await live.client.get("/v1/models", headers={"Origin": "https://evil.example"})
        assert other.status_code == 200
        assert "access-control-allow-origin" not in other.headers
        denied = await live.client.options(
            "/v1/models",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
        )
        assert "access-control-allow-origin" not in denied.headers
        async with httpx.AsyncClient(base_url=live.url) as anonymous:
            refused = await anonymous.get("/v1/models", headers={"Origin": ORIGIN})
            assert refused.status_code == 401
            assert refused.headers["access-control-allow-origin"] == ORIGIN
            health = await anonymous.get("/health")
            assert health.json() == {"status": "ok", "auth_required": True}


async def test_no_cors_headers_without_configured_origins(tmp_path: Path) -> None:
    """With no origins configured, nothing is marked and a preflight is not answered."""
    async with live_server(tmp_path / "data") as live:
        answer = await live.client.get("/v1/models", headers={"Origin": ORIGIN})
        assert "access-control-allow-origin" not in answer.headers
        preflight = await live.client.options(
            "/v1/models", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET"}
        )
        assert preflight.status_code == 405


async def test_answers_the_connection_refuses_itself_are_marked_too(tmp_path: Path) -> None:
    """A body over the limit is refused before the app sees the request (413); a browser on a
    listed origin must still be able to read why, so the answer carries the same CORS headers.
    A malformed request (400) too, once its Origin header has been read; an origin not listed
    still gets none."""
    async with live_server(tmp_path / "data", cors_origins=[ORIGIN], max_body_bytes=1024) as live:
        big = b'{"model": "default", "messages": [], "x": "' + b"y" * 2048 + b'"}'
        for origin, marked in ((ORIGIN, True), ("https://evil.example", False)):
            async with httpx.AsyncClient(base_url=live.url, headers=live.client.headers) as one:
                answer = await one.post(
                    "/v1/chat/completions",
                    content=big,
                    headers={"Origin": origin, "Content-Type": "application/json"},
                )
            assert answer.status_code == 413, answer.text
            assert answer.json()["error"]["message"]
            assert ("access-control-allow-origin" in answer.headers) is marked
            if marked:
                assert answer.headers["access-control-allow-origin"] == ORIGIN
                assert "Origin" in answer.headers["vary"]
        host, port = live.url.removeprefix("http://").rsplit(":", 1)
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            await stream.send_all(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nOrigin: "
                + ORIGIN.encode()
                + b"\r\nContent-Length: ten\r\n\r\n"
            )
            data = b""
            with trio.fail_after(5):
                while chunk := await stream.receive_some(65536):
                    data += chunk
        head = data.partition(b"\r\n\r\n")[0].lower()
        assert head.startswith(b"http/1.1 400 "), data
        assert b"access-control-allow-origin: " + ORIGIN.encode() in head
