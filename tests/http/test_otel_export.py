"""OTLP export: with `[otel] endpoint` set, each settled run reaches a real OTLP/HTTP endpoint as
a trace whose spans carry the ids, parents, times and attributes of GET /v1/traces/{id}; an
endpoint that is down delays the export without losing it, and restarts neither lose nor
re-send a settled run's trace."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from cuelog.http._config import ConfigError, load_settings
from tests.http.live import Live, live_server
from tests.http.otlp_receiver import OtlpReceiver, ReceivedSpan, otlp_receiver
from tests.http.test_traces import _approved_tool_run


def _otel(receiver: OtlpReceiver, **more: Any) -> dict[str, dict[str, Any]]:
    return {"otel": {"endpoint": receiver.url, **more}}


async def _received(receiver: OtlpReceiver, trace_id: str, count: int) -> list[ReceivedSpan]:
    with trio.fail_after(20):
        while True:
            spans = receiver.by_trace(trace_id)
            if len(spans) >= count:
                return spans
            await trio.sleep(0.05)


async def _chat(live: Live, text: str) -> str:
    body = {"model": "default", "messages": [{"role": "user", "content": text}]}
    chat = await live.client.post("/v1/chat/completions", json=body)
    assert chat.status_code == 200, chat.text
    return chat.headers["X-Run-Id"]


async def _trace(client: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    got = await client.get(f"/v1/traces/{run_id}")
    assert got.status_code == 200, got.text
    trace: dict[str, Any] = got.json()
    return trace


async def test_a_settled_run_arrives_as_a_trace_with_its_spans(tmp_path: Path) -> None:
    """The run, its two model calls, the tool call and the approval wait arrive with the ids,
    parent links, nanosecond times, status and GenAI attributes of the run's trace, under the
    configured service name, with the configured headers."""
    with otlp_receiver() as receiver:
        sections = _otel(receiver, headers={"x-tenant": "t1"}, service_name="cuelog-test")
        async with live_server(tmp_path / "data", sections=sections) as live:
            run_id = await _approved_tool_run(live.client)
            trace = await _trace(live.client, run_id)
            spans = await _received(receiver, trace["trace_id"], len(trace["spans"]))
    assert len(spans) == 5
    by_id = {span.span_id: span for span in spans}
    for mine in trace["spans"]:
        theirs = by_id[mine["span_id"]]
        assert theirs.parent_span_id == (mine["parent_id"] or "")
        assert theirs.name == mine["name"]
        assert abs(theirs.start_ns - mine["start"] * 1e9) < 1000  # the log's µs, in ns
        assert abs(theirs.end_ns - mine["end"] * 1e9) < 1000
        assert theirs.status_code == 1  # STATUS_CODE_OK
        assert theirs.attributes["cuelog.span.kind"] == mine["kind"]
        assert theirs.service_name == "cuelog-test"
        assert theirs.headers["x-tenant"] == "t1"
    root = by_id[trace["spans"][0]["span_id"]]
    assert root.parent_span_id == ""
    assert root.attributes["cuelog.agent_id"] == "calc"
    assert root.attributes["gen_ai.usage.input_tokens"] == trace["usage"]["prompt_tokens"]
    models = [s for s in spans if s.attributes["cuelog.span.kind"] == "model"]
    assert [s.kind for s in models] == [3, 3]  # SPAN_KIND_CLIENT
    assert all(s.parent_span_id == root.span_id for s in models)
    assert (
        sum(s.attributes["gen_ai.usage.output_tokens"] for s in models)
        == (trace["usage"]["completion_tokens"])
    )
    [tool] = [s for s in spans if s.attributes["cuelog.span.kind"] == "tool"]
    [approval] = [s for s in spans if s.attributes["cuelog.span.kind"] == "approval"]
    assert approval.parent_span_id == tool.span_id and tool.parent_span_id == root.span_id
    assert tool.attributes["gen_ai.tool.name"] == "calculator"
    assert tool.start_ns <= approval.start_ns <= approval.end_ns <= tool.end_ns


async def test_restarts_neither_lose_nor_resend_and_a_down_endpoint_only_delays(
    tmp_path: Path,
) -> None:
    """Runs settled before export was on are not sent; a run settled while the endpoint
    answers 503 is sent once it is back (after a restart); a later restart sends nothing
    twice."""
    data = tmp_path / "data"
    with otlp_receiver() as receiver:
        async with live_server(data) as live:
            before = await _trace(live.client, await _chat(live, "before export"))
        receiver.status = 503
        async with live_server(data, sections=_otel(receiver, timeout=1)) as live:
            while_down = await _trace(live.client, await _chat(live, "while down"))
            with trio.fail_after(20):
                while True:
                    if receiver.requests > 0:  # it tried, and was refused
                        break
                    await trio.sleep(0.05)
        assert receiver.trace_ids() == []
        receiver.status = 200
        async with live_server(data, sections=_otel(receiver)) as live:
            await _received(receiver, while_down["trace_id"], 2)
            after = await _trace(live.client, await _chat(live, "after"))
            await _received(receiver, after["trace_id"], 2)
        async with live_server(data, sections=_otel(receiver)) as live:
            last = await _trace(live.client, await _chat(live, "last"))
            await _received(receiver, last["trace_id"], 2)
        sent = Counter(receiver.trace_ids())
    assert before["trace_id"] not in sent
    assert sent == {while_down["trace_id"]: 1, after["trace_id"]: 1, last["trace_id"]: 1}
    assert len(receiver.by_trace(while_down["trace_id"])) == 2  # the run and its model call


async def test_a_stop_waits_for_the_export_in_flight_and_records_it(tmp_path: Path) -> None:
    """A stop while the collector has not answered yet waits for its answer, and records the
    batch it took: the next start does not send it again."""
    data = tmp_path / "data"
    with otlp_receiver() as receiver:
        receiver.held = threading.Event()
        async with live_server(data, sections=_otel(receiver)) as live:
            held = await _trace(live.client, await _chat(live, "held"))
            with trio.fail_after(20):
                while True:
                    if receiver.requests > 0:  # the request is at the collector, unanswered
                        break
                    await trio.sleep(0.05)
            # The collector answers (200) a moment after the server began to stop.
            threading.Timer(0.5, receiver.held.set).start()
        assert receiver.held.is_set()  # the stop waited for the answer
        assert Counter(receiver.trace_ids()) == {held["trace_id"]: 1}
        async with live_server(data, sections=_otel(receiver)) as live:
            later = await _trace(live.client, await _chat(live, "later"))
            await _received(receiver, later["trace_id"], 2)
        sent = Counter(receiver.trace_ids())
    assert sent == {held["trace_id"]: 1, later["trace_id"]: 1}


def test_a_bad_otel_section_is_refused() -> None:
    """A URL that is not http(s), a timeout of 0 or an unknown key names the key."""
    for section, key in (
        ({"endpoint": "127.0.0.1:4318"}, "otel.endpoint"),
        ({"endpoint": "http://127.0.0.1:4318/v1/traces", "timeout": 0}, "otel.timeout"),
        ({"endpoint": "http://127.0.0.1:4318/v1/traces", "bogus": 1}, "otel.bogus"),
    ):
        with pytest.raises(ConfigError, match=key):
            load_settings(None, environ={}, flags={"otel": section})
