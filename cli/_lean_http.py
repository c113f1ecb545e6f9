"""The HTTP/1.1 client `cuelog bench` loads a server with: h11 over trio streams, kept alive.

A load generator must not be the limit it measures. httpx's connection pool spends little CPU
but, with dozens of concurrent requests in one trio process, gets half the rate `wrk` gets from
the same server; a keep-alive connection per worker, each request written in one send, reaches
wrk's rate at a few percent of a core. Only what the workloads need: a request with a body, the
answer read whole or as a stream of lines, http and https.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import final
from urllib.parse import urlsplit

import h11
import trio

_READ = 65536


class TransportError(Exception):
    """The connection failed or the server broke HTTP."""


class ConnectFailed(TransportError):
    """The server could not be reached."""


@final
class _Connection:
    __slots__ = ("h11", "stream")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)


@final
class LeanResponse:
    """An answer: its status and headers now, its body read whole or line by line."""

    def __init__(self, client: LeanClient, conn: _Connection, response: h11.Response) -> None:
        self._client = client
        self._conn = conn
        self.status_code = response.status_code
        self.headers = {k.decode().lower(): v.decode() for k, v in response.headers}
        self.content = b""
        self._ended = False

    async def _chunks(self) -> AsyncIterator[bytes]:
        conn = self._conn
        while not self._ended:
            try:
                event = conn.h11.next_event()
            except h11.ProtocolError as exc:
                raise TransportError(f"HTTP error: {exc}") from exc
            if event is h11.NEED_DATA:
                try:
                    data = await conn.stream.receive_some(_READ)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    raise TransportError(str(exc) or type(exc).__name__) from exc
                conn.h11.receive_data(bytes(data))
            elif isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self._ended = True
            elif isinstance(event, h11.ConnectionClosed):
                raise TransportError("the server closed the connection mid-answer")

    async def aread(self) -> bytes:
        parts = [chunk async for chunk in self._chunks()]
        self.content = b"".join(parts)
        return self.content

    async def aiter_lines(self) -> AsyncIterator[str]:
        pending = b""
        async for chunk in self._chunks():
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield line.rstrip(b"\r").decode()
        if pending:
            yield pending.decode()

    def _release(self) -> None:
        conn = self._conn
        if self._ended and conn.h11.our_state is h11.DONE and conn.h11.their_state is h11.DONE:
            conn.h11.start_next_cycle()
            self._client._idle.append(conn)
        else:  # read only in part (a stream left early) or closing: not reusable
            self._client._discard(conn)


@final
class LeanClient:
    """Keep-alive connections to one origin, reused last-in first-out; one per request in
    flight, so a request never waits for a connection."""

    def __init__(self, base_url: str, headers: dict[str, str] | None = None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self._tls = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._tls else 80)
        host = parts.netloc.rpartition("@")[2]
        self._headers = [("Host", host), *(headers or {}).items()]
        self._prefix = parts.path.rstrip("/")
        self._idle: list[_Connection] = []
        self._ssl = ssl.create_default_context() if self._tls else None

    async def _connect(self) -> _Connection:
        try:
            if self._ssl is not None:
                stream: trio.abc.Stream = await trio.open_ssl_over_tcp_stream(
                    self._host, self._port, ssl_context=self._ssl
                )
            else:
                stream = await trio.open_tcp_stream(self._host, self._port)
        except OSError as exc:
            raise ConnectFailed(str(exc) or type(exc).__name__) from exc
        return _Connection(stream)

    def _discard(self, conn: _Connection) -> None:
        # Closing a plain socket never blocks; a TLS stream is dropped without its goodbye.
        stream = conn.stream
        if isinstance(stream, trio.SocketStream):
            stream.socket.close()
        elif isinstance(stream, trio.SSLStream):
            transport = stream.transport_stream
            if isinstance(transport, trio.SocketStream):
                transport.socket.close()

    def _target(self, url: str) -> str:
        if url.startswith(("http://", "https://")):
            parts = urlsplit(url)
            return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return self._prefix + url

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        url: str,
        *,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> AsyncIterator[LeanResponse]:
        """Send the request (in one write) and hand over the answer once its head is in."""
        reused = bool(self._idle)
        conn = self._idle.pop() if reused else await self._connect()
        response: LeanResponse | None = None
        try:
            try:
                response = await self._send(conn, method, url, content, headers)
            except TransportError:
                if not reused:
                    raise
                # The server closed the kept-alive connection meanwhile: once more, afresh.
                self._discard(conn)
                conn = await self._connect()
                response = await self._send(conn, method, url, content, headers)
            yield response
        finally:
            if response is None:
                self._discard(conn)
            else:
                response._release()

    async def post(
        self, url: str, *, content: bytes, headers: dict[str, str] | None = None
    ) -> LeanResponse:
        """A request whose answer is read whole (`content`)."""
        async with self.stream("POST", url, content=content, headers=headers) as response:
            await response.aread()
        return response

    async def _send(
        self,
        conn: _Connection,
        method: str,
        url: str,
        content: bytes | None,
        headers: dict[str, str] | None,
    ) -> LeanResponse:
        fields = [*self._headers, *(headers or {}).items()]
        body = content or b""
        if content is not None:
            fields.append(("Content-Length", str(len(body))))
        try:
            data = conn.h11.send(
                h11.Request(method=method, target=self._target(url), headers=fields)
            )
            if body:
                data = (data or b"") + (conn.h11.send(h11.Data(data=body)) or b"")
            data = (data or b"") + (conn.h11.send(h11.EndOfMessage()) or b"")
            await conn.stream.send_all(data)
            while True:
                event = conn.h11.next_event()
                if event is h11.NEED_DATA:
                    received = await conn.stream.receive_some(_READ)
                    conn.h11.receive_data(bytes(received))
                elif isinstance(event, h11.Response):
                    return LeanResponse(self, conn, event)
                elif isinstance(event, h11.ConnectionClosed):
                    raise TransportError("the server closed the connection")
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise TransportError(str(exc) or type(exc).__name__) from exc
        except h11.ProtocolError as exc:
            raise TransportError(f"HTTP error: {exc}") from exc

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            self._discard(conn)
        await trio.lowlevel.checkpoint()
