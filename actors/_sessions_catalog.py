"""The sessions catalog and the open-runs catalog: what start-up recovery and `GET /v1/sessions`
need to know, folded from the log by projections, so neither folds every session stream.

`sessions` keys:
- `k:<key>` → the session's row (msgpack `SessionRow`), for sessions that exist and are not
  deleted
- `o:<owner>\\0<key>`, `a:<agent>\\0<key>`, `u:<user>\\0<key>` → b"": the same sessions in key
  order for one owner, one agent, one end user (the value part is length-prefixed), so a
  filtered page reads only its own sessions

`open_runs` keys:
- `r:<run id>` → `OpenRun`: a run whose stream started and has no terminal event yet
- `s:<key>` → `OpenSession`: a session (not deleted) with a current run or queued messages
- `d:<key>` → b"": a deleted session (what it records after the deletion is not work to resume)
"""

from __future__ import annotations

import struct
from typing import Final

import msgspec

from cuelog.actors._commands import ADMIN, Caller
from cuelog.actors._events import (
    TERMINAL_EVENTS,
    ApprovalDenied,
    ApprovalGranted,
    ApprovalRequested,
    MessageAccepted,
    RunAssigned,
    RunSettled,
    RunStarted,
    SessionCreated,
    SessionDeleted,
    SessionPatched,
    SessionReset,
    decoded,
)
from cuelog.actors._names import RUN, SESSION
from cuelog.runtime import Projection, ProjectionState, RecordedEvent, event_type

_U32: Final = struct.Struct(">I")

# What one page looks at at most, as the stream-scanning listing did: a combination of filters
# matching few of many sessions gets short pages and a cursor.
SCAN_PER_PAGE: Final = 2_000


class SessionRow(msgspec.Struct, kw_only=True):
    """One session as the catalog knows it. Times are microseconds since the Unix epoch."""

    key: str
    agent_id: str
    owner: str | None = None
    user_id: str | None = None  # metadata `user_id`, when it is a string
    created_at: int = 0
    updated_at: int = 0
    message_count: int = 0
    last_run: str | None = None
    last_run_status: str | None = None  # `running` once assigned, then the settled status
    current_run: str | None = None
    # Runs waiting in the inbox and how many messages each brings to the history.
    queued: list[tuple[str, int]] = msgspec.field(default_factory=list)


class OpenRun(msgspec.Struct, kw_only=True):
    """A run in flight: started, not ended."""

    session_key: str
    status: str = "running"  # or `waiting_approval`
    pending_approvals: int = 0


class OpenSession(msgspec.Struct, kw_only=True):
    """A session with work pending: the run it assigned and not settled, and its inbox."""

    current_run: str | None = None
    queued: list[str] = msgspec.field(default_factory=list)


_encoder = msgspec.msgpack.Encoder()
_session_row: Final = msgspec.msgpack.Decoder(SessionRow)
_open_run: Final = msgspec.msgpack.Decoder(OpenRun)
_open_session: Final = msgspec.msgpack.Decoder(OpenSession)

_SESSION_EVENTS: Final = frozenset(
    event_type(e)
    for e in (
        SessionCreated,
        MessageAccepted,
        RunAssigned,
        RunSettled,
        SessionReset,
        SessionPatched,
        SessionDeleted,
    )
)
_RUN_EVENTS: Final = frozenset(
    event_type(e) for e in (RunStarted, ApprovalRequested, ApprovalGranted, ApprovalDenied)
) | frozenset(TERMINAL_EVENTS)


def _part(value: str) -> bytes:
    raw = value.encode()
    return _U32.pack(len(raw)) + raw


def _owner_prefix(owner: str | None) -> bytes:
    """Owners are a key id or None (made by the admin key): the two never share an index."""
    return b"o:" + (b"-" if owner is None else b"+" + _part(owner))


def _indexes(row: SessionRow) -> set[bytes]:
    key = row.key.encode()
    out = {_owner_prefix(row.owner) + key, b"a:" + _part(row.agent_id) + key}
    if row.user_id is not None:
        out.add(b"u:" + _part(row.user_id) + key)
    return out


def _session_key(key: str) -> bytes:
    return b"k:" + key.encode()


def _user_of(metadata: dict[str, object]) -> str | None:
    user = metadata.get("user_id")
    return user if isinstance(user, str) else None


