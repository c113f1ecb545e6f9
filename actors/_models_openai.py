"""The `openai` model: any OpenAI-compatible chat completions upstream, streamed over httpx.

Retries (exponential backoff, `Retry-After` honoured) happen only before the first chunk reaches
the caller: 429, 5xx, and transport errors. Other 4xx raise at once. The API key is read from the
environment on each call, sent only in the Authorization header, and scrubbed from every message.
"""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, Final, final

import httpx
import msgspec
import structlog
import trio

from cuelog.actors._errors import ModelError
from cuelog.actors._messages import ChatMessage, MediaPart, ToolCall, Usage
from cuelog.actors._models import (
    Finished,
    FinishReason,
    ModelChunk,
    ModelRequest,
    TextDelta,
    ToolCallChunk,
)

log = structlog.get_logger("cuelog.models.openai")

_RETRY_STATUSES: Final = frozenset({429, 500, 502, 503, 504})
_MAX_ERROR_TEXT: Final = 500


class OpenAIConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where the upstream is and how patient to be with it.

    `api_key_env` names the environment variable holding the key; None sends no key (local
    servers such as Ollama or llama.cpp). `max_retries` counts retries after the first attempt.
    """

    base_url: str = "https://api.openai.com/v1"
    api_key_env: str | None = "OPENAI_API_KEY"
    name: str = "openai"
    connect_timeout: float = 10.0
    read_timeout: float = 120.0
    max_retries: int = 3
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    headers: dict[str, str] = msgspec.field(default_factory=dict)  # sent with every request


# -- the upstream's streamed chunk shape (only the fields cuelog reads) --------------------------


class _FunctionDelta(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class _ToolCallDelta(msgspec.Struct):
    index: int = 0
    id: str | None = None
    function: _FunctionDelta | None = None


class _Delta(msgspec.Struct):
    content: str | None = None
    tool_calls: list[_ToolCallDelta] | None = None


class _Choice(msgspec.Struct):
    index: int = 0
    delta: _Delta | None = None
    finish_reason: str | None = None


class _UpstreamUsage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class _UpstreamError(msgspec.Struct):
    message: str = ""
    type: str | None = None


class _Chunk(msgspec.Struct):
    choices: list[_Choice] = msgspec.field(default_factory=list)
    usage: _UpstreamUsage | None = None
    error: _UpstreamError | None = None


class _ErrorBody(msgspec.Struct):
    error: _UpstreamError | str | None = None


_chunk_decoder = msgspec.json.Decoder(_Chunk)
_error_decoder = msgspec.json.Decoder(_ErrorBody)
_encoder = msgspec.json.Encoder()


class _PartialCall:
    __slots__ = ("arguments", "id", "name")

    def __init__(self) -> None:
        self.id = ""
        self.name = ""
        self.arguments: list[str] = []


@final
class OpenAIModel:
    """Streams chat completions from an OpenAI-compatible server.

    Pass `client` to share one connection pool across calls (the caller closes it); without it
    each `stream` opens and closes its own client. `env` defaults to `os.environ`.
    """

    def __init__(
        self,
        config: OpenAIConfig,
        *,
        client: httpx.AsyncClient | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self._client = client
        self._env = os.environ if env is None else env

    @property
    def name(self) -> str:
        return self.config.name

    async def stream(self, request: ModelRequest) -> AsyncGenerator[ModelChunk, None]:
        key = self._api_key()
        try:
            async with self._open(request, key) as response:
                async for chunk in self._chunks(response, _wire_names(request)):
                    # Buffered SSE lines parse without awaiting: check here so a cancelled
                    # caller stops within one chunk.
                    await trio.lowlevel.checkpoint_if_cancelled()
                    yield chunk
        except httpx.TransportError as exc:
            raise ModelError(
                self._scrub(f"{self.name}: upstream connection failed: {exc!r}", key)
            ) from None

    def _api_key(self) -> str | None:
        env_name = self.config.api_key_env
        if env_name is None:
            return None
        key = self._env.get(env_name)
        if not key:
            raise ModelError(
                f"{self.name}: environment variable {env_name} (the API key) is not set"
            )
        return key

    def _scrub(self, text: str, key: str | None) -> str:
        return text.replace(key, "[redacted]") if key else text

    @asynccontextmanager
    async def _client_for_call(self) -> AsyncIterator[httpx.AsyncClient]:
        if self._client is not None:
            yield self._client
            return
        async with httpx.AsyncClient(trust_env=False) as client:
            yield client

    @asynccontextmanager
    async def _open(self, request: ModelRequest, key: str | None) -> AsyncIterator[httpx.Response]:
        """The first successful response, after retries; its body is not read yet."""
        cfg = self.config
        url = cfg.base_url.rstrip("/") + "/chat/completions"
        headers = {
            **cfg.headers,
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
        }
        if key:
            headers["Authorization"] = f"Bearer {key}"
        body = _encoder.encode(_request_body(request))
        timeout = httpx.Timeout(cfg.read_timeout, connect=cfg.connect_timeout)
        async with self._client_for_call() as client:
            attempt = 0
            while True:
                delay: float | None = None
                http_request = client.build_request(
                    "POST", url, content=body, headers=headers, timeout=timeout
                )
                try:
                    response = await client.send(http_request, stream=True)
                except httpx.TransportError as exc:
                    if attempt >= cfg.max_retries:
                        raise ModelError(
                            self._scrub(
                                f"{self.name}: could not reach {url} after {attempt + 1} "
                                f"attempts: {exc!r}",
                                key,
                            )
                        ) from None
                    log.warning(
                        "model_retry", provider=self.name, attempt=attempt + 1, error=repr(exc)
                    )
                else:
                    if response.status_code == 200:
                        try:
                            yield response
                        finally:
                            await response.aclose()
                        return
                    try:
                        raw = await response.aread()
                    finally:
                        await response.aclose()
                    status = response.status_code
                    message = self._scrub(_error_message(raw), key)
                    if status not in _RETRY_STATUSES or attempt >= cfg.max_retries:
                        tries = f" after {attempt + 1} attempts" if attempt else ""
                        raise ModelError(
                            f"{self.name}: upstream answered {status}{tries}: {message}",
                            status=status,
                        )
                    delay = _retry_after(response.headers.get("retry-after"))
                    log.warning(
                        "model_retry", provider=self.name, attempt=attempt + 1, status=status
                    )
                if delay is None:
                    delay = cfg.backoff_initial * 2**attempt
                await trio.sleep(min(delay, cfg.backoff_max))
                attempt += 1

    async def _chunks(
        self, response: httpx.Response, names: dict[str, str]
    ) -> AsyncIterator[ModelChunk]:
        """`names` maps the wire names of the offered tools back to their names."""
        partial: dict[int, _PartialCall] = {}
        finish: str | None = None
        usage: Usage | None = None
        done = False
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue  # blank separators, `event:`, `id:` and `:` comment lines
            data = line[5:].strip()
            if data == "[DONE]":
                done = True
                break
            try:
                chunk = _chunk_decoder.decode(data)
            except msgspec.DecodeError as exc:
                raise ModelError(f"{self.name}: upstream sent an unreadable chunk: {exc}") from None
            if chunk.error is not None:
                raise ModelError(f"{self.name}: upstream error mid-stream: {chunk.error.message}")
            if chunk.usage is not None:
                usage = Usage(
                    prompt_tokens=chunk.usage.prompt_tokens,
                    completion_tokens=chunk.usage.completion_tokens,
                    total_tokens=chunk.usage.total_tokens,
                )
            for choice in chunk.choices:
                if choice.index != 0:
                    continue
                delta = choice.delta
                if delta is not None:
                    if delta.content:
                        yield TextDelta(delta.content)
                    for fragment in delta.tool_calls or []:
                        call = partial.setdefault(fragment.index, _PartialCall())
                        call.id = call.id or (fragment.id or "")
                        if fragment.function is not None:
                            call.name += fragment.function.name or ""
                            call.arguments.append(fragment.function.arguments or "")
                if choice.finish_reason is not None:
                    finish = choice.finish_reason
        if not done and finish is None:
            raise ModelError(f"{self.name}: upstream closed the stream before finishing")
        for index in sorted(partial):
            call = partial[index]
            if not call.name:
                raise ModelError(f"{self.name}: upstream sent a tool call without a name")
            yield ToolCallChunk(
                ToolCall(
                    id=call.id or f"call_{index}",
                    name=names.get(call.name, call.name),
                    arguments="".join(call.arguments) or "{}",
                )
            )
        reason: FinishReason
        if partial:
            reason = "tool_calls"
        elif finish == "length":
            reason = "length"
        else:
            reason = "stop"
        yield Finished(reason, usage or Usage())


def wire_name(name: str) -> str:
    """A tool's name as OpenAI accepts it (letters, digits, _ and -): an MCP tool's
    `server.tool` is sent as `server__tool`."""
    return name.replace(".", "__")


def _wire_names(request: ModelRequest) -> dict[str, str]:
    return {wire_name(t.name): t.name for t in request.tools if "." in t.name}


def _request_body(request: ModelRequest) -> dict[str, Any]:
    body: dict[str, Any] = {
        **request.options,
        "model": request.model,
        "messages": [_wire_message(m) for m in request.messages],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if request.tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": wire_name(t.name),
                    "description": t.description,
                    "parameters": t.parameters,
                },
            }
            for t in request.tools
        ]
        if request.tool_choice is not None:
            body["tool_choice"] = request.tool_choice
    else:
        body.pop("parallel_tool_calls", None)  # upstreams refuse it without tools
    if request.max_tokens is not None:
        # The limit goes under the name the client used: max_completion_tokens (what newer
        # OpenAI models require) when it sent that, else max_tokens (what every server knows).
        name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
        body[name] = request.max_tokens
    if request.temperature is not None:
        body["temperature"] = request.temperature
    return body


def _wire_part(part: MediaPart) -> dict[str, Any]:
    """A media part in the chat completions content-part shape (bytes as base64)."""
    media_type = part.media_type or "application/octet-stream"
    encoded = base64.b64encode(part.data or b"").decode()
    if part.kind == "audio":
        return {
            "type": "input_audio",
            "input_audio": {"data": encoded, "format": media_type.rsplit("/", 1)[-1]},
        }
    link = part.url if part.url is not None else f"data:{media_type};base64,{encoded}"
    if part.kind == "image":
        image: dict[str, Any] = {"url": link}
        if part.detail is not None:
            image["detail"] = part.detail
        return {"type": "image_url", "image_url": image}
    file: dict[str, Any] = {"file_data": link}
    if part.filename is not None:
        file["filename"] = part.filename
    return {"type": "file", "file": file}


def _wire_message(message: ChatMessage) -> dict[str, Any]:
    content: Any = message.content
    if message.parts:
        text = [{"type": "text", "text": message.content}] if message.content else []
        content = text + [_wire_part(part) for part in message.parts]
    wire: dict[str, Any] = {"role": message.role, "content": content}
    if message.tool_calls:
        wire["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": wire_name(call.name), "arguments": call.arguments},
            }
            for call in message.tool_calls
        ]
    if message.tool_call_id is not None:
        wire["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        wire["name"] = message.name
    return wire


def _error_message(raw: bytes) -> str:
    try:
        body = _error_decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        body = _ErrorBody()
    if isinstance(body.error, _UpstreamError) and body.error.message:
        return body.error.message
    if isinstance(body.error, str) and body.error:
        return body.error
    text = raw.decode("utf-8", "replace").strip()
    return text[:_MAX_ERROR_TEXT] or "(empty body)"


def _retry_after(value: str | None) -> float | None:
    """`Retry-After` in seconds; HTTP dates and nonsense fall back to the backoff schedule."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
