"""The `echo` model: the behaviour docs/echo-model.md promises, chunk by chunk."""

from __future__ import annotations

from contextlib import aclosing

import trio
import trio.testing

from cuelog.actors._messages import ChatMessage, ToolCall, ToolSpec, Usage
from cuelog.actors._models import (
    Finished,
    ModelChunk,
    ModelProvider,
    ModelRequest,
    TextDelta,
    ToolCallChunk,
)
from cuelog.actors._models_echo import EchoModel

CALC = ToolSpec(name="calculator", description="arithmetic")


def user(text: str) -> ChatMessage:
    return ChatMessage(role="user", content=text)


def request(*messages: ChatMessage, max_tokens: int | None = None) -> ModelRequest:
    return ModelRequest(
        model="echo-1", messages=list(messages), tools=[CALC], max_tokens=max_tokens
    )


async def collect(req: ModelRequest, provider: ModelProvider | None = None) -> list[ModelChunk]:
    async with aclosing((provider or EchoModel()).stream(req)) as chunks:
        return [c async for c in chunks]


def text_of(chunks: list[ModelChunk]) -> str:
    return "".join(c.text for c in chunks if isinstance(c, TextDelta))


async def test_echoes_last_user_message_in_word_chunks() -> None:
    """`hello  big world` streams as `Echo: `, `hello  `, `big `, `world` then stop."""
    system = ChatMessage(role="system", content="be kind")
    chunks = await collect(request(system, user("old"), user("hello  big world")))
    assert chunks[:-1] == [
        TextDelta("Echo: "),
        TextDelta("hello  "),
        TextDelta("big "),
        TextDelta("world"),
    ]
    # prompt: "be kind" (2) + "old" (1) + "hello big world" (3); completion: 4 words.
    assert chunks[-1] == Finished(
        "stop", Usage(prompt_tokens=6, completion_tokens=4, total_tokens=10)
    )


async def test_same_conversation_gives_identical_streams() -> None:
    """Two calls with the same request produce exactly the same chunks."""
    req = request(user("determinism please"))
    assert await collect(req) == await collect(req)


async def test_max_tokens_cuts_the_reply_with_finish_length() -> None:
    """With max_tokens=2 only `Echo: one ` is sent and finish_reason is length."""
    chunks = await collect(request(user("one two three"), max_tokens=2))
    assert text_of(chunks) == "Echo: one "
    assert chunks[-1] == Finished(
        "length", Usage(prompt_tokens=3, completion_tokens=2, total_tokens=5)
    )


async def test_tool_line_emits_one_tool_call_with_a_deterministic_id() -> None:
    """`/tool calculator {...}` yields a ToolCallChunk with compact JSON and finish tool_calls."""
    req = request(user('/tool calculator {"expr": "2 + 2"}'))
    chunks = await collect(req)
    assert len(chunks) == 2
    call_chunk, finished = chunks
    assert isinstance(call_chunk, ToolCallChunk)
    assert call_chunk.call.name == "calculator"
    assert call_chunk.call.arguments == '{"expr":"2 + 2"}'
    assert call_chunk.call.id.startswith("call_") and len(call_chunk.call.id) == 29
    # prompt: `/tool calculator {"expr": "2 + 2"}` is 6 words; completion: the name and the
    # compact arguments `calculator {"expr":"2 + 2"}`, 4 words.
    assert finished == Finished(
        "tool_calls", Usage(prompt_tokens=6, completion_tokens=4, total_tokens=10)
    )
    again = await collect(req)
    assert again[0] == call_chunk
    other = await collect(request(user("hi"), user('/tool calculator {"expr": "2 + 2"}')))
    assert isinstance(other[0], ToolCallChunk) and other[0].call.id != call_chunk.call.id


async def test_tool_line_without_arguments_calls_with_empty_object() -> None:
    """`/tool calculator` alone calls the tool with `{}`."""
    [call_chunk, _] = await collect(request(user("/tool calculator")))
    assert isinstance(call_chunk, ToolCallChunk)
    assert call_chunk.call.arguments == "{}"


async def test_after_a_tool_result_it_answers_with_the_result() -> None:
    """When the last message is a tool result, the reply is `Tool NAME returned: RESULT`."""
    call = ToolCall(id="call_x", name="calculator", arguments='{"expr":"2+2"}')
    messages = [
        user('/tool calculator {"expr": "2+2"}'),
        ChatMessage(role="assistant", tool_calls=[call]),
        ChatMessage(role="tool", tool_call_id="call_x", content="4"),
    ]
    chunks = await collect(request(*messages))
    assert text_of(chunks) == "Tool calculator returned: 4"
    assert isinstance(chunks[-1], Finished) and chunks[-1].finish_reason == "stop"


async def test_malformed_tool_lines_answer_with_the_syntax() -> None:
    """Bad JSON, a non-object, a missing name or an unoffered tool give a text answer, no call."""
    cases = {
        "/tool calculator {expr: 1}": "not valid JSON",
        "/tool calculator [1, 2]": "must be a JSON object",
        "/tool": "tool name",
        "/tool cal$c {}": "tool name",
        '/tool files {"op": "list"}': "not offered in this request (offered: calculator)",
    }
    for line, reason in cases.items():
        chunks = await collect(request(user(line)))
        assert not any(isinstance(c, ToolCallChunk) for c in chunks), line
        answer = text_of(chunks)
        assert reason in answer, (line, answer)
        assert chunks[-1] == Finished("stop", chunks[-1].usage)  # type: ignore[union-attr]
    assert "/tool NAME {" in text_of(await collect(request(user("/tool calculator [1]"))))


async def test_conversation_without_user_message_gets_a_placeholder() -> None:
    """No user message at all answers `Echo: (no user message)`."""
    chunks = await collect(request(ChatMessage(role="system", content="sys")))
    assert text_of(chunks) == "Echo: (no user message)"


async def test_cancel_stops_within_one_chunk_and_leaves_no_task(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With chunk_delay, cancelling after 2.5 chunk-times gets exactly two chunks, no tasks left."""
    tasks_before = trio.lowlevel.current_statistics().tasks_living
    seen: list[ModelChunk] = []
    with trio.move_on_after(2.5):
        async with aclosing(EchoModel(chunk_delay=1.0).stream(request(user("a b c d e")))) as s:
            async for item in s:
                seen.append(item)
    assert seen == [TextDelta("Echo: "), TextDelta("a ")]
    assert trio.lowlevel.current_statistics().tasks_living == tasks_before
