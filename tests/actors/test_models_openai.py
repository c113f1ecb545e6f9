"""The `openai` provider against a real OpenAI-shaped server on 127.0.0.1 (no httpx mocking)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import msgspec
import pytest
import structlog
import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

from cuelog.actors._errors import ModelError
from cuelog.actors._messages import ChatMessage, MediaPart, ToolCall, ToolSpec, Usage
from cuelog.actors._models import (
    Finished,
    ModelChunk,
    ModelRequest,
    TextDelta,
    ToolCallChunk,
)
from cuelog.actors._models_openai import OpenAIConfig, OpenAIModel

KEY = "sk-test-0123456789abcdef"
MODELS = ["gpt-test", "gpt-test-mini"]  # what GET /models lists
ENV = {"UPSTREAM_KEY": KEY}

Scope = dict[str, Any]


class Status(msgspec.Struct):
    code: int
    body: bytes
    headers: list[tuple[bytes, bytes]] = msgspec.field(default_factory=list)


class Stream(msgspec.Struct):
    frames: list[str]
    hang: bool = False


class Recorded(msgspec.Struct):
    headers: dict[str, str]
    body: dict[str, Any]


class FakeUpstream:
    """A minimal OpenAI chat-completions server: replies come from a queue the test fills."""

    def __init__(self) -> None:
        self.url = ""
        self.replies: list[Status | Stream] = []
        self.requests: list[Recorded] = []
        self.disconnected = trio.Event()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.requests.append(Recorded(headers, msgspec.json.decode(body or b"{}")))
        if headers.get("authorization") != f"Bearer {KEY}":
            given = headers.get("authorization", "")
            await self._status(send, Status(401, _error(f"Incorrect API key provided: {given}")))
            return
        if scope["method"] == "GET" and scope["path"].endswith("/models"):
            listed = {"object": "list", "data": [{"id": m, "object": "model"} for m in MODELS]}
            await self._status(send, Status(200, msgspec.json.encode(listed)))
            return
        reply = self.replies.pop(0)
        if isinstance(reply, Status):
            await self._status(send, reply)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        for frame in reply.frames:
            await send({"type": "http.response.body", "body": frame.encode(), "more_body": True})
        if reply.hang:
            while (await receive())["type"] != "http.disconnect":
                pass
            self.disconnected.set()
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _status(self, send: Any, reply: Status) -> None:
        headers = [(b"content-type", b"application/json"), *reply.headers]
        await send({"type": "http.response.start", "status": reply.code, "headers": headers})
        await send({"type": "http.response.body", "body": reply.body, "more_body": False})


def _error(message: str) -> bytes:
    return msgspec.json.encode({"error": {"message": message, "type": "invalid_request_error"}})


def sse(payload: dict[str, Any] | str) -> str:
    data = payload if isinstance(payload, str) else msgspec.json.encode(payload).decode()
    return f"data: {data}\n\n"


def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
    return sse(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
    )


def usage_chunk(prompt: int, completion: int) -> str:
    return sse(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "choices": [],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        }
    )


DONE = sse("[DONE]")


def text_stream(*pieces: str) -> Stream:
    frames = [chunk({"role": "assistant", "content": ""})]
    frames += [chunk({"content": p}) for p in pieces]
    frames += [chunk({}, "stop"), usage_chunk(5, len(pieces)), DONE]
    return Stream(frames)


@pytest.fixture
async def upstream(nursery: trio.Nursery) -> AsyncIterator[FakeUpstream]:
    fake = FakeUpstream()
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    config.keep_alive_timeout = 3600
    stop = trio.Event()
    app: Any = fake  # a raw ASGI callable; hypercorn's stubs want its TypedDict events
    binds = await nursery.start(
        lambda task_status: hypercorn_serve(
            app, config, shutdown_trigger=stop.wait, task_status=task_status
        )
    )
    fake.url = binds[0] + "/v1"
    yield fake
    stop.set()


def model(url: str, **overrides: Any) -> OpenAIModel:
    settings: dict[str, Any] = {"base_url": url, "api_key_env": "UPSTREAM_KEY"}
    settings.update(overrides)
    return OpenAIModel(OpenAIConfig(**settings), env=ENV)


REQUEST = ModelRequest(
    model="gpt-test",
    messages=[
        ChatMessage(role="system", content="be brief"),
        ChatMessage(role="user", content="hi"),
    ],
)


async def collect(provider: OpenAIModel, request: ModelRequest = REQUEST) -> list[ModelChunk]:
    async with aclosing(provider.stream(request)) as chunks:
        return [c async for c in chunks]


async def test_streams_text_deltas_then_finished_with_upstream_usage(
    upstream: FakeUpstream,
) -> None:
    """Content deltas arrive as TextDelta in order; Finished carries the include_usage numbers."""
    upstream.replies.append(text_stream("Hel", "lo", " there"))
    chunks = await collect(model(upstream.url))
    assert chunks == [
        TextDelta("Hel"),
        TextDelta("lo"),
        TextDelta(" there"),
        Finished("stop", Usage(prompt_tokens=5, completion_tokens=3, total_tokens=8)),
    ]


async def test_request_is_streaming_openai_shape_with_bearer_key(upstream: FakeUpstream) -> None:
    """The upstream sees stream=true, include_usage, the messages, tools and the Bearer key."""
    upstream.replies.append(text_stream("ok"))
    tool = ToolSpec(name="clock", description="time", parameters={"type": "object"})
    request = ModelRequest(
        model="gpt-test",
        messages=[
            ChatMessage(role="user", content="time?"),
            ChatMessage(
                role="assistant",
                tool_calls=[ToolCall(id="c1", name="clock", arguments="{}")],
            ),
            ChatMessage(role="tool", content="noon", tool_call_id="c1", name="clock"),
        ],
        tools=[tool],
        max_tokens=7,
        temperature=0.5,
    )
    await collect(model(upstream.url), request)
    [seen] = upstream.requests
    assert seen.headers["authorization"] == f"Bearer {KEY}"
    assert seen.body["stream"] is True
    assert seen.body["stream_options"] == {"include_usage": True}
    assert seen.body["max_tokens"] == 7 and seen.body["temperature"] == 0.5
    assert seen.body["tools"] == [
        {
            "type": "function",
            "function": {"name": "clock", "description": "time", "parameters": {"type": "object"}},
        }
    ]
    assert seen.body["messages"][1]["tool_calls"] == [
        {"id": "c1", "type": "function", "function": {"name": "clock", "arguments": "{}"}}
    ]
    assert seen.body["messages"][2] == {
        "role": "tool",
        "content": "noon",
        "tool_call_id": "c1",
        "name": "clock",
    }


async def test_request_fields_and_tool_choice_reach_the_upstream(upstream: FakeUpstream) -> None:
    """A request's tool_choice and upstream fields are sent as they came; they cannot replace
    the model, the messages or streaming."""
    upstream.replies.append(text_stream("ok"))
    tool = ToolSpec(name="lookup", description="look up", parameters={"type": "object"})
    request = ModelRequest(
        model="gpt-test",
        messages=[ChatMessage(role="user", content="hi")],
        tools=[tool],
        max_tokens=5,
        tool_choice={"type": "function", "function": {"name": "lookup"}},
        options={
            "seed": 7,
            "stop": ["END"],
            "response_format": {"type": "json_object"},
            "model": "other",
            "stream": False,
        },
    )
    await collect(model(upstream.url), request)
    [seen] = upstream.requests
    assert seen.body["tool_choice"] == {"type": "function", "function": {"name": "lookup"}}
    assert seen.body["seed"] == 7 and seen.body["stop"] == ["END"]
    assert seen.body["response_format"] == {"type": "json_object"}
    assert seen.body["max_tokens"] == 5
    assert seen.body["model"] == "gpt-test" and seen.body["stream"] is True


async def test_media_parts_reach_the_upstream_as_content_parts(upstream: FakeUpstream) -> None:
    """A message's image, audio and file parts go upstream after its text, bytes as base64."""
    upstream.replies.append(text_stream("ok"))
    parts = [
        MediaPart(kind="image", media_type="image/png", data=b"\x89PNG", detail="low"),
        MediaPart(kind="image", url="https://example.com/a.png"),
        MediaPart(kind="audio", media_type="audio/wav", data=b"RIFF"),
        MediaPart(kind="file", media_type="application/pdf", data=b"%PDF", filename="a.pdf"),
    ]
    request = ModelRequest(
        model="gpt-test", messages=[ChatMessage(role="user", content="see", parts=parts)]
    )
    await collect(model(upstream.url), request)
    [seen] = upstream.requests
    assert seen.body["messages"][0]["content"] == [
        {"type": "text", "text": "see"},
        {
            "type": "image_url",
            "image_url": {"url": "data:image/png;base64,iVBORw==", "detail": "low"},
        },
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
        {
            "type": "file",
            "file": {"file_data": "data:application/pdf;base64,JVBERg==", "filename": "a.pdf"},
        },
    ]


