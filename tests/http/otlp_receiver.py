"""A real OTLP/HTTP traces endpoint on 127.0.0.1: it decodes each protobuf
ExportTraceServiceRequest into plain spans and answers the status it is told to."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue


@dataclass(frozen=True)
class ReceivedSpan:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    start_ns: int
    end_ns: int
    status_code: int
    status_message: str
    attributes: dict[str, Any]
    service_name: str
    headers: dict[str, str]


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    return getattr(value, kind) if kind is not None else None


@dataclass
class OtlpReceiver:
    url: str
    status: int = 200  # what every request is answered
    spans: list[ReceivedSpan] = field(default_factory=list)
    requests: int = 0
    held: threading.Event | None = None  # set: each request waits for it before it is answered
    lock: threading.Lock = field(default_factory=threading.Lock)

    def by_trace(self, trace_id: str) -> list[ReceivedSpan]:
        with self.lock:
            return [span for span in self.spans if span.trace_id == trace_id]

    def trace_ids(self) -> list[str]:
        with self.lock:
            return [span.trace_id for span in self.spans if not span.parent_span_id]


@contextmanager
def otlp_receiver() -> Iterator[OtlpReceiver]:
    """Serve `/v1/traces` until the block ends."""
    receiver = OtlpReceiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with receiver.lock:
                receiver.requests += 1
                status = receiver.status
            if self.path != "/v1/traces":
                status = 404
            if receiver.held is not None:
                receiver.held.wait(timeout=30)
            if status == 200:
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                headers = {k.lower(): v for k, v in self.headers.items()}
                received = []
                for resource_spans in request.resource_spans:
                    resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
                    for scope_spans in resource_spans.scope_spans:
                        for span in scope_spans.spans:
                            received.append(
                                ReceivedSpan(
                                    trace_id=span.trace_id.hex(),
                                    span_id=span.span_id.hex(),
                                    parent_span_id=span.parent_span_id.hex(),
                                    name=span.name,
                                    kind=span.kind,
                                    start_ns=span.start_time_unix_nano,
                                    end_ns=span.end_time_unix_nano,
                                    status_code=span.status.code,
                                    status_message=span.status.message,
                                    attributes={a.key: _value(a.value) for a in span.attributes},
                                    service_name=str(resource.get("service.name")),
                                    headers=headers,
                                )
                            )
                with receiver.lock:
                    receiver.spans.extend(received)
                answer = ExportTraceServiceResponse().SerializeToString()
            else:
                answer = b""
            self.send_response(status)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
