"""Sending each settled run's trace somewhere (an OTLP collector), driven from the log.

`TraceExport` follows the log from its own checkpoint, kept in the projection store as the
projection `trace_export` (its state: which runs were sent, and at which seq). For each batch of
events it folds the trace of every run the batch settles, hands them to the sink, and only when
the sink has taken them moves the checkpoint past the batch (in one transaction with the record
of what was sent). A sink that fails is retried with backoff, and nothing after the batch is
sent meanwhile. A crash after the sink took a batch and before the checkpoint moved sends that
batch again on restart: delivery is at least once, at most one batch twice (a stop waits for
the sink's call in flight and records what it took); trace and span ids
come from the run id, so a repeat carries the same ids.

The first time it runs it starts at the log's head: runs settled before export was turned on
are not sent.
"""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, final

import structlog
import trio

from cuelog.actors._events import TERMINAL_EVENTS
from cuelog.actors._names import RUN, run_stream, stream_id, stream_prefix
from cuelog.actors._traces import Trace, fold_trace
from cuelog.runtime import (
    EventLog,
    Projection,
    ProjectionState,
    ProjectionStore,
    RecordedEvent,
)

logger = structlog.get_logger("cuelog.trace_export")

_U64: Final = struct.Struct(">Q")
BATCH_EVENTS: Final = 256  # at most this many events (so runs) per export
BATCH_BYTES: Final = 4 << 20
RETRY_FIRST: Final = 1.0
RETRY_MAX: Final = 60.0

# Takes a batch's traces; True once the receiver has them, False (or raising) to retry.
TraceSink = Callable[[list[Trace]], Awaitable[bool]]


def settled_run(event: RecordedEvent) -> str | None:
    """The run an event ends, if it ends one."""
    if event.type in TERMINAL_EVENTS and event.stream.startswith(stream_prefix(RUN)):
        return stream_id(event.stream, RUN)
    return None


class ExportedRuns(Projection):
    """Runs whose traces were exported: `x:<run id>` → the seq that settled it."""

    name = "trace_export"
    version = 1

    def apply(self, event: RecordedEvent, state: ProjectionState) -> None:
        run_id = settled_run(event)
        if run_id is not None:
            state.put(b"x:" + run_id.encode(), _U64.pack(event.seq))


@final
class TraceExport:
    """Follows the log and sends each settled run's trace to `sink`, once it settles."""

    def __init__(
        self,
        log: EventLog,
        store: ProjectionStore,
        sink: TraceSink,
        *,
        batch: int = BATCH_EVENTS,
        retry_first: float = RETRY_FIRST,
    ) -> None:
        self.log = log
        self.store = store
        self.sink = sink
        self.projection = ExportedRuns()
        self._batch = batch
        self._retry_first = retry_first
        self.exported = 0  # traces the sink took, since start
        self.failures = 0  # sink calls that failed, since start

    def checkpoint(self) -> int:
        return self.store.checkpoint(self.projection.name).seq

    def was_exported(self, run_id: str) -> bool:
        key = b"x:" + run_id.encode()
        return self.store.read(self.projection.name, lambda state: state.get(key)) is not None

    async def _start_at_head(self) -> int:
        """The first run: start after the log's head (nothing settled before is sent)."""
        checkpoint = self.store.checkpoint(self.projection.name)
        if checkpoint.version == self.projection.version:
            return checkpoint.seq
        head = self.log.head().seq
        await self.store.reset(self.projection, head)
        return head

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Send what settled after the checkpoint, then each run as it settles, until the log
        ends its subscriptions."""
        seq = await self._start_at_head()
        task_status.started()
        while events := self.log.read_all(seq, self._batch, max_bytes=BATCH_BYTES):  # catch up
            seq = await self._send(events)
        async for event in self.log.subscribe(seq, batch=self._batch):
            if event.seq <= seq:
                continue
            events = [event]
            events += self.log.read_all(event.seq, self._batch - 1, max_bytes=BATCH_BYTES)
            seq = await self._send(events)

    async def _send(self, events: Sequence[RecordedEvent]) -> int:
        """Export the traces of the runs `events` settle, then record them and the checkpoint."""
        traces: list[Trace] = []
        for event in events:
            run_id = settled_run(event)
            if run_id is None:
                continue
            trace = fold_trace(run_id, self.log.read_stream(run_stream(run_id)))
            if trace is not None:
                traces.append(trace)
        if traces:
            await self._deliver(traces)
        # Once the sink took them, a cancellation (a stop) must not leave them unrecorded: the
        # next start would send them again.
        with trio.CancelScope(shield=bool(traces)):
            done = await self.store.apply(self.projection, events)
        return done.seq

    async def _deliver(self, traces: list[Trace]) -> None:
        wait = self._retry_first
        while True:
            try:
                if await self.sink(traces):
                    self.exported += len(traces)
                    return
                error = "the receiver refused the export"
            except Exception as exc:  # a sink's failure is retried, never the end of export
                error = f"{type(exc).__name__}: {exc}"
            self.failures += 1
            logger.warning("trace export failed", traces=len(traces), error=error, retry_in=wait)
            await trio.sleep(wait)
            wait = min(wait * 2, RETRY_MAX)
