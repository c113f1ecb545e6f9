"""cuelog's HTTP/1.1 connection: httptools parses the requests, the ASGI app answers them, one
trio task a connection.

It takes the place of Hypercorn's h11 protocol inside `serve_http` (Hypercorn still runs the
lifespan); under load the pure-Python h11 state machine and Hypercorn's event plumbing were
about half of the server's CPU for a small request, while llhttp (httptools) parses in C.

What a connection does:
- reads a whole request (head and body) before it calls the app; a head over `MAX_HEAD` bytes
  gets 431, a body over `max_body` gets 413 (at once when `Content-Length` says so), a request
  httptools refuses gets 400, each answered with the API's JSON error shape (and CORS headers
  when its Origin is allowed) and the connection closed; `Expect: 100-continue` is answered
  before the body is read;
- calls the app in its own task; while the app runs, its `receive()` after the body watches the
  socket, so a client that goes away becomes `http.disconnect` (a streamed answer ends and a
  run can be cancelled); bytes of a pipelined next request are kept, up to `MAX_PIPELINED`;
- writes a fixed-length answer in one `send_all` (Quart sends the body in pieces), a streamed
  one (SSE) chunked: its head at once, then a piece a chunk as it comes; HTTP/1.0 clients get
  the body unframed and the connection closed;
- keeps the connection alive as the request and the answer allow; idle between requests it sits
  in `IdleConnections` (the accept loop may close it to make room) and is closed after
  `keep_alive_timeout`, or at once when the server is stopping; a request that has begun must
  arrive whole within `READ_TIMEOUT`;
- answers 500 (and closes) when the app raises or answers nothing.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Final, Protocol, final
from urllib.parse import unquote

import httptools
import structlog
import trio
from hypercorn.typing import ASGIFramework

from cuelog.http._cors import CorsOrigins
from cuelog.http._errors import error_body

ASGIApp = ASGIFramework

log = structlog.get_logger("cuelog.server")

RECEIVE_BYTES: Final = 65536
# A request head (request line and headers) larger than this gets 431, as h11's default limit.
MAX_HEAD: Final = 16 * 1024
MAX_HEADERS: Final = 100
# While an answer is being sent, at most this many bytes of the next requests are read ahead.
MAX_PIPELINED: Final = 64 * 1024
# How long a request may take to arrive whole, from its first bytes (a client that trickles a
# head or a body holds a connection no longer than this).
READ_TIMEOUT: Final = 30.0
# How long a connection closed after an error answer waits for the client to close its end
# (closing with unread input makes the kernel send RST, which can destroy the answer).
LINGER: Final = 1.0
# A fixed-length answer up to this size is sent in one write however Quart cuts it.
GATHER_BYTES: Final = 1 << 20

_ASGI: Final = {"version": "3.0", "spec_version": "2.3"}
_NO_BODY_STATUS: Final = frozenset({204, 304})
_STATUS_LINES: dict[int, bytes] = {}


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = ""
        line = _STATUS_LINES[status] = f"HTTP/1.1 {status} {reason}\r\n".encode("latin-1")
    return line


class _Clock:
    """The `date` header, formatted once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._header = b""

    def header(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._header = b"date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        return self._header


_CLOCK = _Clock()


class HttpError(Exception):
    """A request refused before the app saw it: answered with `status` and closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.origin: bytes | None = None  # the request's Origin, when its headers were read


def _head_too_large() -> HttpError:
    return HttpError(431, "the request's headers are over the size limit")


def error_answer(status: int, message: str, cors: bytes = b"") -> bytes:
    """A JSON error answer that closes the connection; `cors` holds header lines from
    `CorsOrigins.header_lines`."""
    body = error_body(status, message)
    return (
        _status_line(status)
        + b"content-type: application/json\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\nconnection: close\r\n"
        + cors
        + _CLOCK.header()
        + b"\r\n"
        + body
    )


_INTERNAL: Final = "internal error; the server log has the details"


def _origin(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    for name, value in headers:
        if name == b"origin":
            return value
    return None


@final
class _Request:
    __slots__ = (
        "body",
        "body_size",
        "continue_expected",
        "head_size",
        "headers",
        "keep_alive",
        "method",
        "url",
        "version",
    )

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_size = 0
        self.body: list[bytes] = []
        self.body_size = 0
        self.method = ""
        self.version = "1.1"
        self.keep_alive = True
        self.continue_expected = False


@final
class _Parser:
    """httptools' callbacks: whole requests into `done`, the one being read in `current`."""

    def __init__(self, max_body: int) -> None:
        self.max_body = max_body
        self.parser = httptools.HttpRequestParser(self)
        self.current: _Request | None = None
        self.done: deque[_Request] = deque()
        self.upgraded = False  # an Upgrade request (h2c): answered as HTTP/1.1, then closed

    def feed(self, data: bytes) -> None:
        """Parse `data`; raise `HttpError` for a request to refuse."""
        if self.upgraded:
            return  # httptools parses nothing after an upgrade; the connection closes
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.upgraded = True
        except httptools.HttpParserError as exc:
            refused = exc.__context__  # refused by a callback below
            if not isinstance(refused, HttpError):
                refused = HttpError(400, f"malformed HTTP request: {exc}")
            raise self._refused(refused) from None
        request = self.current
        if request is not None and request.head_size > MAX_HEAD:
            raise self._refused(_head_too_large())  # a head still arriving

    def _refused(self, exc: HttpError) -> HttpError:
        if self.current is not None:
            exc.origin = _origin(self.current.headers)
        return exc

    @property
    def reading(self) -> bool:
        """Whether part of a request has arrived but not all of it."""
        return self.current is not None

    def on_message_begin(self) -> None:
        self.current = _Request()

    def on_url(self, url: bytes) -> None:
        request = self.current
        assert request is not None
        request.url += url
        request.head_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self.current
        assert request is not None
        request.head_size += len(name) + len(value) + 4
        if len(request.headers) >= MAX_HEADERS:
            request.head_size = MAX_HEAD + 1  # refused after this feed, as too large a head
            return
        request.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        request = self.current
        assert request is not None
        if request.head_size > MAX_HEAD:
            raise _head_too_large()
        parser = self.parser
        request.method = parser.get_method().decode("ascii")
        request.version = parser.get_http_version()
        request.keep_alive = parser.should_keep_alive() and request.version == "1.1"
        for name, value in request.headers:
            if name == b"content-length" and int(value) > self.max_body:
                raise HttpError(413, "the request body is over the size limit")
            if name == b"expect" and value.lower() == b"100-continue":
                request.continue_expected = True

    def on_body(self, body: bytes) -> None:
        request = self.current
        assert request is not None
        request.body_size += len(body)
        if request.body_size > self.max_body:
            raise HttpError(413, "the request body is over the size limit")
        request.body.append(body)

    def on_message_complete(self) -> None:
        request = self.current
        assert request is not None
        self.done.append(request)
        self.current = None


@final
class _Answer:
    """The ASGI `send` of one request: frames the app's answer and writes it."""

    __slots__ = (
        "chunked",
        "closing",
        "finished",
        "head",
        "head_only",
        "length",
        "pending",
        "pending_size",
        "sent",
        "stream",
        "version",
    )

    def __init__(self, stream: trio.SocketStream, request: _Request, closing: bool) -> None:
        self.stream = stream
        self.head_only = request.method == "HEAD"
        self.version = request.version
        self.closing = closing
        self.head: bytes | None = None  # set by http.response.start, cleared once written
        self.length: int | None = None
        self.chunked = False
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.sent = False  # whether anything of the answer went out
        self.finished = False

    async def __call__(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self.sent or self.head is not None:
                raise RuntimeError("http.response.start sent twice")
            self._start(message["status"], message.get("headers", ()))
            if self.length is None and not self.head_only:
                # A streamed answer (SSE) may wait long for its first piece: its head goes now,
                # so a client following a quiet stream sees the answer begin.
                await self.body(b"", True)
        elif kind == "http.response.body":
            if self.finished:
                return
            if self.head is None and not self.sent:
                raise RuntimeError("http.response.body before http.response.start")
            await self.body(message.get("body", b""), message.get("more_body", False))

    def _start(self, status: int, headers: Iterable[tuple[bytes, bytes]]) -> None:
        lines = [_status_line(status)]
        length = None
        for name, value in headers:
            lower = name.lower()
            if lower == b"content-length":
                length = int(value)
            elif lower == b"connection":
                self.closing = self.closing or b"close" in value.lower()
            elif lower != b"transfer-encoding":  # the framing is this connection's to choose
                lines += (lower, b": ", value, b"\r\n")
        if status in _NO_BODY_STATUS or status < 200:
            self.head_only = True
            length = None
        elif length is not None:
            lines += (b"content-length: ", str(length).encode(), b"\r\n")
        elif self.head_only:
            pass  # a HEAD answer's head only: no framing to announce
        elif self.version == "1.1":
            self.chunked = True
            lines.append(b"transfer-encoding: chunked\r\n")
        else:
            self.closing = True  # HTTP/1.0: the body runs to the close
        if self.closing:
            lines.append(b"connection: close\r\n")
        lines += (_CLOCK.header(), b"\r\n")
        self.head = b"".join(lines)
        self.length = length

    async def body(self, data: bytes, more: bool) -> None:
        """Send a piece of the body (`more`) or its last piece."""
        if self.head_only:
            data = b""
        elif self.chunked and data:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        if not more:
            self.finished = True
            if self.chunked and not self.head_only:
                data += b"0\r\n\r\n"
        elif (
            self.head is not None
            and self.length is not None
            and self.length <= GATHER_BYTES
            and self.pending_size + len(data) < self.length
        ):
            # Quart sends a body in pieces and an empty last one: gather a fixed-length answer
            # and send it in one write.
            self.pending.append(data)
            self.pending_size += len(data)
            return
        if self.head is not None:
            self.pending.insert(0, self.head)
            self.head = None
        if self.pending:
            self.pending.append(data)
            data = b"".join(self.pending)
            self.pending.clear()
        if data:
            self.sent = True
            await self.stream.send_all(data)


class IdleSet(Protocol):
    """Where a connection waits between requests; the accept loop closes the oldest to make
    room (`IdleConnections` in `_connections`)."""

    def add(self, stream: trio.SocketStream) -> None: ...

    def discard(self, stream: trio.SocketStream) -> None: ...


@final
class H1Connection:
    """One HTTP/1.1 connection, served until it closes."""

    def __init__(
        self,
        app: ASGIApp,
        stream: trio.SocketStream,
        idle: IdleSet,
        *,
        state: dict[str, Any],
        max_body: int,
        keep_alive_timeout: float,
        stopping: Callable[[], bool],
        cors: CorsOrigins | None = None,
    ) -> None:
        # Called with plain dicts: the ASGI TypedDicts would cost a cast a message.
        self.app: Callable[..., Awaitable[None]] = app
        self.cors = cors or CorsOrigins(())
        self.stream = stream
        self.idle = idle
        self.state = state
        self.keep_alive_timeout = keep_alive_timeout
        self.stopping = stopping
        self.parser = _Parser(max_body)
        self.ahead = 0  # bytes read while an answer was being sent
        self.closed = False  # the client closed its end (or the socket broke)
        self.refused: HttpError | None = None
        sock = stream.socket
        self.client = _address(sock.getpeername())
        self.server = _address(sock.getsockname())

    async def run(self) -> None:
        try:
            while True:
                request = await self._next_request()
                if request is None:
                    return
                if not await self._answer(request) or self.stopping() or self.closed:
                    return
        except HttpError as exc:
            await self._refuse(exc)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _next_request(self) -> _Request | None:
        """The next whole request, or None when the connection should close."""
        parser = self.parser
        stream = self.stream
        deadline = math.inf  # for the whole request, from its first bytes
        while not parser.done:
            if self.refused is not None:
                raise self.refused  # found while the last answer was sent
            if self.closed or parser.upgraded:
                return None
            if parser.reading:
                if deadline == math.inf:
                    deadline = trio.current_time() + READ_TIMEOUT
                until = deadline
            else:
                if self.stopping():
                    return None
                self.idle.add(stream)
                until = trio.current_time() + self.keep_alive_timeout
            data = None
            with trio.move_on_at(until):
                try:
                    data = await stream.receive_some(RECEIVE_BYTES)
                finally:
                    self.idle.discard(stream)
            if not data:
                return None  # closed by the client, idle too long, or a request that stalled
            parser.feed(data)
            request = parser.current
            if request is not None and request.continue_expected:
                request.continue_expected = False
                await stream.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.ahead = 0
        return parser.done.popleft()

    async def _answer(self, request: _Request) -> bool:
        """Run the app for `request`; whether the connection may serve another one."""
        parser = self.parser
        closing = not request.keep_alive or parser.upgraded
        answer = _Answer(self.stream, request, closing)
        body = b"".join(request.body)
        delivered = False

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            if not answer.finished:
                await self._watch_for_close()
            return {"type": "http.disconnect"}

        scope = self._scope(request)
        try:
            await self.app(scope, receive, answer)
        except Exception as exc:
            if not _only_broken(exc):
                log.error("unhandled error", method=request.method, exc_info=exc)
            if answer.sent or answer.finished:
                return False
            await self.stream.send_all(self._internal_error(request))
            return False
        if not answer.finished:
            if answer.sent or self.closed:
                return False  # cut off part way (the client sees it), or nobody to answer
            if answer.head is None:
                log.error("no answer from the app", method=request.method, path=scope["path"])
                await self.stream.send_all(self._internal_error(request))
                return False
            await answer.body(b"", False)  # an app that sent a head and no body
        return not answer.closing

    async def _watch_for_close(self) -> None:
        """Read until the client closes its end; keep what it pipelines, up to a bound."""
        while not self.closed and self.ahead < MAX_PIPELINED and not self.parser.upgraded:
            try:
                data = await self.stream.receive_some(RECEIVE_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                self.closed = True
                return
            self.ahead += len(data)
            try:
                self.parser.feed(data)
            except HttpError as exc:
                self.refused = exc  # answered once the requests before it are
                break
        await trio.sleep_forever()

    def _scope(self, request: _Request) -> dict[str, Any]:
        url = request.url
        if url.startswith(b"/"):
            raw_path, _, query = url.partition(b"?")
        else:
            parsed = httptools.parse_url(url)
            raw_path, query = parsed.path or b"/", parsed.query or b""
        try:
            path = unquote(raw_path.decode("ascii"))
        except UnicodeDecodeError:
            refused = HttpError(400, "malformed HTTP request: the path is not ASCII")
            refused.origin = _origin(request.headers)
            raise refused from None
        return {
            "type": "http",
            "asgi": _ASGI,
            "http_version": request.version,
            "method": request.method,
            "scheme": "http",
            "path": path,
            "raw_path": raw_path,
            "query_string": query,
            "root_path": "",
            "headers": request.headers,
            "client": self.client,
            "server": self.server,
            "state": self.state,
            "extensions": {},
        }

    def _internal_error(self, request: _Request) -> bytes:
        return error_answer(500, _INTERNAL, self.cors.header_lines(_origin(request.headers)))

    async def _refuse(self, exc: HttpError) -> None:
        """Answer a refused request and close, reading what the client still sends for a
        moment so the kernel does not reset the connection before the answer is read."""
        stream = self.stream
        try:
            with trio.move_on_after(LINGER):
                cors = self.cors.header_lines(exc.origin)
                await stream.send_all(error_answer(exc.status, exc.message, cors))
                await stream.send_eof()
                while await stream.receive_some(RECEIVE_BYTES):
                    pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


def _only_broken(exc: BaseException) -> bool:
    """Whether `exc` is (a group of) the client's connection breaking."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_broken(inner) for inner in exc.exceptions)
    return isinstance(exc, trio.BrokenResourceError | trio.ClosedResourceError)


def _address(address: Any) -> tuple[str, int] | None:
    if isinstance(address, tuple) and len(address) >= 2:
        return str(address[0]), int(address[1])
    return None