async def test_tool_call_deltas_split_across_chunks_are_assembled(upstream: FakeUpstream) -> None:
    """Two interleaved tool calls streamed in fragments come out as two complete ToolCalls."""
    frames = [
        chunk({"role": "assistant", "content": None}),
        chunk(
            {
                "tool_calls": [
                    {"index": 0, "id": "call_a", "type": "function", "function": {"name": "calc"}}
                ]
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"expr'}}]}),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 1,
                        "id": "call_b",
                        "type": "function",
                        "function": {"name": "clock", "arguments": ""},
                    }
                ]
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '": "2+2"}'}}]}),
        chunk({"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]}),
        chunk({}, "tool_calls"),
        usage_chunk(9, 4),
        DONE,
    ]
    upstream.replies.append(Stream(frames))
    chunks = await collect(model(upstream.url))
    assert chunks == [
        ToolCallChunk(ToolCall(id="call_a", name="calc", arguments='{"expr": "2+2"}')),
        ToolCallChunk(ToolCall(id="call_b", name="clock", arguments="{}")),
        Finished("tool_calls", Usage(prompt_tokens=9, completion_tokens=4, total_tokens=13)),
    ]


async def test_mcp_tool_names_go_as_openai_function_names_and_come_back(
    upstream: FakeUpstream,
) -> None:
    """An MCP tool `docs.search` is offered (and shown in history) as `docs__search`, which
    OpenAI accepts, and a call to `docs__search` comes back named `docs.search`."""
    frames = [
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_a",
                        "type": "function",
                        "function": {"name": "docs__search", "arguments": "{}"},
                    }
                ]
            }
        ),
        chunk({}, "tool_calls"),
        DONE,
    ]
    upstream.replies.append(Stream(frames))
    tool = ToolSpec(name="docs.search", description="search", parameters={"type": "object"})
    earlier = ToolCall(id="c0", name="docs.search", arguments="{}")
    request = ModelRequest(
        model="gpt-test",
        messages=[
            ChatMessage(role="user", content="find"),
            ChatMessage(role="assistant", tool_calls=[earlier]),
            ChatMessage(role="tool", content="none", tool_call_id="c0"),
        ],
        tools=[tool],
    )
    chunks = await collect(model(upstream.url), request)
    [seen] = upstream.requests
    assert seen.body["tools"][0]["function"]["name"] == "docs__search"
    assert seen.body["messages"][1]["tool_calls"][0]["function"]["name"] == "docs__search"
    assert chunks[0] == ToolCallChunk(ToolCall(id="call_a", name="docs.search", arguments="{}"))


