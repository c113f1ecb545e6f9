"""Large payloads by digest: what goes to the log's content store, and how readers get it back.

A tool output over `RunSettings.content_threshold` bytes is put in the content store beside the
log; its `ToolCallCompleted` and the tool message in every later history keep a short preview
and the digest. Whatever hands messages on (to a model, over HTTP) resolves them first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import msgspec

from cuelog.actors._messages import ChatMessage
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
    for message in messages:
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
    for store in stores:
        if store is None:
            continue
        try:
            data = await store.get(digest)
        except ContentMissing:
            continue
        return data.decode("utf-8", errors="replace")
    raise ContentMissing(f"content {digest} is not in the log's content store")
