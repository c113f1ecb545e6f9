"""The OpenAI wire format: chat completion and Responses requests, and the bodies and chunks that
answer them, built from a run's recorded events so a resumed stream is byte-for-byte the same."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from cuelog.actors import (
    AgentSpec,
    AssistantDelta,
    ChatMessage,
    RequestOptions,
    Role,
    RunCancelled,
    RunCompleted,
    RunEvent,
    RunFailed,
    RunStarted,
    ToolCall,
    ToolSpec,
    Usage,
)
from cuelog.http._bodies import MaxTokens, Temperature
from cuelog.http._content_parts import ContentPart, Json, content_of
from cuelog.http._wire import ApiError, check_free_json, sse_frame, to_json

# -- requests ------------------------------------------------------------------------------------


class FunctionCall(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    arguments: str = "{}"


class WireToolCall(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: str
    function: FunctionCall
    type: str = "function"


class WireMessage(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[WireToolCall] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None
    audio: Json = None
    function_call: FunctionCall | None = None


class StreamOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    include_usage: bool = False
    include_obfuscation: bool | None = None


class FunctionDefinition(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    description: str | None = None
    parameters: dict[str, Json] | None = None
    strict: bool | None = None


class ChatTool(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A tool the client offers: a function it runs itself (`custom` tools are refused)."""

    type: Literal["function"]
    function: FunctionDefinition


Sampling = Annotated[float, msgspec.Meta(ge=-2, le=2)]
TopP = Annotated[float, msgspec.Meta(ge=0, le=1)]
Seed = Annotated[int, msgspec.Meta(ge=-(1 << 63), le=(1 << 63) - 1)]
EndUser = Annotated[str, msgspec.Meta(max_length=512)]

# Request fields cuelog passes to an OpenAI-compatible upstream as they came (the rest it acts on
# itself, or records and ignores).
CHAT_UPSTREAM_FIELDS = (
    "top_p",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "response_format",
    "reasoning_effort",
    "verbosity",
    "parallel_tool_calls",
    "prediction",
    "service_tier",
    "prompt_cache_key",
    "prompt_cache_retention",
    "web_search_options",
)


class ChatCompletionRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The OpenAI chat completion body: every field of the API is accepted (docs/api.md says
    what cuelog does with each); a field the API does not have is a 400."""

    model: str
    messages: Annotated[list[WireMessage], msgspec.Meta(min_length=1)]
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: MaxTokens | None = None
    max_completion_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    n: Annotated[int, msgspec.Meta(ge=1, le=128)] | None = None
    stop: str | list[str] | None = None
    presence_penalty: Sampling | None = None
    frequency_penalty: Sampling | None = None
    logit_bias: dict[str, Annotated[float, msgspec.Meta(ge=-100, le=100)]] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, msgspec.Meta(ge=0, le=20)] | None = None
    seed: Seed | None = None
    user: EndUser | None = None
    safety_identifier: EndUser | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    parallel_tool_calls: bool | None = None
    tools: list[ChatTool] | None = None
    tool_choice: Json = None
    functions: list[FunctionDefinition] | None = None
    function_call: Json = None
    response_format: Json = None
    service_tier: str | None = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    modalities: list[str] | None = None
    audio: Json = None
    prediction: Json = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    prompt_cache_options: Json = None
    web_search_options: Json = None
    moderation: Json = None

    def __post_init__(self) -> None:
        for name in ("tool_choice", "function_call", "response_format", "audio", "prediction"):
            check_free_json(getattr(self, name), name)
        for name in ("prompt_cache_options", "web_search_options", "moderation"):
            check_free_json(getattr(self, name), name)
        for index, tool in enumerate(self.tools or []):
            check_free_json(tool.function.parameters, f"tools.{index}.function.parameters")


def tool_spec_of(function: FunctionDefinition) -> ToolSpec:
    parameters = function.parameters or {"type": "object", "properties": {}}
    return ToolSpec(
        name=function.name, description=function.description or "", parameters=parameters
    )


def chat_request_options(body: ChatCompletionRequest) -> RequestOptions:
    """What a chat completion request asks of its run beyond the agent's definition."""
    functions = [tool.function for tool in body.tools or []] + list(body.functions or [])
    tool_choice = body.tool_choice
    if tool_choice is None and body.function_call is not None:  # the deprecated spelling
        call = body.function_call
        tool_choice = (
            {"type": "function", "function": {"name": call.get("name")}}
            if isinstance(call, dict)
            else call
        )
    upstream = {
        name: value for name in CHAT_UPSTREAM_FIELDS if (value := getattr(body, name)) is not None
    }
    if body.max_completion_tokens is not None:
        upstream["max_completion_tokens"] = body.max_completion_tokens  # the name to send

    return RequestOptions(
        client_tools=[tool_spec_of(f) for f in functions],
        tool_choice=tool_choice,
        upstream=upstream,
        end_user=body.safety_identifier or body.user,
    )


