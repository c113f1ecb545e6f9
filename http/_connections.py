"""The server's connections: accepted under a budget, each served by `H1Connection`.

`serve_http` is `hypercorn.trio.worker_serve` (lifespan, listeners, graceful drain) with the
connections its own: each is an `H1Connection` (httptools parsing, `_h1`), the open connections
are capped (at the cap the longest-idle connection is closed to make room; when none becomes
idle within `IDLE_WITHIN` a client gets a JSON 503 with `Retry-After` and the connection is
closed, without holding up the accept loop), and the accept loop reports fd exhaustion
(EMFILE/ENFILE) as one structured line per interval instead of trio's traceback every 0.1 s.
On shutdown idle connections close at once and requests in flight get `graceful_timeout`.
TLS, HTTP/2 and WebSockets are not served: cuelog's config has none of them.
"""

from __future__ import annotations

import errno
import os
import resource
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import final

import structlog
import trio
from hypercorn.config import Config
from hypercorn.trio.lifespan import Lifespan
from hypercorn.typing import LifespanState
from hypercorn.utils import repr_socket_addr, wrap_app

from cuelog.http._cors import CorsOrigins
from cuelog.http._errors import error_body
from cuelog.http._h1 import ASGIApp, H1Connection

log = structlog.get_logger("cuelog.server")

# How long a refused connection is kept to read its 503 and close its end, and how many may be
# refused at once (beyond that the accept loop waits, and clients wait in the kernel's backlog).
REFUSE_WITHIN = 1.0
MAX_REFUSING = 16
# How long a connection arriving at the cap waits for one to become idle (a connection whose
# answer was just sent is marked idle a moment later) before it is refused.
IDLE_WITHIN = 0.25
# Accept errors that mean "out of fds or memory": wait and retry, report once per interval.
_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
ACCEPT_RETRY = 0.1
EXHAUSTION_REPORT_INTERVAL = 10.0
# fds kept free for the log, outbound HTTP and refusals when the cap follows the fd limit.
FD_RESERVE = 64

_BUSY_BODY = error_body(
    503, "the server has too many open connections; retry later", code="too_many_connections"
)
BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"content-type: application/json\r\n"
    b"content-length: " + str(len(_BUSY_BODY)).encode() + b"\r\n"
    b"retry-after: 1\r\n"
    b"connection: close\r\n\r\n" + _BUSY_BODY
)


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return soft
        return hard
    return soft


def connection_cap(max_connections: int, fd_limit: int) -> int:
    """The configured cap, lowered so open connections cannot take the fds the process needs."""
    if fd_limit == resource.RLIM_INFINITY:
        return max_connections
    return max(1, min(max_connections, fd_limit - FD_RESERVE))


@final
class IdleConnections:
    """The connections with no request in progress, oldest first."""

    def __init__(self) -> None:
        self._streams: dict[trio.SocketStream, None] = {}
        self._added = trio.Event()

    def add(self, stream: trio.SocketStream) -> None:
        self._streams[stream] = None
        self._added.set()

    def discard(self, stream: trio.SocketStream) -> None:
        self._streams.pop(stream, None)

    async def take_oldest(self) -> trio.SocketStream:
        """Remove and return the longest-idle connection, waiting for one if none is idle (a
        connection whose answer was just sent becomes idle a moment later)."""
        while not self._streams:
            if self._added.is_set():
                self._added = trio.Event()
            await self._added.wait()
        oldest = next(iter(self._streams))
        del self._streams[oldest]
        return oldest

    def close_all(self) -> None:
        """Close every idle connection (its reader wakes with ClosedResourceError)."""
        for stream in self._streams:
            stream.socket.close()
        self._streams.clear()


class _ExhaustionReport:
    """EMFILE/ENFILE on accept, logged as one line per interval with a count of the rest."""

    def __init__(self) -> None:
        self._last = -float("inf")
        self._suppressed = 0

    def note(self, exc: OSError) -> None:
        now = trio.current_time()
        if now - self._last < EXHAUSTION_REPORT_INTERVAL:
            self._suppressed += 1
            return
        log.error(
            "accept_exhausted",
            errno=errno.errorcode.get(exc.errno or 0, str(exc.errno)),
            reason=os.strerror(exc.errno or 0),
            failures_since_last_report=self._suppressed,
            retry_every=ACCEPT_RETRY,
            report_every=EXHAUSTION_REPORT_INTERVAL,
        )
        self._last = now
        self._suppressed = 0


