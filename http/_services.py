"""What every route uses: the domain, the log, settings, keys and limits, and the steps a run
request shares (start a run, wait for it, stream its events)."""

from __future__ import annotations

import contextlib
import math
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

import trio
from quart import Response, current_app, request

from cuelog.actors import (
    ID_RULE,
    TERMINAL,
    AgentSpec,
    BuiltinTools,
    ChatMessage,
    Domain,
    IdempotencyKey,
    Loops,
    McpServers,
    Providers,
    ReadModels,
    RunView,
    Sent,
    TraceExport,
    Unavailable,
    Webhooks,
    event_data,
    is_valid_id,
    request_digest,
)
from cuelog.http._answers import error_answer
from cuelog.http._auth import STATIC_KEY_ID, Authenticator, Principal, principal
from cuelog.http._config import Settings
from cuelog.http._errors import error_body
from cuelog.http._forward import Forwarder
from cuelog.http._limits import StreamSlots, TokenBuckets
from cuelog.http._metrics import Metrics
from cuelog.http._params import IDEMPOTENCY_KEY
from cuelog.http._schemas import EventOut
from cuelog.http._wire import (
    ApiError,
    json_response,
    read_body,
    sse_frame,
    sse_response,
    to_json,
)
from cuelog.runtime import CuelogError, EventLog, RecordedEvent, gc_probe

T = TypeVar("T")

# A filtered page of events reads at most this many events, this many at a time.
SCAN_EVENTS_PER_PAGE = 10_000
SCAN_EVENTS_BATCH = 500