def with_request(
    spec: AgentSpec,
    options: RequestOptions,
    max_tokens: int | None,
    temperature: float | None,
) -> AgentSpec:
    """The agent's definition as one request runs it: its limit and temperature when it sets
    them, its client functions and upstream fields."""
    changes: dict[str, Any] = {"request": options}
    if max_tokens is not None:
        changes["max_tokens"] = max_tokens
    if temperature is not None:
        changes["temperature"] = temperature
    return msgspec.structs.replace(spec, **changes)


def chat_messages(messages: list[WireMessage]) -> list[ChatMessage]:
    out = []
    for index, message in enumerate(messages):
        calls = [
            ToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments)
            for c in message.tool_calls or []
        ]
        if message.function_call is not None:  # the deprecated single call
            fc = message.function_call
            calls.append(ToolCall(id=f"call_{fc.name}", name=fc.name, arguments=fc.arguments))
        role: Role
        if message.role == "developer":
            role = "system"
        elif message.role == "function":
            role = "tool"
        else:
            role = message.role
        tool_call_id = message.tool_call_id
        if message.role == "function" and message.name:
            tool_call_id = f"call_{message.name}"
        text, media = content_of(message.content, f"messages.{index}.content")
        out.append(
            ChatMessage(
                role=role,
                content=text,
                parts=media or None,
                tool_calls=calls or None,
                tool_call_id=tool_call_id,
                name=message.name,
            )
        )
    if not out:
        raise ApiError(400, "messages must hold at least one message", param="messages")
    return out


def new_messages(messages: list[ChatMessage]) -> list[ChatMessage]:
    """With a session, only the trailing user and tool messages are new (the results of the
    client functions the last run called, then what the user says); the session has the rest."""
    tail: list[ChatMessage] = []
    for message in reversed(messages):
        if message.role not in {"user", "tool"}:
            break
        tail.append(message)
    if not tail:
        raise ApiError(
            400, "the last message must be from the user or a tool result", param="messages"
        )
    return list(reversed(tail))


def check_last_message(messages: list[ChatMessage], param: str) -> None:
    if messages[-1].role not in {"user", "tool"}:
        raise ApiError(400, "the last message must be from the user or a tool result", param=param)


# -- responses -----------------------------------------------------------------------------------


def _usage(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def completion_id(run_id: str) -> str:
    return f"chatcmpl-{run_id}"


def wire_tool_calls(calls: list[ToolCall], *, indexed: bool = False) -> list[dict[str, Any]]:
    """Tool calls in the chat completions shape (stream deltas number them with `index`)."""
    out: list[dict[str, Any]] = []
    for index, call in enumerate(calls):
        wire: dict[str, Any] = {"index": index} if indexed else {}
        wire |= {
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": call.arguments},
        }
        out.append(wire)
    return out


def chat_completion(
    run_id: str,
    model: str,
    created: int,
    content: str,
    usage: Usage,
    finish_reason: str = "stop",
    tool_calls: list[ToolCall] | None = None,
) -> bytes:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": content if content or not tool_calls else None,
        "refusal": None,
    }
    if tool_calls:
        message["tool_calls"] = wire_tool_calls(tool_calls)
    return to_json(
        {
            "id": completion_id(run_id),
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": finish_reason,
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
        if event.tool_calls:
            calls = {"tool_calls": wire_tool_calls(event.tool_calls, indexed=True)}
            frames.append(_chunk(run_id, model, created, calls, None))
        frames.append(_chunk(run_id, model, created, {}, event.finish_reason))
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
