"""A run as a trace: one root span for the run, a span for each model call, tool call and
approval wait, folded from the run's own events (no bookkeeping beside the log).

Ids are derived from the run id (sha256), so the same run always gives the same trace and span
ids: a trace exported twice is the same trace. Times are microseconds since the Unix epoch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any, Literal

import msgspec

from cuelog.actors._events import (
    DOMAIN_CODEC,
    ApprovalDenied,
    ApprovalGranted,
    ApprovalRequested,
    AssistantMessage,
    ModelRequested,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunStarted,
    ToolCallCompleted,
    ToolCallFailed,
    ToolCallRequested,
)
from cuelog.actors._messages import Usage
from cuelog.runtime import RecordedEvent, event_type

_WANTED = frozenset(
    event_type(e)
    for e in (
        RunStarted,
        ModelRequested,
        AssistantMessage,
        ToolCallRequested,
        ApprovalRequested,
        ApprovalGranted,
        ApprovalDenied,
        ToolCallCompleted,
        ToolCallFailed,
        RunCompleted,
        RunFailed,
        RunCancelled,
    )
)

SpanKind = Literal["run", "model", "tool", "approval"]
SpanStatus = Literal["ok", "error", "unset"]


class Span(msgspec.Struct, kw_only=True):
    """One timed step of a run. `end` is None while it goes on."""

    span_id: str
    parent_id: str | None
    kind: SpanKind
    name: str
    start: int
    end: int | None = None
    status: SpanStatus = "unset"
    error: str | None = None
    usage: Usage | None = None
    attributes: dict[str, Any] = msgspec.field(default_factory=dict)

    @property
    def duration_ms(self) -> float | None:
        return None if self.end is None else round((self.end - self.start) / 1000, 3)


class Trace(msgspec.Struct, kw_only=True):
    """A run's spans, the root first, then by start time."""

    trace_id: str
    run_id: str
    status: str
    spans: list[Span]
    seq: int  # the last event folded

    @property
    def root(self) -> Span:
        return self.spans[0]


def trace_id(run_id: str) -> str:
    """32 hex digits (128 bits), the same for a run every time."""
    return hashlib.sha256(b"trace\0" + run_id.encode()).hexdigest()[:32]


def span_id(run_id: str, part: str) -> str:
    """16 hex digits (64 bits), never all zero."""
    digest = hashlib.sha256(b"span\0" + run_id.encode() + b"\0" + part.encode()).hexdigest()
    return digest[:16] if digest[:16] != "0" * 16 else "1" * 16