class SessionsCatalog(Projection):
    """Folds session events into one row per live session, with its listing indexes."""

    name = "sessions"
    version = 1

    def __init__(self) -> None:
        # The rows this batch changed (None: deleted), each with the indexes stored for it.
        self._pending: dict[str, tuple[SessionRow | None, set[bytes]]] = {}

    def apply(self, event: RecordedEvent, state: ProjectionState) -> None:
        if event.type not in _SESSION_EVENTS:
            return
        kind, _, key = event.stream.partition(":")
        if kind != SESSION:
            return
        payload = decoded(event)
        pending = self._pending.get(key)
        if pending is None:
            raw = state.get(_session_key(key))
            row = None if raw is None else _session_row.decode(raw)
            before = set() if row is None else _indexes(row)
        else:
            row, before = pending
        match payload:
            case SessionCreated():
                row = SessionRow(
                    key=key,
                    agent_id=payload.agent_id,
                    owner=payload.owner,
                    user_id=_user_of(payload.metadata),
                    created_at=event.ts,
                    message_count=len(payload.history),
                )
            case SessionDeleted():
                row = None
            case _ if row is None:
                return  # a session the catalog does not list (deleted, or never created)
            case MessageAccepted(run_id=run_id, messages=messages):
                row.queued.append((run_id, len(messages)))
            case RunAssigned(run_id=run_id):
                brought = sum(n for queued, n in row.queued if queued == run_id)
                row.queued = [(queued, n) for queued, n in row.queued if queued != run_id]
                row.message_count += brought
                row.current_run = row.last_run = run_id
                row.last_run_status = "running"
            case RunSettled(run_id=run_id, status=status, messages=messages):
                row.message_count += len(messages)
                if row.current_run == run_id:
                    row.current_run = None
                if row.last_run == run_id:
                    row.last_run_status = status
            case SessionReset():
                row.message_count = 0
            case SessionPatched(metadata=metadata) if metadata is not None:
                if "user_id" in metadata:
                    row.user_id = _user_of(metadata)
        if row is not None:
            row.updated_at = event.ts
        self._pending[key] = (row, before)

    def flush(self, state: ProjectionState) -> None:
        for key, (row, before) in self._pending.items():
            after = set() if row is None else _indexes(row)
            for index in before - after:
                state.delete(index)
            for index in after - before:
                state.put(index, b"")
            if row is None:
                state.delete(_session_key(key))
            else:
                state.put(_session_key(key), _encoder.encode(row))
        self._pending.clear()

    def discard(self) -> None:
        self._pending.clear()


def session_row(state: ProjectionState, key: str) -> SessionRow | None:
    raw = state.get(_session_key(key))
    return None if raw is None else _session_row.decode(raw)


def list_session_keys(
    state: ProjectionState,
    *,
    caller: Caller = ADMIN,
    agent_id: str | None = None,
    user_id: str | None = None,
    after: str | None = None,
    limit: int = 50,
    scan: int = SCAN_PER_PAGE,
) -> tuple[list[SessionRow], str | None]:
    """Up to `limit` sessions the caller may see in key order, those after key `after` when
    given, and the cursor (a key) of the next page or None at the end. Reads the narrowest index
    the filters allow (the caller's own, an agent's, an end user's) and at most `scan` entries,
    so a combination of filters matching few sessions gets short pages with a cursor."""
    if not caller.admin:
        prefix = _owner_prefix(caller.owner)
    elif agent_id is not None:
        prefix = b"a:" + _part(agent_id)
    elif user_id is not None:
        prefix = b"u:" + _part(user_id)
    else:
        prefix = b"k:"
    start = prefix + after.encode() if after is not None else None
    out: list[SessionRow] = []
    last: str | None = None
    for scanned, (index, value) in enumerate(state.scan(prefix, start=start), 1):
        last = index[len(prefix) :].decode()
        row = _session_row.decode(value) if prefix == b"k:" else session_row(state, last)
        if (
            row is not None
            and (agent_id is None or row.agent_id == agent_id)
            and (user_id is None or row.user_id == user_id)
        ):
            out.append(row)
        if len(out) >= limit or scanned >= scan:
            break
    else:
        return out, None  # read to the end
    assert last is not None
    more = next(state.scan(prefix, start=prefix + last.encode()), None)
    return out, None if more is None else last


# -- open runs ----------------------------------------------------------------------------------


def _run_key(run_id: str) -> bytes:
    return b"r:" + run_id.encode()


def _open_key(key: str) -> bytes:
    return b"s:" + key.encode()


class OpenRunsCatalog(Projection):
    """Folds what a crash can leave in flight: runs started and not ended, and sessions with a
    current run or queued messages (deleted sessions excepted, as recovery leaves them).

    A batch keeps the rows it changes in memory (None: gone) and writes each once at its end."""

    name = "open_runs"
    version = 1

    def __init__(self) -> None:
        self._runs: dict[str, OpenRun | None] = {}
        self._sessions: dict[str, OpenSession | None] = {}
        self._deleted: dict[str, bool] = {}  # session key -> deleted now (its tombstone)
        self._seen_deleted: dict[str, bool] = {}  # tombstones read in this batch

    def apply(self, event: RecordedEvent, state: ProjectionState) -> None:
        kind, _, name = event.stream.partition(":")
        if kind == RUN and event.type in _RUN_EVENTS:
            self._apply_run(name, event, state)
        elif kind == SESSION and event.type in _SESSION_EVENTS:
            self._apply_session(name, event, state)

    def _apply_run(self, run_id: str, event: RecordedEvent, state: ProjectionState) -> None:
        if event.type in TERMINAL_EVENTS:
            self._runs[run_id] = None
            return
        payload = decoded(event)
        if isinstance(payload, RunStarted):
            self._runs[run_id] = OpenRun(session_key=payload.session_key)
            return
        if run_id in self._runs:
            run = self._runs[run_id]
        else:
            raw = state.get(_run_key(run_id))
            run = None if raw is None else _open_run.decode(raw)
        if run is None:
            return
        if isinstance(payload, ApprovalRequested):
            run.pending_approvals += 1
            run.status = "waiting_approval"
        else:  # granted or denied
            run.pending_approvals = max(run.pending_approvals - 1, 0)
            if run.pending_approvals == 0:
                run.status = "running"
        self._runs[run_id] = run

    def _apply_session(self, key: str, event: RecordedEvent, state: ProjectionState) -> None:
        payload = decoded(event)
        if isinstance(payload, SessionCreated):  # a session begins anew (as its fold does)
            self._deleted[key] = False
            self._sessions[key] = None
            return
        if isinstance(payload, SessionDeleted):
            self._deleted[key] = True
            self._sessions[key] = None
            return
        deleted = self._deleted.get(key, self._seen_deleted.get(key))
        if deleted is None:
            deleted = self._seen_deleted[key] = state.get(b"d:" + key.encode()) is not None
        if deleted:
            return
        if key in self._sessions:
            work = self._sessions[key] or OpenSession()
        else:
            raw = state.get(_open_key(key))
            work = OpenSession() if raw is None else _open_session.decode(raw)
        match payload:
            case MessageAccepted(run_id=run_id):
                work.queued.append(run_id)
            case RunAssigned(run_id=run_id):
                work.queued = [queued for queued in work.queued if queued != run_id]
                work.current_run = run_id
            case RunSettled(run_id=run_id) if work.current_run == run_id:
                work.current_run = None
            case _:
                return
        self._sessions[key] = None if work.current_run is None and not work.queued else work

    def flush(self, state: ProjectionState) -> None:
        for run_id, run in self._runs.items():
            if run is None:
                state.delete(_run_key(run_id))
            else:
                state.put(_run_key(run_id), _encoder.encode(run))
        for key, deleted in self._deleted.items():
            if deleted:
                state.put(b"d:" + key.encode(), b"")
            else:
                state.delete(b"d:" + key.encode())
        for key, work in self._sessions.items():
            if work is None:
                state.delete(_open_key(key))
            else:
                state.put(_open_key(key), _encoder.encode(work))
        self.discard()

    def discard(self) -> None:
        self._runs.clear()
        self._sessions.clear()
        self._deleted.clear()
        self._seen_deleted.clear()


class OpenWork(msgspec.Struct, frozen=True):
    """What recovery resumes: runs in flight (by run id) and sessions with work pending (by
    key), each in id order."""

    runs: list[tuple[str, OpenRun]]
    sessions: list[tuple[str, OpenSession]]


def open_work(state: ProjectionState) -> OpenWork:
    runs = [(k[2:].decode(), _open_run.decode(v)) for k, v in state.scan(b"r:")]
    sessions = [(k[2:].decode(), _open_session.decode(v)) for k, v in state.scan(b"s:")]
    return OpenWork(runs, sessions)
