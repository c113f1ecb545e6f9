"""The runs catalog: one row per run (who, which agent and model, status, timings, steps, tool
calls, tokens), folded from the log by a projection, listed newest first with filters and a
cursor without reading any run's stream.

Keys of its state:
- `r:<run id>` → the run's row (msgpack `RunRow`)
- `t:<u64 seq>` → run id, by the seq that first named the run (newest first: scan reversed)
- `a:<agent>\\0<u64 seq>`, `s:<session>\\0<u64 seq>`, `o:<owner>\\0<u64 seq>` → run id: the
  same order for one agent, one session, one key, so a filtered page reads only its own runs
- `k:<session>` → the session's agent and end user, for the runs its messages start
- `u:…` → usage by the hour (see `_usage`)
"""

from __future__ import annotations

import struct
from typing import Final

import msgspec

from cuelog.actors._commands import ADMIN, Caller
from cuelog.actors._events import (
    ApprovalDenied,
    ApprovalGranted,
    ApprovalRequested,
    AssistantMessage,
    LoopFired,
    MessageAccepted,
    ModelRequested,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunStarted,
    SessionCreated,
    ToolCallRequested,
    decoded,
)
from cuelog.actors._messages import Usage
from cuelog.actors._names import LOOP, RUN, SESSION, stream_id
from cuelog.actors._usage import UsageCounts
from cuelog.runtime import Projection, ProjectionState, RecordedEvent, event_type

_U64: Final = struct.Struct(">Q")

# What one page looks at at most: a filter matching few of many runs gets short pages and a
# cursor instead of holding the server while every run is read.
SCAN_PER_PAGE: Final = 5_000


class RunRow(msgspec.Struct, kw_only=True):
    """One run as the catalog knows it. Times are microseconds since the Unix epoch."""

    id: str
    seq: int  # the first event that named the run: the catalog's order
    status: str = "queued"
    session_key: str = ""
    agent_id: str = ""
    owner: str | None = None
    user_id: str | None = None
    loop_id: str | None = None
    provider: str = ""
    model: str = ""
    created_at: int = 0
    started_at: int | None = None
    ended_at: int | None = None
    steps: int = 0
    tool_calls: int = 0
    usage: Usage = msgspec.field(default_factory=Usage)
    finish_reason: str | None = None
    error: str | None = None
    pending_approvals: int = 0

    @property
    def duration_ms(self) -> float | None:
        if self.started_at is None or self.ended_at is None:
            return None
        return round((self.ended_at - self.started_at) / 1000, 3)


class _SessionRow(msgspec.Struct, array_like=True):
    agent_id: str
    user_id: str | None


_row_encoder = msgspec.msgpack.Encoder()
_row_decoder = msgspec.msgpack.Decoder(RunRow)
_session_decoder = msgspec.msgpack.Decoder(_SessionRow)

_WANTED: Final = frozenset(
    event_type(e)
    for e in (
        SessionCreated,
        MessageAccepted,
        LoopFired,
        RunStarted,
        ModelRequested,
        ToolCallRequested,
        ApprovalRequested,
        ApprovalGranted,
        ApprovalDenied,
        AssistantMessage,
        RunCompleted,
        RunFailed,
        RunCancelled,
    )
)


def _dims(row: RunRow) -> tuple[str, str, str, str, str]:
    """Who and what a run's usage is counted under (see `_usage`)."""
    return (row.owner or "", row.agent_id, row.provider, row.model, row.user_id or "")


def _index(prefix: bytes, value: str, seq: int) -> bytes:
    return prefix + value.encode() + b"\0" + _U64.pack(seq)


def _run_key(run_id: str) -> bytes:
    return b"r:" + run_id.encode()


