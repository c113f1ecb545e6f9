"""OTLP export: each settled run as an OpenTelemetry trace, sent over HTTP (protobuf) with the
OpenTelemetry SDK's exporter (`_otel_sdk`), so runs show up in Jaeger, Tempo or any OTLP
collector. Off unless `[otel] endpoint` is set; what is sent and when is `TraceExport`'s (driven
from the log, with a checkpoint)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from cuelog.actors import TraceExport
from cuelog.http._config import OtelSection
from cuelog.runtime import EventLog, LeaseTable, ProjectionStore


@asynccontextmanager
async def open_otel_export(
    settings: OtelSection,
    log: EventLog,
    store: ProjectionStore,
    leases: LeaseTable | None = None,
) -> AsyncIterator[TraceExport | None]:
    """Export settled runs while the block runs, when `[otel] endpoint` is set (else None).
    With `leases` (cluster mode) only while this node holds the service lease `service:otel`:
    the checkpoint is in the shared projection store, so a new holder goes on from it."""
    if settings.endpoint is None:
        yield None
        return
    from cuelog.http._otel_sdk import OtlpSink  # the SDK loads only for a server that exports

    sink = OtlpSink(settings)
    export = TraceExport(log, store, sink)
    try:
        async with trio.open_nursery() as nursery:
            if leases is not None:
                nursery.start_soon(leases.run_service, "otel", export.run)
            else:
                await nursery.start(export.run)
            try:
                yield export
            finally:
                sink.close()  # no more retries; the request in flight is waited for
                nursery.cancel_scope.cancel()
    finally:
        sink.close()
