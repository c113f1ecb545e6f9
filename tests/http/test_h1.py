"""`H1Connection` in-process, over real sockets, with raw ASGI apps that do what Quart never does:
raise, answer nothing, stream without a length, answer 204, watch for the client leaving. Also a
client that trickles its request is cut off when the whole request has not arrived in time."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from cuelog.http import _h1
from cuelog.http._connections import IdleConnections

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


@asynccontextmanager
async def serving(app: App, keep_alive: float = 5.0) -> AsyncIterator[tuple[str, int]]:
    """One `H1Connection` a client, on 127.0.0.1, until the block ends."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    idle = IdleConnections()

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            await _h1.H1Connection(
                app,  # type: ignore[arg-type]
                stream,
                idle,
                state={},
                max_body=4096,
                keep_alive_timeout=keep_alive,
                stopping=lambda: False,
            ).run()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, handle, listeners)
        host, port = listeners[0].socket.getsockname()[:2]
        yield host, port
        nursery.cancel_scope.cancel()


def exchange(address: tuple[str, int], request: bytes, within: float = 3) -> tuple[bytes, bool]:
    """Send `request` from a blocking socket; what came back and whether the server closed."""
    with socket.create_connection(address, timeout=within) as sock:
        sock.sendall(request)
        data = b""
        deadline = time.monotonic() + within
        try:
            while time.monotonic() < deadline:
                chunk = sock.recv(65536)
                if not chunk:
                    return data, True
                data += chunk
        except TimeoutError:
            pass
        return data, False


GET = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"


async def test_an_app_that_raises_gets_500_and_the_connection_closed() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise RuntimeError("a bug")

    async with serving(app) as address:
        data, closed = await trio.to_thread.run_sync(exchange, address, GET)
    assert data.startswith(b"HTTP/1.1 500 Internal Server Error\r\n"), data
    assert b'"internal error' in data
    assert closed


async def test_an_app_that_answers_nothing_gets_500() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        return None

    async with serving(app) as address:
        data, closed = await trio.to_thread.run_sync(exchange, address, GET)
    assert data.startswith(b"HTTP/1.1 500"), data
    assert closed


async def test_a_streamed_answer_is_chunked_and_ends_with_the_last_chunk() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for piece in (b"one", b"two"):
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async with serving(app) as address:
        data, closed = await trio.to_thread.run_sync(exchange, address, GET, 1)
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head
    assert body == b"3\r\none\r\n3\r\ntwo\r\n0\r\n\r\n"
    assert not closed  # keep-alive: the framing says where the answer ends

    async with serving(app) as address:
        old, closed = await trio.to_thread.run_sync(exchange, address, b"GET / HTTP/1.0\r\n\r\n", 1)
    head, _, body = old.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head  # HTTP/1.0 knows no chunks: the close ends it
    assert body == b"onetwo"
    assert closed


async def test_204_and_head_carry_no_body() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        status = 204 if scope["path"] == "/none" else 200
        headers = [(b"content-length", b"5")] if status == 200 else []
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if status == 204 else b"hello"})

    async with serving(app) as address:
        data, _ = await trio.to_thread.run_sync(
            exchange,
            address,
            b"GET /none HTTP/1.1\r\nHost: t\r\n\r\nHEAD / HTTP/1.1\r\nHost: t\r\n\r\n" + GET,
            1,
        )
    answers = data.split(b"HTTP/1.1 ")[1:]
    assert [a.split(b" ", 1)[0] for a in answers] == [b"204", b"200", b"200"]
    assert answers[0].endswith(b"\r\n\r\n") and b"transfer-encoding" not in answers[0]
    assert b"content-length: 5\r\n" in answers[1] and answers[1].endswith(b"\r\n\r\n")
    assert answers[2].endswith(b"\r\n\r\nhello")


async def test_a_client_that_leaves_is_seen_by_the_app() -> None:
    saw: list[str] = []
    seen = trio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "http.request"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        saw.append((await receive())["type"])  # returns once the client has gone
        seen.set()

    async with serving(app) as address:

        def leave() -> None:
            with socket.create_connection(address, timeout=3) as sock:
                sock.sendall(GET)
                assert sock.recv(65536).startswith(b"HTTP/1.1 200")

        await trio.to_thread.run_sync(leave)
        with trio.fail_after(3):
            await seen.wait()
    assert saw == ["http.disconnect"]


async def test_a_trickled_request_is_cut_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """A head arriving a byte at a time, each before any per-read timeout, still has to arrive
    whole within READ_TIMEOUT."""
    monkeypatch.setattr(_h1, "READ_TIMEOUT", 0.5)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise AssertionError("the request never arrived whole")

    async with serving(app) as address:

        def trickle() -> float:
            started = time.monotonic()
            with socket.create_connection(address, timeout=3) as sock:
                try:
                    for byte in b"GET / HTTP/1.1\r\nX-Slow: " + b"a" * 100:
                        sock.sendall(bytes([byte]))
                        time.sleep(0.05)
                except (BrokenPipeError, ConnectionResetError):
                    return time.monotonic() - started
                sock.settimeout(3)
                assert sock.recv(10) == b""
            return time.monotonic() - started

        took = await trio.to_thread.run_sync(trickle)
    assert 0.4 < took < 3