class RunsCatalog(Projection):
    """Folds run, session and loop events into one row per run."""

    name = "runs"
    version = 2  # 2: the budgets' spend by key and by agent

    def __init__(self) -> None:
        # The rows this batch changed, and the index values each had before it.
        self._pending: dict[str, tuple[RunRow, tuple[str, str, str]]] = {}
        self._usage = UsageCounts()  # and the usage it added

    def apply(self, event: RecordedEvent, state: ProjectionState) -> None:
        if event.type not in _WANTED:
            return
        payload = decoded(event)
        kind, _, name = event.stream.partition(":")
        match payload:
            case SessionCreated(agent_id=agent_id, metadata=metadata) if kind == SESSION:
                user = metadata.get("user_id")
                known = _SessionRow(agent_id, user if isinstance(user, str) else None)
                state.put(b"k:" + name.encode(), _row_encoder.encode(known))
            case MessageAccepted(run_id=run_id, metadata=metadata) if kind == SESSION:
                row = self._row(state, run_id, event)
                row.session_key = name
                session = state.get(b"k:" + name.encode())
                if session is not None:
                    known = _session_decoder.decode(session)
                    row.agent_id = row.agent_id or known.agent_id
                    row.user_id = known.user_id
                user = metadata.get("user_id")
                if isinstance(user, str):
                    row.user_id = user
            case LoopFired(run_id=run_id) if kind == LOOP:
                self._row(state, run_id, event).loop_id = name
            case _ if kind == RUN:
                self._apply_run(stream_id(event.stream, RUN), payload, event, state)

    def _apply_run(
        self, run_id: str, payload: object, event: RecordedEvent, state: ProjectionState
    ) -> None:
        row = self._row(state, run_id, event)
        match payload:
            case RunStarted(session_key=session_key, agent_id=agent_id, spec=spec, owner=owner):
                first_start = row.started_at is None
                row.status = "running"
                row.session_key = session_key
                row.agent_id = agent_id
                row.owner = owner
                row.provider = spec.provider
                row.model = spec.model
                row.started_at = event.ts
                if row.user_id is None and spec.request is not None:
                    row.user_id = spec.request.end_user
                if first_start:  # a restarted run is one run
                    self._usage.add(event.ts, _dims(row), runs=1)
            case ModelRequested(step=step):
                row.steps = max(row.steps, step)
            case ToolCallRequested():
                row.tool_calls += 1
            case ApprovalRequested():
                row.pending_approvals += 1
                row.status = "waiting_approval"
            case ApprovalGranted() | ApprovalDenied():
                row.pending_approvals = max(row.pending_approvals - 1, 0)
                if row.pending_approvals == 0 and row.status == "waiting_approval":
                    row.status = "running"
            case AssistantMessage(usage=usage):
                row.usage = row.usage + usage
                self._usage.add(event.ts, _dims(row), usage=usage)
            case RunCompleted(finish_reason=finish_reason):
                self._end(row, "completed", event)
                row.finish_reason = finish_reason
            case RunFailed(reason=reason):
                self._end(row, "failed", event)
                row.error = reason
            case RunCancelled(reason=reason):
                self._end(row, "cancelled", event)
                row.error = reason

    @staticmethod
    def _end(row: RunRow, status: str, event: RecordedEvent) -> None:
        row.status = status
        row.pending_approvals = 0
        row.ended_at = event.ts
        if row.started_at is None:
            row.started_at = event.ts

    def _row(self, state: ProjectionState, run_id: str, event: RecordedEvent) -> RunRow:
        """The run's row as this batch has it (new when this event is the first to name it);
        changed in place, it is written once, with its indexes, when the batch ends."""
        pending = self._pending.get(run_id)
        if pending is not None:
            return pending[0]
        raw = state.get(_run_key(run_id))
        if raw is None:
            state.put(b"t:" + _U64.pack(event.seq), run_id.encode())
            row, before = RunRow(id=run_id, seq=event.seq, created_at=event.ts), ("", "", "")
        else:
            row = _row_decoder.decode(raw)
            before = (row.agent_id, row.session_key, row.owner or "")
        self._pending[run_id] = (row, before)
        return row

    def flush(self, state: ProjectionState) -> None:
        for row, before in self._pending.values():
            now = (row.agent_id, row.session_key, row.owner or "")
            for prefix, value, was in zip((b"a:", b"s:", b"o:"), now, before, strict=True):
                if value != was:
                    if was:
                        state.delete(_index(prefix, was, row.seq))
                    if value:
                        state.put(_index(prefix, value, row.seq), row.id.encode())
            state.put(_run_key(row.id), _row_encoder.encode(row))
        self._pending.clear()
        self._usage.write(state)

    def discard(self) -> None:
        self._pending.clear()
        self._usage.clear()


class RunFilter(msgspec.Struct, frozen=True, kw_only=True):
    """What a listing keeps; None: any. `since`/`until` bound the creation time (µs)."""

    agent_id: str | None = None
    session_key: str | None = None
    user_id: str | None = None
    status: str | None = None
    loop_id: str | None = None
    since: int | None = None
    until: int | None = None

    def keeps(self, row: RunRow, caller: Caller) -> bool:
        return (
            (caller.admin or row.owner == caller.owner)
            and (self.agent_id is None or row.agent_id == self.agent_id)
            and (self.session_key is None or row.session_key == self.session_key)
            and (self.user_id is None or row.user_id == self.user_id)
            and (self.status is None or row.status == self.status)
            and (self.loop_id is None or row.loop_id == self.loop_id)
            and (self.since is None or row.created_at >= self.since)
            and (self.until is None or row.created_at < self.until)
        )


def run_row(state: ProjectionState, run_id: str) -> RunRow | None:
    raw = state.get(_run_key(run_id))
    return None if raw is None else _row_decoder.decode(raw)


def list_runs(
    state: ProjectionState,
    filters: RunFilter,
    *,
    caller: Caller = ADMIN,
    after: int | None = None,
    limit: int = 50,
    scan: int = SCAN_PER_PAGE,
) -> tuple[list[RunRow], int | None]:
    """Up to `limit` runs newest first, those created before seq `after` when given, and the
    cursor (a seq) of the next page or None at the end. Reads the narrowest index the filters
    allow (a session's, an agent's, the caller's own) and at most `scan` rows."""
    if filters.session_key is not None:
        prefix = b"s:" + filters.session_key.encode() + b"\0"
    elif filters.agent_id is not None:
        prefix = b"a:" + filters.agent_id.encode() + b"\0"
    elif not caller.admin:
        prefix = b"o:" + (caller.owner or "").encode() + b"\0"
    else:
        prefix = b"t:"
    start = prefix + _U64.pack(after) if after is not None else None
    out: list[RunRow] = []
    last_seq: int | None = None
    for scanned, (key, value) in enumerate(state.scan(prefix, start=start, reverse=True), 1):
        last_seq = _U64.unpack(key[-8:])[0]
        row = run_row(state, value.decode())
        if row is not None and filters.keeps(row, caller):
            out.append(row)
        if len(out) >= limit or scanned >= scan:
            break
    else:
        return out, None  # read to the end
    if last_seq is None or not any(
        True for _ in state.scan(prefix, start=prefix + _U64.pack(last_seq), reverse=True)
    ):
        return out, None
    return out, last_seq
