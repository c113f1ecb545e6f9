"""Every request field of the installed `openai` SDK's chat completions and Responses params is
a field cuelog's request bodies accept, so a new SDK release that adds one fails here first."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import msgspec
from openai.types.chat import completion_create_params
from openai.types.responses import response_create_params

from cuelog.http._openai import ChatCompletionRequest
from cuelog.http._responses import ResponsesRequest


def _sdk_fields(*params: type) -> set[str]:
    names: set[str] = set()
    for cls in params:
        names |= set(typing.get_type_hints(cls).keys())
    return names


def _accepted(body: type[msgspec.Struct]) -> set[str]:
    return {field.encode_name for field in msgspec.structs.fields(body)}


def test_every_chat_completion_field_is_accepted() -> None:
    """Each key of the SDK's CompletionCreateParams (streaming or not) is a body field."""
    sdk = _sdk_fields(
        completion_create_params.CompletionCreateParamsNonStreaming,
        completion_create_params.CompletionCreateParamsStreaming,
    )
    assert sdk - _accepted(ChatCompletionRequest) == set()


def test_every_responses_field_is_accepted() -> None:
    """Each key of the SDK's ResponseCreateParams (streaming or not) is a body field."""
    sdk = _sdk_fields(
        response_create_params.ResponseCreateParamsNonStreaming,
        response_create_params.ResponseCreateParamsStreaming,
    )
    assert sdk - _accepted(ResponsesRequest) == set()


def test_the_sdk_lists_the_fields_this_checks() -> None:
    """The SDK's param types still carry the fields (so the checks above cannot pass empty)."""
    chat = _sdk_fields(completion_create_params.CompletionCreateParamsNonStreaming)
    responses = _sdk_fields(response_create_params.ResponseCreateParamsNonStreaming)
    assert {"messages", "model", "max_completion_tokens", "tools"} <= chat
    assert {"input", "previous_response_id", "max_output_tokens", "tools"} <= responses


def _documented(section: str) -> str:
    text = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()
    start = text.index(section)
    end = text.index("\n### ", start + 1) if "\n### " in text[start + 1 :] else len(text)
    return text[start:end]


def test_docs_table_says_what_happens_to_every_field() -> None:
    """docs/api.md's compatibility tables name each SDK field in a row of their own API."""
    chat = _sdk_fields(completion_create_params.CompletionCreateParamsStreaming)
    responses = _sdk_fields(response_create_params.ResponseCreateParamsStreaming)
    for fields, section in (
        (chat, "### Chat completions (`POST"),
        (responses, "### Responses (`POST"),
    ):
        rows = [line for line in _documented(section).splitlines() if line.startswith("| `")]
        named = {name for row in rows for name in re.findall(r"`([a-z_]+)`", row.split(" | ")[0])}
        assert fields - named == set(), section
