"""Chat messages, tool calls, tool specs and usage: the structs models, tools and runs share.

They follow the OpenAI chat shape so a conversation can be sent upstream unchanged, but tool call
arguments stay the JSON text the model produced: the log records exactly what the model said.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

Role = Literal["system", "user", "assistant", "tool"]


class ToolCall(msgspec.Struct, frozen=True, kw_only=True):
    """One call the model asked for; `arguments` is JSON text, decoded only by the tool side."""

    id: str
    name: str
    arguments: str = "{}"


class MediaPart(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """An image, audio clip or file that came with a message: a link (`url`), or bytes.

    Bytes sent inline are kept in the log's content store under their sha256 `digest` (the
    event records only the digest and `size`); `data` holds them where the log has no content
    store, and in a model request once read back."""

    kind: Literal["image", "audio", "file"]
    url: str | None = None
    media_type: str | None = None
    digest: str | None = None
    size: int | None = None
    data: bytes | None = None
    filename: str | None = None
    detail: str | None = None


class ChatMessage(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One message of a conversation.

    `tool_calls` is set on assistant messages that call tools; `tool_call_id` (and the tool's
    `name`) on the tool message answering one of those calls.
    """

    role: Role
    content: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None
    # Set on a tool message whose whole content is in the log's content store under this
    # digest (`content` is then a preview); readers resolve it before use. Never from clients.
    content_digest: str | None = None
    # Images, audio and files that came with the message, after its text `content`.
    parts: list[MediaPart] | None = None


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    """Token counts of one model call (or a sum of them)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            total_tokens=self.total_tokens + other.total_tokens,
        )


class ToolSpec(msgspec.Struct, frozen=True, kw_only=True):
    """What a model is told about a tool: its name, what it does, and its JSON-schema arguments."""

    name: str
    description: str
    parameters: dict[str, Any] = msgspec.field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )
