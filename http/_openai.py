"""The OpenAI wire format: chat completion and Responses requests, and the bodies and chunks that
answer them, built from a run's recorded events so a resumed stream is byte-for-byte the same."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from cuelog.actors import (
    AssistantDelta,
    ChatMessage,
    RunCancelled,
    RunCompleted,
    RunEvent,
    RunFailed,
    RunStarted,
    ToolCall,
    Usage,
)
from cuelog.http._bodies import MaxTokens, Temperature
from cuelog.http._wire import ApiError, sse_frame, to_json

# -- requests ------------------------------------------------------------------------------------


class ContentPart(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    type: str
    text: str | None = None
    image_url: Any = None


class FunctionCall(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    arguments: str = "{}"


class WireToolCall(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: str
    function: FunctionCall
    type: str = "function"


class WireMessage(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[WireToolCall] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None


class StreamOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    include_usage: bool = False
    include_obfuscation: bool | None = None


class ChatCompletionRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The OpenAI chat completion body. Sampling fields the agent does not use are accepted."""

    model: str
    messages: Annotated[list[WireMessage], msgspec.Meta(min_length=1)]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: MaxTokens | None = None
    max_completion_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    n: Annotated[int, msgspec.Meta(ge=1, le=128)] | None = None
    stop: str | list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, msgspec.Meta(ge=0, le=20)] | None = None
    seed: Annotated[int, msgspec.Meta(ge=-(1 << 63), le=(1 << 63) - 1)] | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    parallel_tool_calls: bool | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    response_format: Any = None
    service_tier: str | None = None
    reasoning_effort: str | None = None


class ResponsesInputMessage(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart]
    type: Literal["message"] = "message"


class ResponsesRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The subset of the Responses API cuelog serves."""

    model: str
    input: str | list[ResponsesInputMessage]
    instructions: str | None = None
    stream: bool = False
    max_output_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    store: bool | None = None


def _text_of(content: str | list[ContentPart] | None, where: str) -> str | None:
    if content is None or isinstance(content, str):
        return content
    texts = []
    for part in content:
        if part.type not in {"text", "input_text", "output_text"} or part.text is None:
            raise ApiError(400, f"{where}: only text content parts are supported", param=where)
        texts.append(part.text)
    return "".join(texts)


def chat_messages(messages: list[WireMessage]) -> list[ChatMessage]:
    out = []
    for index, message in enumerate(messages):
        role = "system" if message.role == "developer" else message.role
        calls = (
            [
                ToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments)
                for c in message.tool_calls
            ]
            if message.tool_calls
            else None
        )
        out.append(
            ChatMessage(
                role=role,
                content=_text_of(message.content, f"messages.{index}.content"),
                tool_calls=calls,
                tool_call_id=message.tool_call_id,
                name=message.name,
            )
        )
    if not out:
        raise ApiError(400, "messages must hold at least one message", param="messages")
    return out


def new_user_messages(messages: list[ChatMessage]) -> list[ChatMessage]:
    """With a session, only the trailing user messages are new; the session has the rest."""
    tail: list[ChatMessage] = []
    for message in reversed(messages):
        if message.role != "user":
            break
        tail.append(message)
    if not tail:
        raise ApiError(400, "the last message must be from the user", param="messages")
    return list(reversed(tail))


def responses_messages(body: ResponsesRequest) -> list[ChatMessage]:
    out: list[ChatMessage] = []
    if body.instructions:
        out.append(ChatMessage(role="system", content=body.instructions))
    if isinstance(body.input, str):
        out.append(ChatMessage(role="user", content=body.input))
    else:
        for index, item in enumerate(body.input):
            role = "system" if item.role == "developer" else item.role
            out.append(
                ChatMessage(role=role, content=_text_of(item.content, f"input.{index}.content"))
            )
    if not out or out[-1].role != "user":
        raise ApiError(400, "input must end with a user message", param="input")
    return out


# -- responses -----------------------------------------------------------------------------------


def _usage(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def completion_id(run_id: str) -> str:
    return f"chatcmpl-{run_id}"


def chat_completion(run_id: str, model: str, created: int, content: str, usage: Usage) -> bytes:
    return to_json(
        {
            "id": completion_id(run_id),
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": _usage(usage),
            "system_fingerprint": None,
        }
    )


def _chunk(
    run_id: str, model: str, created: int, delta: dict[str, Any], finish: str | None
) -> bytes:
    return to_json(
        {
            "id": completion_id(run_id),
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
    )


def chat_chunk_frames(
    item: RunEvent, run_id: str, model: str, created: int, include_usage: bool
) -> list[bytes]:
    """The `chat.completion.chunk` frames one run event becomes (often none)."""
    frames: list[bytes] = []
    event = item.event
    if isinstance(event, RunStarted):
        frames.append(_chunk(run_id, model, created, {"role": "assistant", "content": ""}, None))
    elif isinstance(event, AssistantDelta):
        frames.append(_chunk(run_id, model, created, {"content": event.text}, None))
    elif isinstance(event, RunCompleted):
        done = event
        frames.append(_chunk(run_id, model, created, {}, "stop"))
        if include_usage:
            usage_chunk = {
                "id": completion_id(run_id),
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": _usage(done.usage),
            }
            frames.append(to_json(usage_chunk))
    elif isinstance(event, RunFailed | RunCancelled):
        kind = "run_cancelled" if isinstance(event, RunCancelled) else "run_failed"
        error = {
            "message": f"the run ended: {event.reason}",
            "type": "server_error",
            "code": kind,
            "param": None,
        }
        frames.append(to_json({"error": error}))
    # Only the last frame of an event carries its seq: a client that resumes with Last-Event-ID
    # has then seen every frame of that event.
    last = len(frames) - 1
    seq = item.record.seq
    return [sse_frame(frame, id=seq if i == last else None) for i, frame in enumerate(frames)]


DONE_FRAME = b"data: [DONE]\n\n"


# -- the Responses API ---------------------------------------------------------------------------


def response_object(
    run_id: str, model: str, created: int, status: str, text: str | None, usage: Usage | None
) -> dict[str, Any]:
    output: list[dict[str, Any]] = []
    if text is not None:
        output.append(
            {
                "type": "message",
                "id": f"msg_{run_id}",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        )
    return {
        "id": f"resp_{run_id}",
        "object": "response",
        "created_at": created,
        "status": status,
        "model": model,
        "output": output,
        "parallel_tool_calls": False,
        "tool_choice": "auto",
        "tools": [],
        "error": None,
        "incomplete_details": None,
        "usage": None
        if usage is None
        else {
            "input_tokens": usage.prompt_tokens,
            "output_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        },
    }
