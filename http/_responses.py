"""The OpenAI Responses API wire format: the request, its input items as chat messages, and the
response object and stream events built from a run (the response id is the run id)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any, Final, Literal

import msgspec

from cuelog.actors import (
    AssistantDelta,
    ChatMessage,
    RequestOptions,
    RunCancelled,
    RunCompleted,
    RunEvent,
    RunFailed,
    RunView,
    ToolCall,
    ToolSpec,
    Usage,
)
from cuelog.http._bodies import MaxTokens, Temperature
from cuelog.http._content_parts import ContentPart, Json, content_of, text_of
from cuelog.http._openai import EndUser, TopP
from cuelog.http._wire import ApiError, check_free_json, sse_frame, to_json

RESPONSE_PREFIX: Final = "resp_"

# -- requests ------------------------------------------------------------------------------------


class InputItem(msgspec.Struct, frozen=True):
    """One item of `input`: a message, a function call the model made, or a function's output.
    Other item types the API has (reasoning) are accepted and not sent to the model."""

    type: str = "message"
    role: Literal["system", "developer", "user", "assistant"] | None = None
    content: str | list[ContentPart] | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | list[ContentPart] | None = None
    id: str | None = None
    status: str | None = None


class ResponsesTool(msgspec.Struct, frozen=True):
    """A tool the client offers; only `function` tools (run by the client) are served."""

    type: str
    name: str | None = None
    description: str | None = None
    parameters: dict[str, Json] | None = None
    strict: bool | None = None


class TextConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    format: dict[str, Json] | None = None
    verbosity: str | None = None


class Reasoning(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    effort: str | None = None
    summary: str | None = None
    generate_summary: str | None = None


class ResponsesStreamOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    include_obfuscation: bool | None = None


class ResponsesRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The OpenAI Responses body: every field of the API is accepted (docs/api.md says what
    cuelog does with each); a field the API does not have is a 400."""

    model: str | None = None
    input: str | list[InputItem] | None = None
    instructions: str | None = None
    previous_response_id: str | None = None
    conversation: str | dict[str, Json] | None = None
    stream: bool | None = False
    stream_options: ResponsesStreamOptions | None = None
    background: bool | None = None
    max_output_tokens: MaxTokens | None = None
    max_tool_calls: Annotated[int, msgspec.Meta(ge=0, le=1 << 20)] | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_logprobs: Annotated[int, msgspec.Meta(ge=0, le=20)] | None = None
    tools: list[ResponsesTool] | None = None
    tool_choice: Json = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    reasoning: Reasoning | None = None
    include: list[str] | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    user: EndUser | None = None
    safety_identifier: EndUser | None = None
    service_tier: str | None = None
    truncation: str | None = None
    prompt: Json = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    prompt_cache_options: Json = None
    context_management: Json = None
    background_options: Json = None
    moderation: Json = None
    access_programs: Json = None
    image: Json = None

    def __post_init__(self) -> None:
        for name in ("tool_choice", "prompt", "conversation", "prompt_cache_options"):
            check_free_json(getattr(self, name), name)
        for name in ("context_management", "background_options", "moderation"):
            check_free_json(getattr(self, name), name)
        for name in ("access_programs", "image"):
            check_free_json(getattr(self, name), name)
        for index, tool in enumerate(self.tools or []):
            check_free_json(tool.parameters, f"tools.{index}.parameters")
        if self.text is not None:
            check_free_json(self.text.format, "text.format")


def run_id_of(response_id: str) -> str:
    """The run a response id names (`resp_<run id>`); a bare run id is taken as it is."""
    return response_id.removeprefix(RESPONSE_PREFIX)


def responses_options(body: ResponsesRequest) -> RequestOptions:
    """What a Responses request asks of its run beyond the agent's definition, with the fields
    an upstream chat completions API has passed under their chat names."""
    tools: list[ToolSpec] = []
    for index, tool in enumerate(body.tools or []):
        if tool.type != "function" or not tool.name:
            raise ApiError(
                400,
                f"tools.{index}: only function tools (run by the client) are served, "
                f"not {tool.type!r}",
                param=f"tools.{index}.type",
            )
        parameters = tool.parameters or {"type": "object", "properties": {}}
        tools.append(
            ToolSpec(name=tool.name, description=tool.description or "", parameters=parameters)
        )
    upstream: dict[str, Any] = {}
    for name in ("top_p", "top_logprobs", "parallel_tool_calls", "service_tier"):
        value = getattr(body, name)
        if value is not None:
            upstream[name] = value
    for name in ("prompt_cache_key", "prompt_cache_retention"):
        value = getattr(body, name)
        if value is not None:
            upstream[name] = value
    if body.reasoning is not None and body.reasoning.effort is not None:
        upstream["reasoning_effort"] = body.reasoning.effort
    if body.text is not None:
        if body.text.verbosity is not None:
            upstream["verbosity"] = body.text.verbosity
        if body.text.format is not None:
            upstream["response_format"] = chat_response_format(body.text.format)
    return RequestOptions(
        client_tools=tools,
        tool_choice=chat_tool_choice(body.tool_choice),
        upstream=upstream,
        end_user=body.safety_identifier or body.user,
    )


def chat_response_format(text_format: dict[str, Any]) -> dict[str, Any]:
    """`text.format` in the chat completions shape: its JSON schema goes under `json_schema`."""
    if text_format.get("type") != "json_schema":
        return text_format
    schema = {k: v for k, v in text_format.items() if k != "type"}
    return {"type": "json_schema", "json_schema": schema}


def chat_tool_choice(choice: Any) -> Any:
    """`tool_choice` in the chat completions shape (`{"type": "function", "name": ...}` names
    its function under `function`)."""
    if isinstance(choice, dict) and choice.get("type") == "function" and "name" in choice:
        return {"type": "function", "function": {"name": choice["name"]}}
    return choice


def _output_text(output: str | list[ContentPart] | None, where: str) -> str:
    if output is None:
        return ""
    return text_of(output, where) or ""


def responses_messages(body: ResponsesRequest) -> list[ChatMessage]:
    """The request's instructions and input as chat messages: consecutive function calls join
    one assistant message; a function's output is a tool message."""
    out: list[ChatMessage] = []
    if body.instructions:
        out.append(ChatMessage(role="system", content=body.instructions))
    if body.input is None:
        raise ApiError(400, "input is required", param="input")
    if isinstance(body.input, str):
        out.append(ChatMessage(role="user", content=body.input))
        return out
    names: dict[str, str] = {}
    for index, item in enumerate(body.input):
        where = f"input.{index}"
        if item.type == "message":
            if item.role is None:
                raise ApiError(400, f"{where}: a message needs a role", param=f"{where}.role")
            role = "system" if item.role == "developer" else item.role
            content, media = content_of(item.content, f"{where}.content")
            out.append(ChatMessage(role=role, content=content, parts=media or None))
        elif item.type == "function_call":
            if not item.call_id or not item.name:
                raise ApiError(400, f"{where}: a function_call needs call_id and name", param=where)
            call = ToolCall(id=item.call_id, name=item.name, arguments=item.arguments or "{}")
            names[item.call_id] = item.name
            last = out[-1] if out else None
            if last is not None and last.role == "assistant" and last.tool_calls:
                out[-1] = msgspec.structs.replace(last, tool_calls=[*last.tool_calls, call])
            else:
                out.append(ChatMessage(role="assistant", tool_calls=[call]))
        elif item.type == "function_call_output":
            if not item.call_id:
                raise ApiError(400, f"{where}: a function_call_output needs call_id", param=where)
            out.append(
                ChatMessage(
                    role="tool",
                    content=_output_text(item.output, f"{where}.output"),
                    tool_call_id=item.call_id,
                    name=names.get(item.call_id),
                )
            )
        elif item.type == "reasoning":
            continue  # the model's own notes; cuelog's models neither need nor make them
        else:
            raise ApiError(
                400, f"{where}: input items of type {item.type!r} are not supported", param=where
            )
    if not out or out[-1].role not in {"user", "tool"}:
        raise ApiError(
            400, "input must end with a user message or a function_call_output", param="input"
        )
    return out


def continued_messages(messages: list[ChatMessage]) -> list[ChatMessage]:
    """When a session continues, what it already has is not repeated: the input after the last
    assistant turn it holds (function outputs and new user messages)."""
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].role == "assistant":
            return messages[index + 1 :]
    return messages


# -- responses -----------------------------------------------------------------------------------


class ResponseEcho(msgspec.Struct, frozen=True, kw_only=True):
    """The request fields a response object repeats back."""

    instructions: str | None = None
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    previous_response_id: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    tools: list[dict[str, Any]] = msgspec.field(default_factory=list)
    tool_choice: Any = "auto"
    parallel_tool_calls: bool = True
    store: bool = True
    text: dict[str, Any] = msgspec.field(default_factory=lambda: {"format": {"type": "text"}})
    user: str | None = None
    background: bool = False


def response_echo(body: ResponsesRequest) -> ResponseEcho:
    return ResponseEcho(
        instructions=body.instructions,
        metadata=body.metadata or {},
        previous_response_id=body.previous_response_id,
        max_output_tokens=body.max_output_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        tools=[msgspec.to_builtins(t) for t in body.tools or []],
        tool_choice=body.tool_choice if body.tool_choice is not None else "auto",
        parallel_tool_calls=body.parallel_tool_calls is not False,
        store=body.store is not False,
        text=msgspec.to_builtins(body.text) if body.text else {"format": {"type": "text"}},
        user=body.user,
        background=bool(body.background),
    )


def message_item(run_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {
        "type": "message",
        "id": f"msg_{run_id}",
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def function_call_item(call: ToolCall, status: str = "completed") -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": f"fc_{call.id}",
        "call_id": call.id,
        "name": call.name,
        "arguments": call.arguments,
        "status": status,
    }


def _usage(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt_tokens,
        "output_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": 0},
    }


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """What a response object reports of its run."""

    status: str  # queued | in_progress | completed | incomplete | failed | cancelled
    text: str | None = None
    calls: list[ToolCall] = msgspec.field(default_factory=list)
    usage: Usage | None = None
    error: str | None = None


def outcome_of(view: RunView) -> Outcome:
    if view.status == "completed":
        status = "incomplete" if view.finish_reason == "length" else "completed"
        return Outcome(status=status, text=view.content, calls=view.tool_calls, usage=view.usage)
    if view.status in {"failed", "cancelled"}:
        return Outcome(status=view.status, error=view.error, usage=view.usage)
    return Outcome(status="in_progress")


def response_object(
    run_id: str, model: str, created: int, outcome: Outcome, echo: ResponseEcho
) -> dict[str, Any]:
    output: list[dict[str, Any]] = []
    if outcome.text or (outcome.text is not None and not outcome.calls):
        output.append(message_item(run_id, outcome.text))
    output.extend(function_call_item(call) for call in outcome.calls)
    error = None
    if outcome.status == "failed":
        error = {"code": "server_error", "message": outcome.error or "the run failed"}
    incomplete = {"reason": "max_output_tokens"} if outcome.status == "incomplete" else None
    return {
        "id": f"{RESPONSE_PREFIX}{run_id}",
        "object": "response",
        "created_at": created,
        "status": outcome.status,
        "model": model,
        "output": output,
        "usage": None if outcome.usage is None else _usage(outcome.usage),
        "error": error,
        "incomplete_details": incomplete,
        "reasoning": {"effort": None, "summary": None},
        "truncation": "disabled",
        **msgspec.to_builtins(echo),
    }