class Services:
    """The domain and the server's own state, shared by every route."""

    def __init__(
        self,
        domain: Domain,
        log: EventLog,
        settings: Settings,
        auth: Authenticator,
        anchor_key: bytes | None = None,
    ) -> None:
        self.domain = domain
        self.log = log
        self.settings = settings
        self.auth = auth
        self.anchor_key = anchor_key
        self.started = time.monotonic()
        self.stopping = False
        server = settings.server
        self.key_buckets = TokenBuckets(server.rate_limit, server.rate_burst)
        self.ip_buckets = TokenBuckets(server.ip_rate_limit, server.rate_burst)
        self.auth_failures = TokenBuckets(server.auth_failure_rate, server.auth_failure_burst)
        self.streams = StreamSlots(server.max_streams_per_key)
        self.metrics = Metrics(self)
        self.mcp: McpServers | None = None  # set by `serve` once the log is open
        self.providers: Providers | None = None  # likewise
        self.builtin_tools: BuiltinTools | None = None  # likewise
        self.loops: Loops | None = None  # the scheduled runs, when `loops.enabled`
        self.webhooks: Webhooks | None = None  # the outbox of run outcomes
        self.read_models: ReadModels | None = None  # the projections, once they run
        self.trace_export: TraceExport | None = None  # OTLP export, when configured
        self.forwarder: Forwarder | None = None  # cluster mode: requests for other nodes' actors
        gc_probe()  # collections are counted from the start

    async def read(self, cls: type[T]) -> tuple[T, bytes]:
        """The request body decoded as `cls`, and its raw bytes."""
        return await read_body(cls, max_bytes=self.settings.server.max_body_bytes)

    # -- runs ----------------------------------------------------------------------------------

    async def start_run(
        self,
        route: str,
        raw: bytes,
        agent_id: str,
        messages: list[ChatMessage],
        session_key: str | None,
        metadata: dict[str, Any] | None = None,
        tune: Callable[[AgentSpec], AgentSpec] | None = None,
        *,
        callback_url: str | None = None,
    ) -> Sent:
        """Send the messages to the agent's session; an `Idempotency-Key` header makes a repeat
        attach to the first request's run. `tune` makes the agent's definition the one this
        request runs with (its limits, client functions, upstream fields). With `callback_url`
        the run's outcome is delivered there (see `Webhooks`)."""
        who = principal()
        agent_id = self.agent_for_model(agent_id)
        if not is_valid_id(agent_id):
            raise ApiError(404, f"no agent {agent_id!r}", param="model")
        run_id = None
        actor = who.key_id or "local"
        if callback_url is not None:
            # Checked, then recorded before the run exists: the run's outcome goes there and
            # not to the agent's default, however fast the run settles.
            callback_url = await self.outbox().check_target(
                callback_url, agent_id=agent_id, key_id=who.key_id
            )
            agent = await self.domain.get_agent(agent_id)  # an unknown agent writes nothing
            if self.domain.emergency_stopped:
                raise Unavailable("emergency stop is on: new runs are refused until it is released")
            await self.domain.check_budgets(agent_id, agent.spec, who.caller())
            run_id = f"run_{secrets.token_hex(12)}"
            await self.outbox().request(run_id, callback_url, actor=actor)
        spec = tune((await self.domain.get_agent(agent_id)).spec) if tune is not None else None
        idem = IDEMPOTENCY_KEY.get()
        idempotency = None
        if idem is not None:
            idempotency = IdempotencyKey(
                scope=who.key_id or "local",
                key=idem,
                route=route,
                digest=request_digest(raw, (session_key or "").encode()),
            )
        sent = await self.domain.send(
            agent_id,
            messages,
            session_key=session_key,
            caller=who.caller(),
            metadata=metadata,
            idempotency=idempotency,
            spec=spec,
            run_id=run_id,
        )
        if callback_url is not None and sent.run_id != run_id:
            # A repeat of an Idempotency-Key attached to the first request's run.
            await self.outbox().request(sent.run_id, callback_url, actor=actor)
        return sent

    def agent_for_model(self, model: str) -> str:
        """The agent a request's `model` names: a configured alias (`models.aliases`), an
        `agent:NAME`, or the agent id itself."""
        aliased = self.settings.models.aliases.get(model)
        if aliased is not None:
            return aliased
        return model.removeprefix("agent:")

    async def wait_for(self, sent: Sent) -> RunView:
        """The final view of the run this request started; a client that leaves with
        `X-Cuelog-On-Disconnect: cancel` cancels the run."""
        try:
            return await self._wait_for(sent)
        except trio.Cancelled:  # the client went away
            if cancel_on_disconnect():
                await self.cancel_quietly(sent.run_id)
            raise

    async def _wait_for(self, sent: Sent) -> RunView:
        run_id = sent.run_id
        timeout = self.settings.server.request_timeout
        with trio.move_on_after(timeout):
            view = await self.domain.wait_sent(sent)
            if view.status not in TERMINAL:
                raise ApiError(
                    503,
                    f"the server is shutting down; run {run_id} goes on after the restart: "
                    f"follow /v1/runs/{run_id}/events",
                    headers={"Retry-After": "5"},
                )
            return view
        raise ApiError(
            504,
            f"run {run_id} did not finish within {timeout:g} s; "
            f"follow it at /v1/runs/{run_id}/events",
            code="timeout",
        )

    async def cancel_quietly(self, run_id: str) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(5), contextlib.suppress(CuelogError):
            await self.domain.cancel_run(run_id, reason="client disconnected")

    # -- streams -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def stream_slot(self, wanted: bool = True) -> Iterator[StreamSlot | None]:
        """One of the key's SSE stream slots, taken now (429 when the key has none free), so a
        request that would start a run and stream it is refused before the run exists. The
        slot goes back when the block exits, unless `stream` took it for its response. None
        when not `wanted` (the request will not stream)."""
        if not wanted:
            yield None
            return
        slot = self._take_slot()
        try:
            yield slot
        finally:
            if not slot.taken:
                self.streams.release(slot.key)

    def _take_slot(self) -> StreamSlot:
        key = principal().key_id or "local"
        if not self.streams.acquire(key):
            raise ApiError(
                429,
                f"this key already has {self.streams.per_key} streams open; close one",
                headers={"Retry-After": "1"},
            )
        return StreamSlot(key)

    def stream(
        self,
        frames: AsyncIterator[bytes],
        headers: dict[str, str] | None = None,
        *,
        slot: StreamSlot | None = None,
    ) -> Response:
        """An SSE response counted against the key's stream cap while it is open (in `slot`,
        taken earlier by `stream_slot`, or now), and ended with an `error` frame within
        `KEY_CHECK_INTERVAL` of its key being revoked or expiring.

        The frames are produced by a task in the app's nursery, at most `STREAM_AHEAD` frames
        (and `STREAM_AHEAD_BYTES`) ahead of the response, so the response can look at its key
        between writes and on a tick while the source waits for the next event. Frames already
        produced go out together in one write (up to `STREAM_WRITE_BYTES`): a follower catching
        up on a busy log costs a write per batch, not per event.
        """
        who = principal()
        if slot is None:
            slot = self._take_slot()
        slot.taken = True
        slot_key = slot.key
        nursery: trio.Nursery = current_app.nursery  # type: ignore[attr-defined]

        async def guarded() -> AsyncIterator[bytes]:
            send, receive = trio.open_memory_channel[bytes](STREAM_AHEAD)
            producer = trio.CancelScope()
            failure: list[Exception] = []
            ahead = _Ahead()
            nursery.start_soon(_produce, frames, send, producer, failure, ahead)
            # The static key (or none, on loopback) is never revoked: no tick to check it, so
            # thousands of idle streams cost nothing while nothing happens.
            tick = math.inf if key_is_permanent(who) else KEY_CHECK_INTERVAL
            try:
                async with receive:
                    while True:
                        if not self.key_usable(who):
                            yield sse_frame(_KEY_ENDED, event="error")
                            return
                        frame: bytes | None = None
                        try:
                            with trio.move_on_after(tick):
                                frame = await receive.receive()
                        except trio.EndOfChannel:
                            break
                        if frame is not None:
                            batch, ended = _take_ready(frame, receive)
                            ahead.took(len(batch))
                            yield batch
                            if ended:
                                break
                if failure:
                    error = failure[0]
                    if not isinstance(error, CuelogError):
                        raise error
                    # The response has begun: the error goes in a last frame, in the same shape
                    # as an error answer (e.g. a log too full to take the run's end).
                    answer = error_answer(error)
                    body = error_body(answer.status, answer.message, code=answer.code)
                    yield sse_frame(body, event="error")
                    return
                if self.stopping:
                    yield sse_frame(to_json({"reason": "server shutting down"}), event="shutdown")
            finally:
                producer.cancel()
                self.streams.release(slot_key)

        return sse_response(guarded(), headers)

    def outbox(self) -> Webhooks:
        """The webhook outbox (a 503 if this server runs without one)."""
        if self.webhooks is None:
            raise ApiError(503, "webhooks are off on this server", headers={"Retry-After": "60"})
        return self.webhooks

    def models(self) -> ReadModels:
        if self.read_models is None:
            raise ApiError(503, "the read models are not running", headers={"Retry-After": "5"})
        return self.read_models

    def key_usable(self, who: Principal) -> bool:
        """Whether the key a request came with may still be used (not revoked, not expired)."""
        if who.key_id is None or key_is_permanent(who):
            return True
        info = self.domain.keys.get(who.key_id)
        return info is not None and info.usable(time.time())