def fold_trace(run_id: str, events: Iterable[RecordedEvent]) -> Trace | None:
    """The trace of a run from its stream's events; None for a run with no events."""
    root: Span | None = None
    spans: list[Span] = []
    models: dict[int, Span] = {}  # step -> its open model call
    tools: dict[str, Span] = {}  # call id -> its tool call
    approvals: dict[str, Span] = {}  # approval id -> its wait
    status = "running"
    last_seq = 0
    span: Span | None
    for event in events:
        last_seq = event.seq
        if event.type not in _WANTED:  # deltas: a model call's text, not a step of its own
            continue
        payload = DOMAIN_CODEC.decode(event.type, event.data)
        if root is None:
            root = Span(
                span_id=span_id(run_id, "run"),
                parent_id=None,
                kind="run",
                name="run",
                start=event.ts,
                attributes={"cuelog.run_id": run_id},
            )
        match payload:
            case RunStarted(agent_id=agent_id, session_key=session_key, spec=spec, owner=owner):
                root.name = f"run {agent_id}"
                root.attributes.update(
                    {
                        "cuelog.agent_id": agent_id,
                        "cuelog.session_key": session_key,
                        "gen_ai.system": spec.provider,
                        "gen_ai.request.model": spec.model,
                    }
                )
                if owner is not None:
                    root.attributes["cuelog.key_id"] = owner
            case ModelRequested(step=step, message_count=count, model=model):
                span = Span(
                    span_id=span_id(run_id, f"model:{step}"),
                    parent_id=root.span_id,
                    kind="model",
                    name=f"chat {model or root.attributes.get('gen_ai.request.model', '')}",
                    start=event.ts,
                    attributes={"cuelog.step": step, "cuelog.message_count": count},
                )
                if model:
                    span.attributes["gen_ai.request.model"] = model
                models[step] = span
                spans.append(span)
            case AssistantMessage(step=step, finish_reason=finish_reason, usage=usage):
                span = models.pop(step, None)
                if span is not None:
                    span.end, span.status, span.usage = event.ts, "ok", usage
                    span.attributes.update(
                        {
                            "gen_ai.response.finish_reasons": [finish_reason],
                            "gen_ai.usage.input_tokens": usage.prompt_tokens,
                            "gen_ai.usage.output_tokens": usage.completion_tokens,
                        }
                    )
            case ToolCallRequested(step=step, call=call):
                span = Span(
                    span_id=span_id(run_id, f"tool:{call.id}"),
                    parent_id=root.span_id,
                    kind="tool",
                    name=f"tool {call.name}",
                    start=event.ts,
                    attributes={
                        "gen_ai.tool.name": call.name,
                        "gen_ai.tool.call.id": call.id,
                        "cuelog.step": step,
                    },
                )
                tools[call.id] = span
                spans.append(span)
            case ApprovalRequested(approval_id=approval_id, call=call):
                parent = tools.get(call.id)
                span = Span(
                    span_id=span_id(run_id, f"approval:{approval_id}"),
                    parent_id=parent.span_id if parent is not None else root.span_id,
                    kind="approval",
                    name=f"approval {call.name}",
                    start=event.ts,
                    attributes={"cuelog.approval_id": approval_id, "gen_ai.tool.name": call.name},
                )
                approvals[approval_id] = span
                spans.append(span)
            case ApprovalGranted(approval_id=approval_id, by=by):
                _close_approval(approvals.pop(approval_id, None), event.ts, "granted", by)
            case ApprovalDenied(approval_id=approval_id, by=by, reason=reason):
                span = approvals.pop(approval_id, None)
                _close_approval(span, event.ts, "denied", by)
                if span is not None and reason:
                    span.attributes["cuelog.approval.reason"] = reason
            case ToolCallCompleted(call_id=call_id):
                span = tools.pop(call_id, None)
                if span is not None:
                    span.end, span.status = event.ts, "ok"
            case ToolCallFailed(call_id=call_id, error=error):
                span = tools.pop(call_id, None)
                if span is not None:
                    span.end, span.status, span.error = event.ts, "error", error
            case RunCompleted(usage=usage, finish_reason=finish_reason):
                status = "completed"
                root.usage, root.status = usage, "ok"
                root.attributes["gen_ai.response.finish_reasons"] = [finish_reason]
                _end(root, spans, event.ts, None)
            case RunFailed(reason=reason, usage=usage):
                status = "failed"
                root.usage, root.status, root.error = usage, "error", reason
                _end(root, spans, event.ts, reason)
            case RunCancelled(reason=reason):
                status = "cancelled"
                root.status, root.error = "error", reason
                _end(root, spans, event.ts, reason)
    if root is None:
        return None
    if root.usage is None:
        root.usage = sum((s.usage for s in spans if s.usage is not None), Usage())
    root.attributes["cuelog.status"] = status
    ordered = sorted(spans, key=lambda s: s.start)
    return Trace(
        trace_id=trace_id(run_id),
        run_id=run_id,
        status=status,
        spans=[root, *ordered],
        seq=last_seq,
    )


def _close_approval(span: Span | None, ts: int, decision: str, by: str | None) -> None:
    if span is None:
        return
    span.end, span.status = ts, "ok" if decision == "granted" else "error"
    span.attributes["cuelog.approval.decision"] = decision
    if by is not None:
        span.attributes["cuelog.approval.by"] = by


def _end(root: Span, spans: list[Span], ts: int, reason: str | None) -> None:
    """The run ended: so did every span still open in it."""
    root.end = ts
    for span in spans:
        if span.end is None:
            span.end, span.status = ts, "error"
            span.error = reason or "the run ended first"
