"""Message content parts in the OpenAI shapes (chat and Responses): text, and images, audio and
files as cuelog records them (`MediaPart`: a link, or bytes the content store keeps)."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any, Literal

import msgspec

from cuelog.actors import MediaPart
from cuelog.http._wire import ApiError

# Fields cuelog does not act on itself are typed loosely (`Any`): they are checked as bounded JSON,
# recorded with the run and passed to an OpenAI-compatible upstream as they came.
Json = Any
MediaKind = Literal["image", "audio", "file"]


class ContentPart(msgspec.Struct, frozen=True):
    """A part of a message's content: text, or an image, audio clip or file (chat and
    Responses spellings). Inline bytes go to the log's content store; the model gets them."""

    type: str
    text: str | None = None
    image_url: Json = None  # chat: {"url", "detail"}; Responses: the URL itself
    input_audio: Json = None  # {"data": base64, "format"}
    file: Json = None  # chat: {"file_data", "filename", "file_id"}
    refusal: str | None = None
    detail: str | None = None
    file_data: str | None = None
    file_url: str | None = None
    file_id: str | None = None
    filename: str | None = None


_DATA_URL = re.compile(r"data:(?P<type>[\w.+-]+/[\w.+-]+)?(?:;[^,;]*)*?;base64,(?P<data>.*)", re.S)


def _bytes(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{where}: the data is not valid base64", param=where) from None


def _linked(link: Any, kind: MediaKind, where: str, **fields: Any) -> MediaPart:
    """A part given as a URL: a `data:` URL's bytes are kept, any other link as it is."""
    if not isinstance(link, str) or not link:
        raise ApiError(400, f"{where}: a {kind} part needs a URL or data", param=where)
    match = _DATA_URL.fullmatch(link)
    if match is None:
        if not link.startswith(("http://", "https://")):
            raise ApiError(400, f"{where}: only http(s) and data: URLs are accepted", param=where)
        return MediaPart(kind=kind, url=link, **fields)
    data = _bytes(match["data"], where)
    return MediaPart(kind=kind, media_type=match["type"], data=data, **fields)


def media_part(part: ContentPart, where: str) -> MediaPart:
    """An image, audio or file part as cuelog records it; 400 for a part it cannot take."""
    kind = part.type
    if kind in {"image_url", "input_image"}:
        link: Any = part.image_url
        detail = part.detail
        if isinstance(part.image_url, dict):
            link, detail = part.image_url.get("url"), part.image_url.get("detail", detail)
        if link is None and part.file_id is not None:
            raise ApiError(400, f"{where}: file ids are not served; send the image", param=where)
        return _linked(link, "image", where, detail=detail)
    if kind == "input_audio" and isinstance(part.input_audio, dict):
        data, audio_format = part.input_audio.get("data"), part.input_audio.get("format")
        if not isinstance(data, str) or not isinstance(audio_format, str):
            raise ApiError(400, f"{where}: input_audio needs data and format", param=where)
        return MediaPart(kind="audio", media_type=f"audio/{audio_format}", data=_bytes(data, where))
    if kind in {"file", "input_file"}:
        spec = part.file if isinstance(part.file, dict) else {}
        data = spec.get("file_data", part.file_data)
        name = spec.get("filename", part.filename)
        link = data if data is not None else part.file_url
        if link is None:
            raise ApiError(400, f"{where}: file ids are not served; send file_data", param=where)
        if data is not None and not str(data).startswith("data:"):
            return MediaPart(kind="file", data=_bytes(str(data), where), filename=name)
        return _linked(link, "file", where, filename=name)
    raise ApiError(400, f"{where}: content parts of type {kind!r} are not supported", param=where)


def content_of(
    content: str | list[ContentPart] | None, where: str
) -> tuple[str | None, list[MediaPart]]:
    """A message's text and its media parts."""
    if content is None or isinstance(content, str):
        return content, []
    texts: list[str] = []
    media: list[MediaPart] = []
    for index, part in enumerate(content):
        if part.type in {"text", "input_text", "output_text"}:
            if part.text is None:
                raise ApiError(400, f"{where}.{index}: a text part needs text", param=where)
            texts.append(part.text)
        elif part.type == "refusal":
            texts.append(part.refusal or "")
        else:
            media.append(media_part(part, f"{where}.{index}"))
    return "".join(texts), media


def text_of(content: str | list[ContentPart] | None, where: str) -> str | None:
    """A content's text alone (where media cannot go, such as a function's output)."""
    text, media = content_of(content, where)
    if media:
        raise ApiError(400, f"{where}: only text is accepted here", param=where)
    return text