async def _refuse(stream: trio.SocketStream) -> None:
    """Answer 503 at once (HTTP lets a server answer before it has read the request) and close."""
    try:
        with trio.move_on_after(REFUSE_WITHIN):
            await stream.send_all(BUSY_RESPONSE)
            await stream.send_eof()
            # Closing with unread input makes the kernel send RST, which can destroy the 503
            # before the client reads it: read until the client closes its end.
            while await stream.receive_some(65536):
                pass
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def _accept_loop(
    listener: trio.SocketListener,
    handler_nursery: trio.Nursery,
    serve_one: Callable[[trio.SocketStream], Awaitable[None]],
    idle: IdleConnections,
    cap: int,
) -> None:
    open_connections = trio.CapacityLimiter(cap)
    refusing = trio.CapacityLimiter(MAX_REFUSING)
    report = _ExhaustionReport()

    async def serve(stream: trio.SocketStream) -> None:
        try:
            await serve_one(stream)
        finally:
            idle.discard(stream)
            open_connections.release_on_behalf_of(stream)
            await trio.aclose_forcefully(stream)

    async def make_room(stream: trio.SocketStream) -> bool:
        """At the cap, close the longest-idle connection (HTTP lets a server close an idle
        keep-alive connection at any time) and take its place; False if none is idle within
        `IDLE_WITHIN`."""
        oldest = None
        with trio.move_on_after(IDLE_WITHIN):
            oldest = await idle.take_oldest()
        if oldest is None:
            return False
        oldest.socket.close()  # its reader wakes with ClosedResourceError and the handler ends
        with trio.move_on_after(REFUSE_WITHIN):
            await open_connections.acquire_on_behalf_of(stream)
            return True
        return False

    async def place(stream: trio.SocketStream) -> None:
        """A connection that arrived at the cap: served in an idle one's place, or refused."""
        placed = False
        try:
            placed = await make_room(stream)
            if not placed:
                await _refuse(stream)
        finally:
            refusing.release_on_behalf_of(stream)
            if not placed:
                await trio.aclose_forcefully(stream)
        if placed:
            await serve(stream)

    async with listener:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _CAPACITY_ERRNOS:
                    raise
                report.note(exc)
                await trio.sleep(ACCEPT_RETRY)
                continue
            try:
                open_connections.acquire_on_behalf_of_nowait(stream)
            except trio.WouldBlock:
                # Placing it may wait a moment; the accept loop goes on (up to MAX_REFUSING).
                await refusing.acquire_on_behalf_of(stream)
                handler_nursery.start_soon(place, stream)
            else:
                handler_nursery.start_soon(serve, stream)


class _Shutdown(Exception):
    pass


async def _raise_on(trigger: Callable[[], Awaitable[None]]) -> None:
    await trigger()
    raise _Shutdown


async def serve_http(
    app: ASGIApp,
    config: Config,
    sockets: list[socket.socket],
    *,
    max_connections: int,
    max_body: int,
    shutdown_trigger: Callable[[], Awaitable[None]],
    cors_origins: Iterable[str] = (),
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` on bound `sockets` until `shutdown_trigger` returns, then drain within
    `config.graceful_timeout`; report the URLs once listening."""
    lifespan_state: LifespanState = {}
    lifespan = Lifespan(wrap_app(app, config.wsgi_max_body_size, None), config, lifespan_state)
    stopping = False
    idle = IdleConnections()
    cors = CorsOrigins(cors_origins)
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as connections:
            listeners, binds = [], []
            for sock in sockets:
                sock.listen(config.backlog)
                listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
                binds.append(f"http://{repr_socket_addr(sock.family, sock.getsockname())}")
            state = dict(lifespan_state)

            async def serve_one(stream: trio.SocketStream) -> None:
                await H1Connection(
                    app,
                    stream,
                    idle,
                    state=state,
                    max_body=max_body,
                    keep_alive_timeout=config.keep_alive_timeout,
                    stopping=lambda: stopping,
                    cors=cors,
                ).run()

            task_status.started(binds)
            try:
                async with trio.open_nursery() as accepting:
                    accepting.start_soon(_raise_on, shutdown_trigger)
                    for listener in listeners:
                        accepting.start_soon(
                            _accept_loop, listener, connections, serve_one, idle, max_connections
                        )
            except* _Shutdown:
                pass
            finally:
                # Idle keep-alive connections close at once; requests in flight get the grace.
                stopping = True
                idle.close_all()
                connections.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()