async def test_429_with_retry_after_waits_that_long_then_succeeds(
    upstream: FakeUpstream, autojump_clock: trio.testing.MockClock
) -> None:
    """A 429 with Retry-After: 7 is retried once, 7 (virtual) seconds later."""
    upstream.replies += [
        Status(429, _error("slow down"), [(b"retry-after", b"7")]),
        text_stream("ok"),
    ]
    start = trio.current_time()
    chunks = await collect(model(upstream.url, backoff_initial=0.1))
    assert 7 <= trio.current_time() - start < 8
    assert chunks[0] == TextDelta("ok")
    assert len(upstream.requests) == 2


async def test_500_is_retried_with_exponential_backoff(
    upstream: FakeUpstream, autojump_clock: trio.testing.MockClock
) -> None:
    """Two 500s then success: waits 1 s then 2 s (backoff_initial=1) and returns the reply."""
    upstream.replies += [
        Status(500, _error("boom")),
        Status(502, b"bad gateway"),
        text_stream("fine"),
    ]
    start = trio.current_time()
    chunks = await collect(model(upstream.url, backoff_initial=1.0))
    assert 3 <= trio.current_time() - start < 4
    assert chunks[0] == TextDelta("fine")
    assert len(upstream.requests) == 3


async def test_400_is_not_retried_and_carries_upstream_message(upstream: FakeUpstream) -> None:
    """A 400 raises ModelError at once with the status and the upstream's error message."""
    upstream.replies += [Status(400, _error("messages: too long")), text_stream("never")]
    with pytest.raises(ModelError, match="messages: too long") as info:
        await collect(model(upstream.url))
    assert info.value.status == 400
    assert len(upstream.requests) == 1


