"""The OpenTelemetry SDK side of the OTLP export: runs' traces as the SDK's finished spans, and
the exporter that sends them. Imported only when `[otel] endpoint` is set (see `_otel`), so a
server without an export does not load the SDK."""

from __future__ import annotations

from typing import Any, Final

import trio
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from cuelog.actors import Trace
from cuelog.http._config import OtelSection

_SCOPE: Final = InstrumentationScope("cuelog")
_SAMPLED: Final = TraceFlags(TraceFlags.SAMPLED)


def _context(trace_id: int, span_id: str) -> SpanContext:
    return SpanContext(trace_id, int(span_id, 16), is_remote=False, trace_flags=_SAMPLED)


def otel_spans(trace: Trace, resource: Resource) -> list[ReadableSpan]:
    """A run's spans as the SDK's finished spans: ids, parents, times (ns) and attributes."""
    trace_id = int(trace.trace_id, 16)
    out: list[ReadableSpan] = []
    for span in trace.spans:
        attributes: dict[str, Any] = {"cuelog.span.kind": span.kind, **span.attributes}
        if span.usage is not None:
            attributes["gen_ai.usage.input_tokens"] = span.usage.prompt_tokens
            attributes["gen_ai.usage.output_tokens"] = span.usage.completion_tokens
        if span.status == "ok":
            status = Status(StatusCode.OK)
        elif span.status == "error":
            status = Status(StatusCode.ERROR, span.error)
        else:
            status = Status(StatusCode.UNSET)
        parent = None if span.parent_id is None else _context(trace_id, span.parent_id)
        end = span.end if span.end is not None else span.start
        out.append(
            ReadableSpan(
                name=span.name,
                context=_context(trace_id, span.span_id),
                parent=parent,
                resource=resource,
                attributes=attributes,
                kind=SpanKind.CLIENT if span.kind == "model" else SpanKind.INTERNAL,
                status=status,
                start_time=span.start * 1000,
                end_time=end * 1000,
                instrumentation_scope=_SCOPE,
            )
        )
    return out


class OtlpSink:
    """Sends a batch of traces in one OTLP request (the SDK's exporter, in a worker thread).

    A call in flight is waited for, not abandoned, when its task is cancelled: an abandoned
    request could still reach the collector after the checkpoint was left behind, and the
    next start would send its traces again. `close` first stops the exporter's retries, so a
    stop waits for one request at most (`timeout`)."""

    def __init__(self, settings: OtelSection) -> None:
        assert settings.endpoint is not None
        self.resource = Resource.create({"service.name": settings.service_name})
        self.exporter = OTLPSpanExporter(
            endpoint=settings.endpoint, headers=dict(settings.headers), timeout=settings.timeout
        )
        self._closed = False

    async def __call__(self, traces: list[Trace]) -> bool:
        spans = [span for trace in traces for span in otel_spans(trace, self.resource)]
        result = await trio.to_thread.run_sync(self.exporter.export, spans)
        return bool(result == SpanExportResult.SUCCESS)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.exporter.shutdown()  # type: ignore[no-untyped-call]
