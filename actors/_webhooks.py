"""Webhooks: a run's outcome POSTed to a `callback_url`, through an outbox that is the log.

A run has a callback when it was asked for (`WebhookRequested`, stream `webhook:<run id>`) or when
its agent had a default one as the run started (its `RunStarted` spec). The outbox follows the
log from a checkpoint (a snapshot saved every second), so what happened while it was not
running is taken up when it starts. When the run settles, the outcome is queued once: a
`WebhookQueued` on `delivery:<id>`, where the delivery id is the hash of the run's settling
event (appended at version 0, so two queuers cannot both win). Every
attempt is a `WebhookAttempted` with its status; retries back off exponentially with jitter on
network errors, 408, 425, 429 and 5xx until `retry_window` has passed since queuing, then the
delivery is a dead letter until `redeliver`. After a restart, queued deliveries go on where their
last attempt left them. Delivery is at least once: an attempt cut off by a crash before it was
recorded is sent again, with the same delivery id, which receivers use to drop repeats.

Each request carries `Cuelog-Delivery` (the id), `Cuelog-Timestamp` (unix seconds),
`Cuelog-Signature: v1=<hex HMAC-SHA256 of "<timestamp>.<body>">` and `Cuelog-Signer`, whose
secret signed it: the run's agent's (`agent:<id>`), else its API key's (`key:<id>`), else the
server's (`server`), as set when the attempt is made. The target passes the same
address policy as `http_fetch` (no loopback, private or link-local address unless
`allow_private`) both when the callback is given and at every attempt, and the connection goes
to the address that was checked.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Final, Literal, final

import httpx
import msgspec
import structlog
import trio

from cuelog.actors._commands import RunView
from cuelog.actors._domain import Domain
from cuelog.actors._errors import Conflict, Invalid, NotFound, ToolError
from cuelog.actors._events import (
    DOMAIN_CODEC,
    TERMINAL_EVENTS,
    AgentSpec,
    RunStarted,
    WebhookAttempted,
    WebhookOutcome,
    WebhookQueued,
    WebhookRequested,
    WebhookRequeued,
)
from cuelog.actors._names import (
    DELIVERY,
    RUN,
    delivery_stream,
    run_stream,
    stream_id,
    stream_prefix,
    webhook_stream,
)
from cuelog.actors._readers import decode_event
from cuelog.actors._run import RunState, fold_run, run_view
from cuelog.actors._sealed import DataKeys
from cuelog.actors._tools_net import (
    MAX_URL_CHARS,
    IPAddress,
    _resolve,
    public_addresses_only,
)
from cuelog.actors._webhook_secrets import (
    SERVER_SIGNER,
    WebhookSecrets,
    agent_signer,
    key_signer,
)
from cuelog.runtime import (
    NO_STREAM,
    ActorOwnedElsewhere,
    CuelogError,
    EventLog,
    LeaseTable,
    LogClosed,
    RecordedEvent,
    WrongExpectedVersion,
    event_type,
)

logger = structlog.get_logger("cuelog.webhooks")

DeliveryStatus = Literal["pending", "delivered", "failed"]
_RETRYABLE: Final = frozenset({408, 425, 429})
MAX_NAP: Final = 60.0
MAX_ERROR_CHARS: Final = 300
_body = msgspec.json.Encoder()
CHECKPOINT: Final = "outbox"  # the snapshot key of the follower's checkpoint
CHECKPOINT_EVERY: Final = 1.0  # seconds
RECORD_WITHIN: Final = 5.0  # seconds an attempt's outcome may take to record while closing
_RUN_PREFIX: Final = stream_prefix(RUN)
_REQUESTED: Final = event_type(WebhookRequested)
_RUN_STARTED: Final = event_type(RunStarted)
_OUTBOX_CHANGES: Final = frozenset(
    event_type(e) for e in (WebhookQueued, WebhookAttempted, WebhookRequeued)
)


class _Checkpoint(msgspec.Struct, frozen=True):
    seq: int
    requested: dict[str, str]
    pending: list[str]


class _StartedSpec(msgspec.Struct):
    """The part of a RunStarted the outbox reads (the rest is skipped, not built)."""

    spec: AgentSpec


_checkpoint_encoder = msgspec.msgpack.Encoder()
_checkpoint_decoder = msgspec.msgpack.Decoder(_Checkpoint)
_spec_decoder = msgspec.msgpack.Decoder(_StartedSpec)


class WebhookSettings(msgspec.Struct, frozen=True, kw_only=True):
    """How deliveries are signed, retried and where they may go."""

    secret: str | None = None
    allow_private: bool = False
    retry_window: float = 86_400.0  # seconds after queuing that retries stop
    backoff_base: float = 2.0  # the first retry waits about this long; each next one twice that
    backoff_max: float = 3_600.0
    timeout: float = 10.0  # one attempt, connect to answer
    concurrency: int = 8  # attempts in flight at once


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """`v1=` and the hex HMAC-SHA256 of `<timestamp>.<body>` under `secret`."""
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


class Attempt(msgspec.Struct, frozen=True, kw_only=True):
    attempt: int
    outcome: WebhookOutcome
    at: float
    status_code: int | None
    error: str | None
    next_at: float | None


class Delivery(msgspec.Struct, kw_only=True):
    """A delivery folded from its stream."""

    id: str
    run_id: str
    url: str
    body: str
    queued_at: float
    status: DeliveryStatus = "pending"
    agent_id: str = ""
    key_id: str | None = None
    window_start: float = 0.0
    next_at: float = 0.0
    attempts: list[Attempt] = msgspec.field(default_factory=list)
    version: int = 0

    def apply(self, event: object) -> None:
        match event:
            case WebhookAttempted():
                self.attempts.append(
                    Attempt(
                        attempt=event.attempt,
                        outcome=event.outcome,
                        at=event.at,
                        status_code=event.status_code,
                        error=event.error,
                        next_at=event.next_at,
                    )
                )
                self.status = "pending" if event.outcome == "retry" else event.outcome
                self.next_at = event.next_at or 0.0
            case WebhookRequeued(at=at):
                self.status, self.window_start, self.next_at = "pending", at, at
        self.version += 1

    @property
    def attempt_count(self) -> int:
        """Attempts since it was last queued or requeued (what the backoff counts)."""
        count = 0
        for attempt in reversed(self.attempts):
            if attempt.at < self.window_start:
                break
            count += 1
        return count


def fold_delivery(log: EventLog, delivery_id: str) -> Delivery | None:
    delivery: Delivery | None = None
    for record in log.read_stream(delivery_stream(delivery_id)):
        event = DOMAIN_CODEC.decode(record.type, record.data)
        if isinstance(event, WebhookQueued):
            delivery = Delivery(
                id=event.delivery_id,
                run_id=event.run_id,
                url=event.url,
                body=event.body,
                queued_at=event.queued_at,
                agent_id=event.agent_id,
                key_id=event.key_id,
                window_start=event.queued_at,
                next_at=event.queued_at,
                version=1,
            )
        elif delivery is not None:
            delivery.apply(event)
    return delivery


def check_url(text: str) -> httpx.URL:
    """`text` as an http(s) URL without credentials, or Invalid naming `callback_url`."""
    if len(text) > MAX_URL_CHARS:
        raise Invalid(f"callback_url is over {MAX_URL_CHARS} characters", "callback_url")
    try:
        url = httpx.URL(text)
    except (httpx.InvalidURL, ValueError) as exc:
        raise Invalid(f"callback_url is not a URL: {exc}", "callback_url") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise Invalid("callback_url must be an http or https URL with a host", "callback_url")
    if url.userinfo:
        raise Invalid("callback_url must not carry credentials", "callback_url")
    return url


@final
class Webhooks:
    """The outbox: requests, queued deliveries and their attempts, and the task that sends."""

    def __init__(
        self,
        domain: Domain,
        settings: WebhookSettings,
        *,
        now: Callable[[], float] = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
        key_file: DataKeys | None = None,
    ) -> None:
        self.domain = domain
        self.secrets = WebhookSecrets(domain.log, key_file)
        self._signing = trio.Event()  # set once some secret can sign: the sender starts then
        if settings.secret or self.secrets.any():
            self._signing.set()
        self.secrets.on_change = self._secrets_changed
        self.log: EventLog = domain.log
        self.settings = settings
        self._now = now
        self._transport = transport
        self._requested: dict[str, str] = {}  # run id -> url, until its outcome is queued
        self._pending: dict[str, Delivery] = {}  # delivery id -> delivery not yet final
        self._sending: set[str] = set()
        # Whether this process sends (and so keeps the outbox in memory): always when it runs
        # alone; in cluster mode only while it holds the outbox's service lease.
        self._sender = True
        self._followed = 0  # the last seq the follower has taken in
        self._changed = trio.Event()
        self._limiter = trio.CapacityLimiter(max(1, settings.concurrency))
        self._random = random.Random()

    # -- requests ------------------------------------------------------------------------------

    async def check_target(
        self,
        text: str,
        *,
        agent_id: str | None = None,
        key_id: str | None = None,
        secret_given: bool = False,
    ) -> str:
        """Refuse a callback URL that is malformed or whose host the address policy refuses
        (resolved now; every attempt checks again). Also refuses when no secret could sign its
        deliveries: the server's, the agent's, the API key's, or one given with it."""

        def signable() -> bool:
            return bool(
                secret_given
                or self.settings.secret
                or (agent_id is not None and self.secrets.has(agent_signer(agent_id)))
                or (key_id is not None and self.secrets.has(key_signer(key_id)))
            )

        if not signable():
            self.secrets.catch_up()  # set through another process a moment ago?
        if not signable():
            raise Invalid(
                "callback_url needs a webhook secret: webhooks.secret on the server, or a "
                "webhook_secret on the agent or the API key",
                "callback_url",
            )
        url = check_url(text)
        await self._checked_address(url, param=True)
        return str(url)

    async def set_secret(self, owner: str, secret: str, *, actor: str | None = None) -> None:
        """Sign `owner`'s deliveries (`agent:<id>`, `key:<id>`) with `secret` from now on."""
        await self.secrets.set(owner, secret, actor=actor)
        self._signing.set()

    def _secrets_changed(self) -> None:
        if self.secrets.any():
            self._signing.set()

    def signer(self, delivery: Delivery) -> tuple[str, str] | None:
        """The most specific secret set for a delivery, and whose it is (as recorded by the
        time of asking, through whichever process)."""
        with suppress(CuelogError):  # the log unreachable: sign with what is known
            self.secrets.catch_up()
        owners = [agent_signer(delivery.agent_id)] if delivery.agent_id else []
        if delivery.key_id is not None:
            owners.append(key_signer(delivery.key_id))
        for owner in owners:
            secret = self.secrets.get(owner)
            if secret is not None:
                return owner, secret
        if self.settings.secret:
            return SERVER_SIGNER, self.settings.secret
        return None

    async def request(self, run_id: str, url: str, *, actor: str | None = None) -> None:
        """Deliver the run's outcome to `url` when it settles (at once if it has). A repeat for
        the same run (a retried request) keeps the first URL."""
        try:
            await self.log.append(
                webhook_stream(run_id),
                [WebhookRequested(run_id=run_id, url=url)],
                expected_version=NO_STREAM,
                actor=actor,
            )
        except WrongExpectedVersion:
            return
        if not self._sender:
            return  # the sending node's follower takes the request up
        self._requested[run_id] = url
        settled = self._settling_event(run_id)
        if settled is not None:
            await self._queue(run_id, settled)

    def _folded_run(self, run_id: str) -> RunView:
        state = RunState()
        records = self.log.read_stream(run_stream(run_id))
        for record in records:
            event = decode_event(record)
            if event is not None:
                state = fold_run(state, event)
        return run_view(run_id, state, len(records))

    def _settling_event(self, run_id: str) -> RecordedEvent | None:
        stream = run_stream(run_id)
        version = self.log.stream_version(stream)
        if not version:
            return None
        [last] = self.log.read_stream(stream, version, limit=1)
        return last if last.type in TERMINAL_EVENTS else None

    async def _queue(self, run_id: str, settled: RecordedEvent) -> None:
        """Record the outcome in the outbox, once per settling event."""
        url = self._requested.pop(run_id, None)
        if url is None:
            return
        delivery_id = settled.hash.hex()
        try:
            view = await self.domain.get_run(run_id)
        except ActorOwnedElsewhere:  # cluster mode: read the settled run from the log
            view = self._folded_run(run_id)
        body = _body.encode(
            {
                "id": delivery_id,
                "object": "event",
                "type": f"run.{view.status}",
                "created": settled.ts // 1_000_000,
                "data": {
                    "run_id": run_id,
                    "status": view.status,
                    "session_key": view.session_key,
                    "agent_id": view.agent_id,
                    "content": view.content,
                    "usage": view.usage,
                    "error": view.error,
                    "seq": settled.seq,
                },
            }
        ).decode()
        now = self._now()
        event = WebhookQueued(
            delivery_id=delivery_id,
            run_id=run_id,
            url=url,
            body=body,
            queued_at=now,
            agent_id=view.agent_id,
            key_id=view.owner,
        )
        try:
            await self.log.append(delivery_stream(delivery_id), [event], expected_version=NO_STREAM)
        except WrongExpectedVersion:
            return  # queued already
        self._pending[delivery_id] = Delivery(
            id=delivery_id,
            run_id=run_id,
            url=url,
            body=body,
            queued_at=now,
            agent_id=view.agent_id,
            key_id=view.owner,
            window_start=now,
            next_at=now,
            version=1,
        )
        self._changed.set()

    # -- reads and redelivery ------------------------------------------------------------------

    def get(self, delivery_id: str) -> Delivery:
        if len(delivery_id) != 64 or any(c not in "0123456789abcdef" for c in delivery_id):
            raise NotFound(f"no delivery {delivery_id!r}")
        delivery = fold_delivery(self.log, delivery_id)
        if delivery is None:
            raise NotFound(f"no delivery {delivery_id!r}")
        return delivery

    async def list_deliveries(
        self,
        *,
        status: DeliveryStatus | None = None,
        run_id: str | None = None,
        after: str | None = None,
        limit: int = 50,
        scan: int = 2_000,
    ) -> tuple[list[Delivery], str | None]:
        """A page of deliveries in id order, and the next page's cursor (or None). At most
        `scan` deliveries are read per page, so a page may be short with a cursor to go on."""
        prefix = stream_prefix(DELIVERY)
        cursor = None if after is None else delivery_stream(after)
        out: list[Delivery] = []
        scanned = 0
        while len(out) < limit and scanned < scan:
            names = self.log.list_streams(prefix, after=cursor, limit=min(64, scan - scanned))
            if not names:
                return out, None
            for name in names:
                cursor = name
                scanned += 1
                delivery = fold_delivery(self.log, stream_id(name, DELIVERY))
                if delivery is None:
                    continue
                if status is not None and delivery.status != status:
                    continue
                if run_id is not None and delivery.run_id != run_id:
                    continue
                out.append(delivery)
                if len(out) >= limit:
                    break
            await trio.lowlevel.checkpoint()
        more = cursor is not None and self.log.list_streams(prefix, after=cursor, limit=1)
        return out, (stream_id(cursor, DELIVERY) if more and cursor else None)

    async def redeliver(self, delivery_id: str, *, actor: str | None = None) -> Delivery:
        """Send a dead letter again (attempts start over with a new retry window)."""
        delivery = self.get(delivery_id)
        if delivery.status != "failed":
            raise Conflict(f"delivery {delivery_id!r} is {delivery.status}, not failed")
        event = WebhookRequeued(at=self._now())
        try:
            await self.log.append(
                delivery_stream(delivery_id),
                [event],
                expected_version=delivery.version,
                actor=actor,
            )
        except WrongExpectedVersion:
            raise Conflict(f"delivery {delivery_id!r} changed meanwhile; try again") from None
        delivery.apply(event)
        if self._sender:
            self._pending[delivery_id] = delivery
            self._changed.set()
        return delivery

    # -- sending -------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Follow the log from the last checkpoint (callbacks asked for, runs settling, the
        outbox changing), and send what is due. Nothing is followed until some secret can sign."""
        if not self._signing.is_set():
            task_status.started()
            task_status = trio.TASK_STATUS_IGNORED
            await self._signing.wait()
        after = self._restore()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._follow, after)
            nursery.start_soon(self._keep_checkpoint)
            task_status.started()
            while True:
                self._changed = trio.Event()
                now = self._now()
                wake_at = now + MAX_NAP
                for delivery in list(self._pending.values()):
                    if delivery.id in self._sending:
                        continue
                    if delivery.next_at <= now:
                        self._sending.add(delivery.id)
                        nursery.start_soon(self._attempt, delivery)
                    else:
                        wake_at = min(wake_at, delivery.next_at)
                with trio.move_on_after(max(0.0, wake_at - self._now())):
                    await self._changed.wait()

    async def run_as_owner(self) -> None:
        """Send as the cluster's one sender while this node holds the outbox's lease: start
        afresh from the checkpoint (the previous sender kept it), so deliveries go on where
        they were left; an attempt cut off with the previous sender is sent again, with the
        same delivery id."""
        self._requested.clear()
        self._pending.clear()
        self._sending.clear()
        self._followed = 0
        self._sender = True
        try:
            await self.run()
        finally:
            self._sender = False
            self._pending.clear()
            self._requested.clear()

    # -- following the log ---------------------------------------------------------------------

    def _restore(self) -> int:
        """Take up the last checkpoint; return the seq to follow the log from. Without one
        (a new or copied log) the whole log is read once: queuing is idempotent."""
        saved = self.log.load_snapshot(CHECKPOINT)
        if saved is None:
            return 0
        try:
            checkpoint = _checkpoint_decoder.decode(saved[1])
        except (msgspec.DecodeError, msgspec.ValidationError):
            return 0
        self._requested.update(checkpoint.requested)
        for delivery_id in checkpoint.pending:
            delivery = fold_delivery(self.log, delivery_id)
            if delivery is not None and delivery.status == "pending":
                self._pending[delivery.id] = delivery
        self._followed = checkpoint.seq
        return checkpoint.seq

    async def _follow(self, after_seq: int) -> None:
        async for record in self.log.subscribe(after_seq):
            try:
                await self._see(record)
            except CuelogError as exc:  # one event's trouble must not stop the outbox
                logger.warning("webhook follower", seq=record.seq, error=str(exc))
            self._followed = record.seq

    async def _see(self, record: RecordedEvent) -> None:
        """Bring the outbox up to an event (the same event may already have been handled when
        this process wrote it: every step here is idempotent)."""
        if record.type in TERMINAL_EVENTS and record.stream.startswith(_RUN_PREFIX):
            run_id = stream_id(record.stream, RUN)
            if run_id not in self._requested:
                url = self._agent_callback(run_id)
                if url is None or self._queued(record):
                    return
                self._requested[run_id] = url
            await self._queue(run_id, record)
        elif record.type == _REQUESTED:
            event = DOMAIN_CODEC.decode(record.type, record.data)
            assert isinstance(event, WebhookRequested)
            settled = self._settling_event(event.run_id)
            if settled is None:
                self._requested[event.run_id] = event.url
            elif not self._queued(settled):
                self._requested[event.run_id] = event.url
                await self._queue(event.run_id, settled)
        elif record.type in _OUTBOX_CHANGES:
            delivery = fold_delivery(self.log, stream_id(record.stream, DELIVERY))
            if delivery is None or delivery.id in self._sending:
                return
            if delivery.status == "pending":
                if delivery.id not in self._pending:
                    self._pending[delivery.id] = delivery
                    self._changed.set()
            else:
                self._pending.pop(delivery.id, None)

    def _queued(self, settled: RecordedEvent) -> bool:
        return bool(self.log.stream_version(delivery_stream(settled.hash.hex())))

    def _agent_callback(self, run_id: str) -> str | None:
        """The agent's default callback as the run started with it (its RunStarted), if any."""
        records = self.log.read_stream(run_stream(run_id), 1, limit=1)
        if not records or records[0].type != _RUN_STARTED:
            return None
        first = records[0]
        try:
            started = _spec_decoder.decode(first.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None
        return started.spec.callback_url

    async def _keep_checkpoint(self) -> None:
        """Save where the follower is (and what is waiting) now and then, so a restart reads
        only the log since."""
        saved = -1
        try:
            while True:
                await trio.sleep(CHECKPOINT_EVERY)
                if self._followed != saved:
                    saved = self._followed
                    await self._save_checkpoint()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2), suppress(LogClosed):
                if self._followed != saved:
                    await self._save_checkpoint()

    async def _save_checkpoint(self) -> None:
        checkpoint = _Checkpoint(
            seq=self._followed,
            requested=dict(self._requested),
            pending=sorted(self._pending),
        )
        await self.log.save_snapshot(CHECKPOINT, 0, _checkpoint_encoder.encode(checkpoint))

    async def _attempt(self, delivery: Delivery) -> None:
        try:
            await self._attempt_once(delivery)
        except CuelogError as exc:  # the log is closing: the next start takes it up
            logger.warning("webhook attempt not recorded", delivery_id=delivery.id, error=str(exc))
        finally:
            self._sending.discard(delivery.id)
            self._changed.set()

    async def _attempt_once(self, delivery: Delivery) -> None:
        async with self._limiter:
            number = delivery.attempt_count + 1
            status_code, error, retry = await self._send(delivery)
            now = self._now()
            outcome: WebhookOutcome = "delivered"
            next_at = None
            if status_code is None or not 200 <= status_code < 300:
                outcome = "retry" if retry else "failed"
            if outcome == "retry":
                delay = min(
                    self.settings.backoff_max, self.settings.backoff_base * 2 ** (number - 1)
                )
                delay = delay / 2 + self._random.uniform(0, delay / 2)  # equal jitter
                next_at = now + delay
                if next_at > delivery.window_start + self.settings.retry_window:
                    outcome, next_at = "failed", None
                    gave_up = f"gave up after {number} attempts"
                    error = f"{error}; {gave_up}" if error else gave_up
            event = WebhookAttempted(
                attempt=number,
                outcome=outcome,
                at=now,
                status_code=status_code,
                error=error,
                next_at=next_at,
            )
            # Sent is sent: record it even while the outbox closes, or a restart sends it again.
            with trio.CancelScope(shield=True), trio.move_on_after(RECORD_WITHIN) as limit:
                await self.log.append(delivery_stream(delivery.id), [event])
            if limit.cancelled_caught:
                logger.warning("webhook attempt not recorded in time", delivery_id=delivery.id)
                return
            delivery.apply(event)
            logger.info(
                "webhook attempt",
                delivery_id=delivery.id,
                run_id=delivery.run_id,
                attempt=number,
                outcome=outcome,
                status_code=status_code,
            )
            if outcome != "retry":
                self._pending.pop(delivery.id, None)

    async def _send(self, delivery: Delivery) -> tuple[int | None, str | None, bool]:
        """POST the body once: (status code, error, whether to retry)."""
        signer = self.signer(delivery)
        if signer is None:
            return None, "no webhook secret is set for it", True
        signed_by, secret = signer
        body = delivery.body.encode()
        url = httpx.URL(delivery.url)
        try:
            address = await self._checked_address(url)
        except ToolError as exc:
            return None, str(exc)[:MAX_ERROR_CHARS], False
        except Invalid as exc:
            return None, str(exc)[:MAX_ERROR_CHARS], False
        timestamp = int(self._now())
        headers = {
            "Host": url.netloc.decode("ascii"),
            "Content-Type": "application/json",
            "User-Agent": "cuelog-webhooks/1",
            "Cuelog-Delivery": delivery.id,
            "Cuelog-Timestamp": str(timestamp),
            "Cuelog-Signature": signature(secret, timestamp, body),
            "Cuelog-Signer": signed_by,
        }
        extensions = {"sni_hostname": url.raw_host.decode("ascii")} if url.scheme == "https" else {}
        timeout = self.settings.timeout
        with trio.move_on_after(timeout):
            async with httpx.AsyncClient(
                trust_env=False, follow_redirects=False, transport=self._transport
            ) as client:
                try:
                    response = await client.post(
                        url.copy_with(host=str(address)),
                        content=body,
                        headers=headers,
                        extensions=extensions,
                        timeout=timeout,
                    )
                except httpx.TransportError as exc:
                    return None, f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS], True
            code = response.status_code
            retry = code >= 500 or code in _RETRYABLE
            return code, None if 200 <= code < 300 else f"HTTP {code}", retry
        return None, f"no answer within {timeout:g} s", True

    async def _checked_address(self, url: httpx.URL, *, param: bool = False) -> IPAddress:
        host = url.raw_host.decode("ascii")
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            addresses = await _resolve(host, port)
        except ToolError as exc:
            if param:
                message = str(exc).replace("http_fetch", "callback_url")
                raise Invalid(message, "callback_url") from None
            raise
        if not self.settings.allow_private:
            for address in addresses:
                reason = public_addresses_only(address, port)
                if reason is not None:
                    message = f"callback_url: refused {url.scheme}://{host}: {reason}"
                    if param:
                        raise Invalid(message, "callback_url")
                    raise ToolError(message)
        return addresses[0]


@asynccontextmanager
async def open_webhooks(
    domain: Domain,
    settings: WebhookSettings,
    *,
    now: Callable[[], float] = time.time,
    send: bool = True,
    transport: httpx.AsyncBaseTransport | None = None,
    key_file: DataKeys | None = None,
    leases: LeaseTable | None = None,
) -> AsyncIterator[Webhooks]:
    """The outbox and, with `send`, its sender, until the block ends. With `leases` (cluster
    mode) the sender runs only while this node holds the service lease `service:webhooks`."""
    webhooks = Webhooks(domain, settings, now=now, transport=transport, key_file=key_file)
    async with trio.open_nursery() as nursery:
        if leases is not None:  # other nodes set secrets too: take them up as they come
            nursery.start_soon(webhooks.secrets.follow, name="webhook secrets")
        if send and leases is not None:
            webhooks._sender = False
            nursery.start_soon(leases.run_service, "webhooks", webhooks.run_as_owner)
        elif send:
            await nursery.start(lambda task_status: webhooks.run(task_status=task_status))
        yield webhooks
        nursery.cancel_scope.cancel()