class StreamSlot:
    """A key's SSE stream slot, held from before a run starts until its stream ends."""

    __slots__ = ("key", "taken")

    def __init__(self, key: str) -> None:
        self.key = key
        self.taken = False  # handed to a response, which gives it back when it ends


def _take_ready(first: bytes, receive: trio.MemoryReceiveChannel[bytes]) -> tuple[bytes, bool]:
    """`first` and the frames already waiting after it, joined (up to `STREAM_WRITE_BYTES`);
    and whether the source has ended."""
    frames = [first]
    size = len(first)
    while size < STREAM_WRITE_BYTES:
        try:
            frame = receive.receive_nowait()
        except trio.WouldBlock:
            break
        except trio.EndOfChannel:
            return b"".join(frames), True
        frames.append(frame)
        size += len(frame)
    return (first if len(frames) == 1 else b"".join(frames)), False


def key_is_permanent(who: Principal) -> bool:
    """The static key of the configuration, or no key: nothing can revoke or expire it."""
    return who.key_id is None or who.key_id == STATIC_KEY_ID


# How many frames (and bytes of them: at least one frame goes) a stream's source may produce
# ahead of its response, and how many bytes of ready frames one write carries.
STREAM_AHEAD = 32
STREAM_AHEAD_BYTES = 32 << 10
STREAM_WRITE_BYTES = 64 << 10
# How often an open stream checks that its key is still usable.
KEY_CHECK_INTERVAL = 0.25
_KEY_ENDED = error_body(
    401, "the API key was revoked or has expired; the stream has ended", code="key_revoked"
)


