"""Large payloads by digest: what goes to the log's content store, and how readers get it back.

A tool output over `RunSettings.content_threshold` bytes is put in the content store beside the
log; its `ToolCallCompleted` and the tool message in every later history keep a short preview
and the digest. Whatever hands messages on (to a model, over HTTP) resolves them first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import msgspec

from cuelog.actors._messages import ChatMessage, MediaPart
from cuelog.runtime import ContentMissing, ContentStore

DEFAULT_CONTENT_THRESHOLD: Final = 64 << 10  # bytes of UTF-8 above which an output is stored
PREVIEW_CHARS: Final = 256  # what the event keeps of a stored output


def preview(text: str) -> str:
    return text[:PREVIEW_CHARS]


async def resolve_messages(
    messages: Sequence[ChatMessage],
    stores: Sequence[ContentStore | None],
    *,
    strict: bool = True,
) -> list[ChatMessage]:
    """`messages` with every stored content read back from the first store that has it.

    A blob that is gone raises `ContentMissing`; with `strict=False` (views, which must still
    show a damaged session) that message keeps its preview and its `content_digest`."""
    out: list[ChatMessage] = []
    for given in messages:
        message = await _with_media(given, stores) if given.parts and strict else given
        digest = message.content_digest
        if digest is None:
            out.append(message)
            continue
        try:
            text = await fetch_text(digest, stores)
        except ContentMissing:
            if strict:
                raise
            out.append(message)
            continue
        out.append(msgspec.structs.replace(message, content=text, content_digest=None))
    return out


async def fetch_text(digest: str, stores: Sequence[ContentStore | None]) -> str:
    data = await fetch_bytes(digest, stores)
    return data.decode("utf-8", errors="replace")


async def _with_media(message: ChatMessage, stores: Sequence[ContentStore | None]) -> ChatMessage:
    """The message with the bytes of its stored media parts read back into `data`."""
    parts: list[MediaPart] = []
    for part in message.parts or []:
        if part.digest is not None and part.data is None:
            data = await fetch_bytes(part.digest, stores)
            parts.append(msgspec.structs.replace(part, data=data))
        else:
            parts.append(part)
    return msgspec.structs.replace(message, parts=parts)


async def fetch_bytes(digest: str, stores: Sequence[ContentStore | None]) -> bytes:
    for store in stores:
        if store is None:
            continue
        try:
            return await store.get(digest)
        except ContentMissing:
            continue
    raise ContentMissing(f"content {digest} is not in the log's content store")


async def store_media(messages: list[ChatMessage], store: ContentStore | None) -> list[ChatMessage]:
    """`messages` with the inline bytes of their media parts put in `store` and named by digest
    (kept inline when the log has no content store)."""
    if store is None or not any(m.parts for m in messages):
        return messages
    out: list[ChatMessage] = []
    for message in messages:
        parts: list[MediaPart] = []
        for part in message.parts or []:
            if part.data is None:
                parts.append(part)
                continue
            digest = await store.put(part.data)
            size = len(part.data)
            parts.append(msgspec.structs.replace(part, data=None, digest=digest, size=size))
        out.append(msgspec.structs.replace(message, parts=parts) if message.parts else message)
    return out