# -- the stream ----------------------------------------------------------------------------------


async def response_events(
    events: AsyncIterator[RunEvent], run_id: str, model: str, created: int, echo: ResponseEcho
) -> AsyncIterator[bytes]:
    """The Responses stream of a run, in the order the OpenAI SDKs' accumulators expect:
    created, in_progress, then each output item added, its parts and deltas, done, and last
    completed (or incomplete, failed, cancelled)."""
    sequence = 0
    item_id = f"msg_{run_id}"
    text: list[str] = []
    message_open = False

    def frame(kind: str, payload: dict[str, Any], seq: int | None = None) -> bytes:
        nonlocal sequence
        body = to_json({"type": kind, "sequence_number": sequence, **payload})
        sequence += 1
        return sse_frame(body, event=kind, id=seq)

    def state(outcome: Outcome) -> dict[str, Any]:
        return {"response": response_object(run_id, model, created, outcome, echo)}

    def open_message() -> list[bytes]:
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        item = {
            "type": "message",
            "id": item_id,
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        return [
            frame("response.output_item.added", {"output_index": 0, "item": item}),
            frame(
                "response.content_part.added",
                {"item_id": item_id, "output_index": 0, "content_index": 0, "part": part},
            ),
        ]

    def close_message(full: str) -> list[bytes]:
        where = {"item_id": item_id, "output_index": 0, "content_index": 0}
        part = {"type": "output_text", "text": full, "annotations": [], "logprobs": []}
        return [
            frame("response.output_text.done", {**where, "text": full, "logprobs": []}),
            frame("response.content_part.done", {**where, "part": part}),
            frame(
                "response.output_item.done",
                {"output_index": 0, "item": message_item(run_id, full)},
            ),
        ]

    def call_frames(call: ToolCall, index: int) -> list[bytes]:
        added = function_call_item(call, "in_progress") | {"arguments": ""}
        where = {"item_id": added["id"], "output_index": index}
        return [
            frame("response.output_item.added", {"output_index": index, "item": added}),
            frame("response.function_call_arguments.delta", {**where, "delta": call.arguments}),
            frame(
                "response.function_call_arguments.done",
                {**where, "name": call.name, "arguments": call.arguments},
            ),
            frame(
                "response.output_item.done",
                {"output_index": index, "item": function_call_item(call)},
            ),
        ]

    started = Outcome(status="in_progress")
    yield frame("response.created", state(started))
    yield frame("response.in_progress", state(started))
    async for run_event in events:
        event, seq = run_event.event, run_event.record.seq
        if isinstance(event, AssistantDelta):
            if not message_open:
                message_open = True
                for opened in open_message():
                    yield opened
            text.append(event.text)
            delta = {
                "item_id": item_id,
                "output_index": 0,
                "content_index": 0,
                "delta": event.text,
                "logprobs": [],
            }
            yield frame("response.output_text.delta", delta, seq)
        elif isinstance(event, RunCompleted):
            full = "".join(text)
            calls = event.tool_calls or []
            if message_open or not calls:
                if not message_open:
                    for opened in open_message():
                        yield opened
                for closed in close_message(full):
                    yield closed
            first = 1 if (message_open or not calls) else 0
            for index, call in enumerate(calls):
                for call_frame in call_frames(call, first + index):
                    yield call_frame
            status = "incomplete" if event.finish_reason == "length" else "completed"
            final = Outcome(status=status, text=full, calls=calls, usage=event.usage)
            yield frame(f"response.{status}", state(final), seq)
            return
        elif run_event.terminal:
            reason = event.reason if isinstance(event, RunFailed | RunCancelled) else ""
            status = "cancelled" if isinstance(event, RunCancelled) else "failed"
            ended = Outcome(status=status, error=reason)
            kind = "response.failed" if status == "failed" else "response.incomplete"
            yield frame(kind, state(ended), seq)
            return
