"""The `echo` model: embedded, deterministic, no network. docs/echo-model.md is its contract."""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncGenerator, Sequence
from typing import Any, Final, final

import msgspec
import trio

from cuelog.actors._messages import ChatMessage, MediaPart, ToolCall, Usage
from cuelog.actors._models import (
    Finished,
    ModelChunk,
    ModelRequest,
    TextDelta,
    ToolCallChunk,
)

TOOL_SYNTAX: Final = '/tool NAME {"arg": "value"}'

_WORD = re.compile(r"\S+\s*|\s+")
_TOOL_LINE = re.compile(r"/tool(?:\s+(?P<name>\S+))?(?:\s+(?P<args>.*))?", re.DOTALL)
_TOOL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_json_encode = msgspec.json.Encoder().encode


def count_tokens(text: str | None) -> int:
    """The echo model's token count: whitespace-separated words."""
    return len(text.split()) if text else 0


def _message_tokens(message: ChatMessage) -> int:
    calls = message.tool_calls or []
    return count_tokens(message.content) + sum(
        count_tokens(f"{call.name} {call.arguments}") for call in calls
    )


def _tool_call_id(messages: Sequence[ChatMessage]) -> str:
    digest = hashlib.sha256(_json_encode(list(messages))).hexdigest()
    return f"call_{digest[:24]}"


ECHO_RESULT_CHARS: Final = 4096


def _echoed(content: str) -> str:
    """A tool result as echo repeats it: whole, or when long its size, sha256 and start (so a
    large result proves it arrived whole without making the reply as large)."""
    if len(content) <= ECHO_RESULT_CHARS:
        return content
    digest = hashlib.sha256(content.encode()).hexdigest()
    return f"{len(content)} characters, sha256 {digest}: {content[:200]}…"


def _tool_name_for(messages: Sequence[ChatMessage], result: ChatMessage) -> str:
    if result.name:
        return result.name
    for message in reversed(messages):
        for call in message.tool_calls or []:
            if call.id == result.tool_call_id:
                return call.name
    return "tool"


@final
class EchoModel:
    """Answers from the conversation; calls a tool when the last user line is `/tool NAME {...}`.

    `chunk_delay` (seconds, default 0) pauses before each chunk so demos show streaming and
    tests can cancel mid-stream under a mock clock.
    """

    name: Final = "echo"

    def __init__(self, *, chunk_delay: float = 0.0) -> None:
        self._chunk_delay = chunk_delay

    async def stream(self, request: ModelRequest) -> AsyncGenerator[ModelChunk, None]:
        reply = self.reply(request)
        prompt_tokens = sum(_message_tokens(m) for m in request.messages)
        if isinstance(reply, ToolCall):
            await self._pause()
            yield ToolCallChunk(reply)
            completion = count_tokens(f"{reply.name} {reply.arguments}")
            yield Finished("tool_calls", _usage(prompt_tokens, completion))
            return
        words = _WORD.findall(reply)
        limit = request.max_tokens
        sent = 0
        for word in words:
            is_token = not word.isspace()
            if is_token and limit is not None and sent >= limit:
                yield Finished("length", _usage(prompt_tokens, sent))
                return
            await self._pause()
            yield TextDelta(word)
            sent += is_token
        yield Finished("stop", _usage(prompt_tokens, sent))

    def reply(self, request: ModelRequest) -> str | ToolCall:
        """The whole reply the stream will carry: text, or one tool call."""
        messages = request.messages
        trailing_results: list[ChatMessage] = []
        for message in reversed(messages):
            if message.role != "tool":
                break
            trailing_results.insert(0, message)
        if trailing_results:
            return "\n".join(
                f"Tool {_tool_name_for(messages, m)} returned: {_echoed(m.content or '')}"
                for m in trailing_results
            )
        last_user = next((m for m in reversed(messages) if m.role == "user"), None)
        if last_user is not None and last_user.content is None and last_user.parts:
            last_user = msgspec.structs.replace(last_user, content="")
        if last_user is None or last_user.content is None:
            return "Echo: (no user message)"
        text = last_user.content.strip()
        if text == "/tool" or text.startswith(("/tool ", "/tool\n", "/tool\t")):
            return self._tool_call(request, text)
        media = "".join(f" [{describe_part(part)}]" for part in last_user.parts or [])
        return f"Echo: {last_user.content}{media}"

    def _tool_call(self, request: ModelRequest, line: str) -> str | ToolCall:
        match = _TOOL_LINE.fullmatch(line)
        name = match["name"] if match else None
        if not name or not _TOOL_NAME.fullmatch(name):
            return _syntax_help("a tool name of letters, digits, _, . or - is missing")
        raw_args = (match["args"] if match else None) or "{}"
        try:
            args: Any = msgspec.json.decode(raw_args.strip())
        except msgspec.DecodeError as exc:
            return _syntax_help(f"the arguments are not valid JSON ({exc})")
        if not isinstance(args, dict):
            return _syntax_help("the arguments must be a JSON object")
        offered = [] if request.tool_choice == "none" else [tool.name for tool in request.tools]
        if name not in offered:
            available = ", ".join(offered) if offered else "none"
            return (
                f"Echo cannot call tool {name}: it is not offered in this request "
                f"(offered: {available})."
            )
        return ToolCall(
            id=_tool_call_id(request.messages),
            name=name,
            arguments=_json_encode(args).decode(),
        )

    async def _pause(self) -> None:
        if self._chunk_delay > 0:
            await trio.sleep(self._chunk_delay)
        else:
            # A checkpoint per chunk: a cancelled caller stops here, within one chunk.
            await trio.lowlevel.checkpoint()


def describe_part(part: MediaPart) -> str:
    """How echo tells it saw an image, audio clip or file: its kind, type, size and digest,
    or its link."""
    words: list[str] = [part.kind]
    if part.filename:
        words.append(part.filename)
    if part.media_type:
        words.append(part.media_type)
    if part.url is not None:
        words.append(part.url)
    else:
        size = part.size if part.size is not None else len(part.data or b"")
        digest = part.digest or hashlib.sha256(part.data or b"").hexdigest()
        words.append(f"{size} bytes sha256 {digest[:16]}")
    return " ".join(words)


def _syntax_help(reason: str) -> str:
    return f"Echo could not call a tool: {reason}. Use: {TOOL_SYNTAX}"


def _usage(prompt: int, completion: int) -> Usage:
    return Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )
