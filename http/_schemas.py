"""What the API answers: the response bodies, as msgspec structs.

The handlers build these, and the OpenAPI document describes the same structs, so the two
cannot drift apart.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from cuelog.actors import (
    ApprovalPolicy,
    Budget,
    BusyPolicy,
    ChatMessage,
    KeyInfo,
    SessionState,
    TimelineRow,
    Usage,
)
from cuelog.runtime import Anchor


class EventOut(msgspec.Struct, frozen=True):
    seq: int
    stream: str
    version: int
    type: str
    ts: int
    actor: str | None
    causation: str | None
    correlation: str | None
    data: Any
    hash: str
    prev: str


class Health(msgspec.Struct, kw_only=True):
    status: str
    version: str | None = None
    head_seq: int | None = None
    live_actors: int | None = None
    uptime_seconds: float | None = None
    emergency_stop: bool | None = None
    auth_required: bool | None = None
    node: str | None = None  # cluster mode: this node's name and the leases it holds
    leases: int | None = None
    services: list[str] | None = None  # cluster mode: the process-wide services running here


class Model(msgspec.Struct, kw_only=True):
    id: str
    object: str
    created: int
    owned_by: str


class ModelList(msgspec.Struct, kw_only=True):
    object: str
    data: list[Model]


class Agent(msgspec.Struct, kw_only=True):
    id: str
    object: str
    version: int
    name: str
    provider: str
    model: str
    system_prompt: str
    tools: list[str]
    approval: ApprovalPolicy
    tool_approval: dict[str, ApprovalPolicy]
    max_steps: int
    max_tokens: int
    temperature: float | None
    callback_url: str | None = None
    has_webhook_secret: bool = False  # the secret itself is never shown
    budgets: list[Budget] = msgspec.field(default_factory=list)


class AgentList(msgspec.Struct, kw_only=True):
    data: list[Agent]
    next_cursor: str | None


class Deleted(msgspec.Struct, kw_only=True, omit_defaults=True):
    object: str
    deleted: bool
    id: str | None = None
    key: str | None = None


class Session(msgspec.Struct, kw_only=True):
    key: str
    object: str
    agent_id: str
    label: str | None
    metadata: dict[str, Any]
    busy_policy: BusyPolicy
    messages: list[ChatMessage]
    current_run: str | None
    queued_runs: list[str]
    recent_runs: list[str]
    version: int
    parent_session: str | None
    parent_seq: int | None


class SessionList(msgspec.Struct, kw_only=True):
    data: list[Session]
    next_cursor: str | None


RunStatus = Literal["queued", "running", "waiting_approval", "completed", "failed", "cancelled"]


class Run(msgspec.Struct, kw_only=True):
    id: str
    object: str
    status: RunStatus
    session_key: str
    agent_id: str
    step: int
    content: str
    usage: Usage
    error: str | None
    pending_approvals: list[str]
    messages: list[ChatMessage]
    events_url: str
    # From the runs catalog (absent while it has not reached the run yet).
    created_at: int | None = None  # Unix seconds
    duration_ms: float | None = None  # from start to end, once ended
    steps: int | None = None  # model calls
    tool_call_count: int | None = None  # tool calls the model asked for


class RunSummary(msgspec.Struct, kw_only=True):
    """One run in the runs list. Times are Unix seconds (fractional)."""

    id: str
    object: str
    status: RunStatus
    session_key: str
    agent_id: str
    user_id: str | None
    loop_id: str | None
    provider: str
    model: str
    created_at: float
    started_at: float | None
    ended_at: float | None
    duration_ms: float | None
    steps: int
    tool_call_count: int
    usage: Usage
    finish_reason: str | None
    error: str | None


class RunList(msgspec.Struct, kw_only=True):
    data: list[RunSummary]
    next_cursor: str | None


class TraceSummary(msgspec.Struct, kw_only=True):
    """One run as a trace in the traces list. Times are Unix seconds (fractional)."""

    id: str  # the run id
    object: str
    trace_id: str
    name: str
    status: RunStatus
    session_key: str
    agent_id: str
    user_id: str | None
    loop_id: str | None
    provider: str
    model: str
    started_at: float | None
    ended_at: float | None
    duration_ms: float | None
    model_calls: int
    tool_calls: int
    usage: Usage
    error: str | None


class TraceList(msgspec.Struct, kw_only=True):
    data: list[TraceSummary]
    next_cursor: str | None


class TraceSpan(msgspec.Struct, kw_only=True):
    """A model call, tool call, approval wait, or the run itself (the root)."""

    span_id: str
    parent_id: str | None
    kind: Literal["run", "model", "tool", "approval"]
    name: str
    start: float
    end: float | None
    duration_ms: float | None
    status: Literal["ok", "error", "unset"]
    error: str | None
    usage: Usage | None
    attributes: dict[str, Any]


class Trace(msgspec.Struct, kw_only=True):
    id: str  # the run id
    object: str
    trace_id: str
    status: RunStatus
    started_at: float
    ended_at: float | None
    duration_ms: float | None
    usage: Usage | None
    spans: list[TraceSpan]


class WakeResult(msgspec.Struct, kw_only=True):
    content: str
    run_id: str
    session_key: str
    status: RunStatus
    usage: Usage
    error: str | None


class WakeAccepted(msgspec.Struct, kw_only=True):
    run_id: str
    session_key: str
    status: RunStatus
    events_url: str


class EventPage(msgspec.Struct, kw_only=True):
    data: list[EventOut]
    next_cursor: int | None


class KeyList(msgspec.Struct, kw_only=True):
    data: list[KeyInfo]
    next_cursor: None


class NewKey(msgspec.Struct, kw_only=True):
    """The key's info and, this once, its secret."""

    id: str
    name: str
    scopes: list[str]
    created_at: int
    expires_at: int | None
    revoked: bool
    object: str
    key: str
    has_webhook_secret: bool = False
    budgets: list[Budget] = msgspec.field(default_factory=list)


