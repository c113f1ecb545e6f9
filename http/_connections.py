"""Hypercorn's trio worker, held to HTTP's connection rules and to a connection budget.

Hypercorn 0.18.0's trio worker under Quart-Trio 0.12 never closes an answered HTTP/1.1 connection
itself (upstream: pgjones/hypercorn#330). When a response ends, Hypercorn's h11 protocol first
tells the app `http.disconnect`, then asks the TCP server to close the socket (`Connection: close`,
HTTP/1.0) or to start the keep-alive idle timer, and it does both from inside the app's task.
Quart-Trio cancels that task as soon as it sees the disconnect, so the close is cancelled at its
first checkpoint (`send_eof`, before `aclose`) and the idle timer is cancelled before it starts:
the socket stays open until the client goes away. `ConnectionServer` runs those two steps shielded.

`serve_http` is `hypercorn.trio.worker_serve` (lifespan, listeners, graceful drain) with three
changes: the server above, a cap on open connections (at the cap the longest-idle connection is
closed to make room; when none becomes idle within `IDLE_WITHIN` a client gets a JSON 503 with
`Retry-After` and the connection is closed, without holding up the accept loop), and an accept
loop that reports fd exhaustion
(EMFILE/ENFILE) as one structured line per interval instead of trio's traceback every 0.1 s.
TLS and QUIC are not served: cuelog's config has neither.
"""

from __future__ import annotations

import errno
import os
import resource
import socket
from collections.abc import Awaitable, Callable
from typing import final

import structlog
import trio
from hypercorn.config import Config
from hypercorn.events import Closed, Event, Updated
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import AppWrapper, ConnectionState, LifespanState
from hypercorn.utils import repr_socket_addr

from cuelog.http._errors import error_body

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


class ConnectionServer(TCPServer):
    """Hypercorn's TCP server with its connection-level steps shielded from the app's cancel.

    Closing the socket and (re)starting the idle timer are the connection's business, not the
    request's: the app task that happens to carry them out may be cancelled by Quart-Trio at any
    checkpoint once it has seen `http.disconnect`. And once the client has gone, the idle timer
    stops: Hypercorn leaves it running, which holds the connection (and its fd) until the
    timer fires.

    While no request is in progress the connection's stream is in `idle`, where the accept loop
    may close it to make room for a new connection."""

    def __init__(
        self,
        app: AppWrapper,
        config: Config,
        context: WorkerContext,
        state: ConnectionState,
        stream: trio.SocketStream,
        idle: IdleConnections,
    ) -> None:
        # Hypercorn types the stream as TLS; without TLS it takes the plain socket stream.
        super().__init__(app, config, context, state, stream)  # type: ignore[arg-type]
        self._idle = idle
        idle.add(stream)  # no request yet

    async def _read_data(self) -> None:
        try:
            await super()._read_data()
        finally:
            with trio.CancelScope(shield=True):
                await self.idle_task.stop()

    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, Updated):
            self._idle.discard(self.stream)  # type: ignore[arg-type]
            if event.idle:
                self._idle.add(self.stream)  # type: ignore[arg-type]
        if isinstance(event, Closed | Updated):
            with trio.CancelScope(shield=True):
                await super().protocol_send(event)
        else:
            await super().protocol_send(event)


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
    serve_one: Callable[[trio.SocketStream, IdleConnections], Awaitable[None]],
    cap: int,
) -> None:
    open_connections = trio.CapacityLimiter(cap)
    refusing = trio.CapacityLimiter(MAX_REFUSING)
    idle = IdleConnections()
    report = _ExhaustionReport()

    async def serve(stream: trio.SocketStream) -> None:
        try:
            await serve_one(stream, idle)
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
    app: AppWrapper,
    config: Config,
    sockets: list[socket.socket],
    *,
    max_connections: int,
    shutdown_trigger: Callable[[], Awaitable[None]],
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` on bound `sockets` until `shutdown_trigger` returns, then drain within
    `config.graceful_timeout`; report the URLs once listening."""
    lifespan_state: LifespanState = {}
    lifespan = Lifespan(app, config, lifespan_state)
    context = WorkerContext(None)
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as connections:
            listeners, binds = [], []
            for sock in sockets:
                sock.listen(config.backlog)
                listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
                binds.append(f"http://{repr_socket_addr(sock.family, sock.getsockname())}")
            state = ConnectionState(lifespan_state.copy())

            async def serve_one(stream: trio.SocketStream, idle: IdleConnections) -> None:
                await ConnectionServer(app, config, context, state, stream, idle).run()

            task_status.started(binds)
            try:
                async with trio.open_nursery() as accepting:
                    accepting.start_soon(_raise_on, shutdown_trigger)
                    for listener in listeners:
                        accepting.start_soon(
                            _accept_loop, listener, connections, serve_one, max_connections
                        )
            except* _Shutdown:
                pass
            finally:
                # Idle keep-alive connections close at once; requests in flight get the grace.
                await context.terminated.set()
                connections.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()
