"""The model provider protocol: a request in, a stream of chunks out.

A provider's `stream` is an async generator that runs in the caller's task and starts no task of
its own, so cancelling the caller's scope stops it at the next chunk. Callers that may stop early
wrap it in `contextlib.aclosing` so the upstream connection closes at once, not at GC time.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any, Literal, Protocol

import msgspec

from cuelog.actors._messages import ChatMessage, ToolCall, ToolSpec, Usage

FinishReason = Literal["stop", "length", "tool_calls"]


class ModelRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One model call: the conversation so far and the tools the model may call."""

    model: str
    messages: list[ChatMessage]
    tools: list[ToolSpec] = msgspec.field(default_factory=list)
    max_tokens: int | None = None
    temperature: float | None = None
    # The request's `tool_choice` as the client sent it (None: the provider's default).
    tool_choice: Any = None
    # Further request fields for an OpenAI-compatible upstream, sent as they are.
    options: dict[str, Any] = msgspec.field(default_factory=dict)


class TextDelta(msgspec.Struct, frozen=True, tag="text"):
    """A piece of the assistant's reply text."""

    text: str


class ToolCallChunk(msgspec.Struct, frozen=True, tag="tool_call"):
    """A complete tool call (providers assemble streamed fragments before emitting it)."""

    call: ToolCall


class Finished(msgspec.Struct, frozen=True, tag="finished"):
    """The last chunk of every successful stream."""

    finish_reason: FinishReason
    usage: Usage


ModelChunk = TextDelta | ToolCallChunk | Finished


class ModelProvider(Protocol):
    """Something that turns a conversation into a streamed reply."""

    @property
    def name(self) -> str:
        """The provider's name in configs and agent specs, e.g. `echo` or `openai`."""
        ...

    def stream(self, request: ModelRequest) -> AsyncGenerator[ModelChunk, None]:
        """Stream the reply; the last chunk is `Finished`. Failures raise `ModelError`."""
        ...