class _Ahead:
    """How many bytes of frames a stream's source has produced that its response has not taken
    yet: the source waits once they reach `STREAM_AHEAD_BYTES`, so a client that stops reading
    holds a bounded few frames, never a growing buffer."""

    __slots__ = ("bytes", "drained")

    def __init__(self) -> None:
        self.bytes = 0
        self.drained = trio.Event()

    async def room(self, size: int) -> None:
        while self.bytes >= STREAM_AHEAD_BYTES:
            self.drained = trio.Event()
            await self.drained.wait()
        self.bytes += size

    def took(self, size: int) -> None:
        self.bytes -= size
        self.drained.set()


async def _produce(
    frames: AsyncIterator[bytes],
    send: trio.MemorySendChannel[bytes],
    scope: trio.CancelScope,
    failure: list[Exception],
    ahead: _Ahead,
) -> None:
    """Feed a stream's frames to its response until they end, the response goes away or the
    scope is cancelled; a failure is handed to the response (never to the app's nursery)."""
    with scope:
        async with send:
            try:
                async for frame in frames:
                    await ahead.room(len(frame))
                    await send.send(frame)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the response has gone away
            except Exception as exc:  # the response re-raises it where it belongs
                failure.append(exc)
            finally:
                # Left at a yield, the source's own clean-up (cancel on disconnect) runs now,
                # not whenever the generator is collected.
                aclose = getattr(frames, "aclose", None)
                if aclose is not None:
                    await aclose()


# -- request helpers -------------------------------------------------------------------------------


def cancel_on_disconnect() -> bool:
    return request.headers.get("x-cuelog-on-disconnect", "").lower() == "cancel"


def run_headers(sent: Sent) -> dict[str, str]:
    return {"X-Run-Id": sent.run_id, "X-Session-Key": sent.session_key}


def wants_sse() -> bool:
    return "text/event-stream" in request.headers.get("accept", "")


def event_json(event: RecordedEvent) -> bytes:
    return to_json(
        EventOut(
            event.seq,
            event.stream,
            event.version,
            event.type,
            event.ts,
            event.actor,
            event.causation,
            event.correlation,
            event_data(event),
            event.hash.hex(),
            event.prev.hex(),
        )
    )


def event_frame(event: RecordedEvent) -> bytes:
    return sse_frame(event_json(event), event=event.type, id=event.seq)


def event_page(
    events: list[RecordedEvent], limit: int, *, scanned_to: int | None = None
) -> Response:
    """A page of events: up to `limit` of them; `next_cursor` is the last seq if more follow.

    `scanned_to` is where a filtered scan stopped short of the log's end (its bound reached):
    the page may be short or empty, and `next_cursor` says where to go on.
    """
    more = len(events) > limit
    events = events[:limit]
    cursor: int | None = events[-1].seq if more and events else None
    if cursor is None and scanned_to is not None:
        cursor = scanned_to
    body = b'{"data":[' + b",".join(event_json(e) for e in events) + b'],"next_cursor":'
    body += (str(cursor).encode() if cursor is not None else b"null") + b"}"
    return json_response(body)


async def scan_events(
    log: EventLog,
    after: int,
    limit: int,
    keep: Callable[[RecordedEvent], bool],
    *,
    budget: int = SCAN_EVENTS_PER_PAGE,
) -> tuple[list[RecordedEvent], int | None]:
    """Up to `limit + 1` events after `after` that `keep` accepts, reading at most `budget`
    events, a batch at a time with a checkpoint between batches (a filter that matches nothing
    must not hold the event loop while the whole log is read). Also returns the seq the scan
    stopped at when it stopped before the end of the log, else None."""
    out: list[RecordedEvent] = []
    cursor = after
    scanned = 0
    while len(out) <= limit:
        if scanned >= budget:
            return out, cursor
        batch = log.read_all(cursor, min(SCAN_EVENTS_BATCH, budget - scanned))
        if not batch:
            return out, None
        for event in batch:
            cursor = event.seq
            scanned += 1
            if keep(event):
                out.append(event)
                if len(out) > limit:
                    break
        await trio.lowlevel.checkpoint()
    return out, None


def page_json(data: list[Any], next_cursor: str | None) -> Response:
    return json_response(to_json({"data": data, "next_cursor": next_cursor}))


def check_id(kind: str, value: str) -> str:
    """`value` if it can name an agent, session or run; a 400 naming `kind` otherwise."""
    if not is_valid_id(value):
        raise ApiError(400, f"{kind} must be {ID_RULE}", param=kind)
    return value