class Approval(msgspec.Struct, kw_only=True):
    id: str
    object: str
    run_id: str
    session_key: str
    agent_id: str
    tool: str
    arguments: str
    call_id: str
    args_digest: str
    status: Literal["pending", "decided"]
    requested_seq: int
    requested_at: int


class ApprovalList(msgspec.Struct, kw_only=True):
    data: list[Approval]
    next_cursor: None


class ApprovalDecision(msgspec.Struct, kw_only=True):
    id: str
    decision: Literal["approve", "deny"]
    run_id: str
    run_status: RunStatus


class Tool(msgspec.Struct, kw_only=True):
    name: str
    description: str
    parameters: dict[str, Any]
    enabled: bool
    approval_policy: ApprovalPolicy


class ToolList(msgspec.Struct, kw_only=True):
    data: list[Tool]
    next_cursor: None


class ToolRun(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A dry run (`dry_run`, `valid`, `would_run`) or a real one (`run_id`, `status`, ...)."""

    dry_run: bool | None = None
    valid: bool | None = None
    would_run: dict[str, Any] | None = None
    run_id: str | None = None
    status: RunStatus | None = None
    output: str | None = None
    pending_approvals: list[str] | None = None
    events_url: str | None = None


class AuditHead(msgspec.Struct, kw_only=True):
    seq: int
    hash: str
    anchored_seq: int | None
    anchored_hash: str | None
    anchored_at: int | None
    mac: str | None


class Anchored(msgspec.Struct, kw_only=True):
    """A sealed head, as POST /v1/audit/anchor answers it and `cuelog verify --anchor-file`
    reads it back."""

    seq: int
    hash: str
    mac: str
    anchored_at: int = 0

    @staticmethod
    def of(anchor: Anchor) -> Anchored:
        return Anchored(
            seq=anchor.seq,
            hash=anchor.hash.hex(),
            mac=anchor.mac.hex(),
            anchored_at=anchor.ts // 1_000_000,
        )

    def to_anchor(self) -> Anchor:
        return Anchor(
            self.seq,
            bytes.fromhex(self.hash),
            bytes.fromhex(self.mac),
            self.anchored_at * 1_000_000,
        )


class EmergencyStop(msgspec.Struct, kw_only=True, omit_defaults=True):
    stopped: bool
    cancelled_runs: int | None = None
    seconds: float | None = None


class SessionStateAt(msgspec.Struct, kw_only=True):
    """A session's folded state as it was at `at_seq` (null: now)."""

    key: str
    at_seq: int | None
    state: SessionState


class RunTimeline(msgspec.Struct, kw_only=True):
    run_id: str
    data: list[TimelineRow]


class UsageSummary(msgspec.Struct, kw_only=True):
    """Runs started and tokens spent between `from` and `to` (Unix seconds; null: unbounded)."""

    object: str
    from_: float | None = msgspec.field(name="from")
    to: float | None
    runs: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class UsagePoint(msgspec.Struct, kw_only=True):
    start: int  # Unix seconds: the start of the hour or day
    runs: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost: float  # priced from `[prices]` (an unpriced model: 0)


class UsageTimeseries(msgspec.Struct, kw_only=True):
    object: str
    interval: str
    from_: float | None = msgspec.field(name="from")
    to: float | None
    data: list[UsagePoint]


class UsageGroup(msgspec.Struct, kw_only=True):
    value: str | None  # the agent, model, provider, key id or end user (null: none)
    runs: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost: float  # priced from `[prices]` (an unpriced model: 0)


class UsageBreakdown(msgspec.Struct, kw_only=True):
    object: str
    group_by: str
    from_: float | None = msgspec.field(name="from")
    to: float | None
    data: list[UsageGroup]


class CostLine(msgspec.Struct, kw_only=True):
    provider: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    input_cost: float
    output_cost: float
    cost: float
    priced: bool  # false: the model is not in [prices], so it counts 0


class CostSummary(msgspec.Struct, kw_only=True):
    """Tokens priced from `[prices]` (per million tokens, in the currency the table uses)."""

    object: str
    from_: float | None = msgspec.field(name="from")
    to: float | None
    total_cost: float
    unpriced_models: list[str]
    data: list[CostLine]