async def test_retries_stop_after_max_retries(
    upstream: FakeUpstream, autojump_clock: trio.testing.MockClock
) -> None:
    """With max_retries=2, three 503s raise ModelError naming the status after three attempts."""
    upstream.replies += [Status(503, _error("overloaded")) for _ in range(4)]
    with pytest.raises(ModelError, match=r"503 after 3 attempts: overloaded") as info:
        await collect(model(upstream.url, max_retries=2))
    assert info.value.status == 503
    assert len(upstream.requests) == 3


async def test_connect_errors_are_retried_then_reported(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A closed port is retried max_retries times with backoff, then raises a ModelError."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    start = trio.current_time()
    provider = model(f"http://127.0.0.1:{port}/v1", max_retries=2, backoff_initial=1.0)
    with pytest.raises(ModelError, match=r"could not reach .* after 3 attempts"):
        await collect(provider)
    assert trio.current_time() - start >= 3


async def test_missing_key_env_var_is_a_clear_error(upstream: FakeUpstream) -> None:
    """An unset key variable raises ModelError naming the variable, before any request."""
    provider = OpenAIModel(OpenAIConfig(base_url=upstream.url, api_key_env="NOPE_KEY"), env={})
    with pytest.raises(ModelError, match="NOPE_KEY"):
        await collect(provider)
    assert upstream.requests == []


async def test_api_key_never_appears_in_errors_or_logs(
    upstream: FakeUpstream, autojump_clock: trio.testing.MockClock
) -> None:
    """An upstream that echoes the key back in a 401 gets it redacted; retry logs omit it too."""
    wrong = "sk-wrong-key-abcdef0123"
    upstream.replies += [Status(500, _error(f"bad {KEY}")), Status(500, _error(f"bad {KEY}"))]
    with structlog.testing.capture_logs() as logs:
        with pytest.raises(ModelError) as retried:
            await collect(model(upstream.url, max_retries=1))
        provider = OpenAIModel(
            OpenAIConfig(base_url=upstream.url, api_key_env="K"), env={"K": wrong}
        )
        with pytest.raises(ModelError) as rejected:
            await collect(provider)
    assert rejected.value.status == 401
    assert "Incorrect API key provided" in str(rejected.value)
    assert wrong not in str(rejected.value)
    assert KEY not in str(retried.value) and "[redacted]" in str(retried.value)
    assert logs, "the retry should have been logged"
    assert KEY not in repr(logs) and wrong not in repr(logs)


async def test_cancel_mid_stream_stops_within_one_chunk_and_closes_upstream(
    upstream: FakeUpstream,
) -> None:
    """Cancelling after the first delta stops the stream there and the server sees a disconnect."""
    frames = [chunk({"content": "one "}), chunk({"content": "two "}), chunk({"content": "three"})]
    upstream.replies.append(Stream(frames, hang=True))
    tasks_before = trio.lowlevel.current_statistics().tasks_living
    seen: list[ModelChunk] = []
    with trio.CancelScope() as scope:
        async with aclosing(model(upstream.url).stream(REQUEST)) as chunks:
            async for item in chunks:
                seen.append(item)
                scope.cancel()
    assert seen == [TextDelta("one ")]
    with trio.fail_after(5):
        await upstream.disconnected.wait()
    # Hypercorn's per-connection task may still be winding down; the client left none.
    assert trio.lowlevel.current_statistics().tasks_living <= tasks_before + 1


async def test_stream_cut_before_finish_is_an_error(upstream: FakeUpstream) -> None:
    """A stream that ends without finish_reason or [DONE] raises instead of faking a reply."""
    upstream.replies.append(Stream([chunk({"content": "half"})]))
    with pytest.raises(ModelError, match="before finishing"):
        await collect(model(upstream.url))


async def test_read_timeout_mid_stream_is_a_model_error(
    upstream: FakeUpstream, autojump_clock: trio.testing.MockClock
) -> None:
    """An upstream that stalls after the first delta fails after read_timeout, not never."""
    upstream.replies.append(Stream([chunk({"content": "start"})], hang=True))
    start = trio.current_time()
    with pytest.raises(ModelError, match="ReadTimeout"):
        await collect(model(upstream.url, read_timeout=30.0))
    assert 30 <= trio.current_time() - start < 31


async def test_upstream_error_frame_mid_stream_is_a_model_error(upstream: FakeUpstream) -> None:
    """An `{"error": ...}` SSE frame becomes a ModelError carrying its message."""
    upstream.replies.append(Stream([sse({"error": {"message": "model crashed"}})]))
    with pytest.raises(ModelError, match="model crashed"):
        await collect(model(upstream.url))
