"""Client tools, token limits and the Responses API in depth, with the official `openai` SDK
against a real `cuelog serve` process (the echo model calls functions with `/tool NAME {...}`)."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.support import CUELOG, ServerProcess, running_server

API_KEY = "sdk-tools-key-0123456789abcdef"

LOOKUP: Any = {
    "type": "function",
    "function": {
        "name": "lookup",
        "description": "Look a word up.",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
    },
}
# The seeded `default` agent has a server tool of this name: the client's shadows it.
CLIENT_CALCULATOR: Any = {
    "type": "function",
    "function": {"name": "calculator", "parameters": {"type": "object"}},
}
RESPONSES_LOOKUP: Any = {
    "type": "function",
    "name": "lookup",
    "description": "Look a word up.",
    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tools") / "data"


@pytest.fixture(scope="module")
def server(data_dir: Path) -> Iterator[ServerProcess]:
    with running_server(data_dir, "--api-key", API_KEY) as process:
        yield process


@pytest.fixture
def client(server: ServerProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0) as sdk:
        yield sdk


def _run_events(server: ServerProcess, run_id: str) -> list[str]:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        answer = http.get(f"/v1/runs/{run_id}/timeline")
        answer.raise_for_status()
        return [row["type"] for row in answer.json()["data"]]


def test_chat_client_tool_call_then_result_continues(client: openai.OpenAI) -> None:
    """A call to a client function ends the run with tool_calls; sending the tool message
    back (the whole conversation, no session) gets the model's answer to it."""
    messages: list[Any] = [{"role": "user", "content": '/tool lookup {"q": "cue"}'}]
    first = client.chat.completions.create(model="default", messages=messages, tools=[LOOKUP])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls or []
    assert len(calls) == 1 and calls[0].type == "function"
    assert calls[0].function.name == "lookup"
    assert json.loads(calls[0].function.arguments) == {"q": "cue"}
    messages.append(choice.message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": calls[0].id, "content": "a signal"})
    second = client.chat.completions.create(model="default", messages=messages, tools=[LOOKUP])
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == "Tool lookup returned: a signal"


def test_chat_client_tool_in_a_session(client: openai.OpenAI, server: ServerProcess) -> None:
    """With X-Session-Key the next request carries only the tool result; the session has the
    call, and the call is recorded in the run."""
    headers = {"X-Session-Key": "tools-session"}
    raw = client.chat.completions.with_raw_response.create(
        model="default",
        messages=[{"role": "user", "content": '/tool lookup {"q": "log"}'}],
        tools=[LOOKUP],
        extra_headers=headers,
    )
    first = raw.parse()
    call = (first.choices[0].message.tool_calls or [])[0]
    events = _run_events(server, raw.headers["x-run-id"])
    assert "AssistantMessage" in events and "RunCompleted" in events
    assert "ToolCallRequested" not in events  # the client runs it, not the server
    second = client.chat.completions.create(
        model="default",
        messages=[{"role": "tool", "tool_call_id": call.id, "content": "append-only"}],
        tools=[LOOKUP],
        extra_headers=headers,
    )
    assert second.choices[0].message.content == "Tool lookup returned: append-only"


def test_an_unanswered_client_call_is_left_out_of_later_turns(
    client: openai.OpenAI, server: ServerProcess
) -> None:
    """A session whose client never answered a function call goes on: the next turn's model
    request leaves the dangling call out (an upstream would refuse it)."""
    headers = {"X-Session-Key": "dangling-call"}
    client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": '/tool lookup {"q": "x"}'}],
        tools=[LOOKUP],
        extra_headers=headers,
    )
    raw = client.chat.completions.with_raw_response.create(
        model="default",
        messages=[{"role": "user", "content": "never mind"}],
        extra_headers=headers,
    )
    assert raw.parse().choices[0].message.content == "Echo: never mind"
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        page = http.get("/v1/events", params={"prefix": f"run:{raw.headers['x-run-id']}"})
    [requested] = [e["data"] for e in page.json()["data"] if e["type"] == "ModelRequested"]
    assert requested["message_count"] == 2  # the two user messages; not the bare call


def test_client_function_shadows_a_server_tool(client: openai.OpenAI) -> None:
    """A client function named like one of the agent's tools is the client's to run."""
    completion = client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": '/tool calculator {"expr": "2+2"}'}],
        tools=[CLIENT_CALCULATOR],
    )
    assert completion.choices[0].finish_reason == "tool_calls"
    calls = completion.choices[0].message.tool_calls or []
    assert [c.function.name for c in calls if c.type == "function"] == ["calculator"]


def test_server_tools_still_run_server_side(client: openai.OpenAI) -> None:
    """Without a client function of that name, the agent's calculator runs on the server."""
    completion = client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": '/tool calculator {"expr": "2+3"}'}],
        tools=[LOOKUP],
    )
    assert completion.choices[0].finish_reason == "stop"
    assert completion.choices[0].message.content == "Tool calculator returned: 5"


def test_tool_choice_none_offers_no_function(client: openai.OpenAI) -> None:
    """tool_choice "none" keeps the model from calling any function."""
    completion = client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": '/tool lookup {"q": "x"}'}],
        tools=[LOOKUP],
        tool_choice="none",
    )
    assert completion.choices[0].finish_reason == "stop"
    assert "not offered" in (completion.choices[0].message.content or "")


def test_streamed_tool_call_chunks(client: openai.OpenAI) -> None:
    """A stream ends with a tool_calls delta and finish_reason tool_calls."""
    chunks = list(
        client.chat.completions.create(
            model="default",
            messages=[{"role": "user", "content": '/tool lookup {"q": "stream"}'}],
            tools=[LOOKUP],
            stream=True,
        )
    )
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    calls = [call for d in deltas for call in d.tool_calls or []]
    assert len(calls) == 1 and calls[0].index == 0 and calls[0].function is not None
    assert calls[0].function.name == "lookup"
    assert json.loads(calls[0].function.arguments or "") == {"q": "stream"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_chat_max_tokens_truncates(client: openai.OpenAI) -> None:
    """max_tokens (and max_completion_tokens) cut the echo reply: finish_reason length, usage
    counting exactly the tokens sent."""
    text = " ".join(f"w{i}" for i in range(30))
    messages: Any = [{"role": "user", "content": text}]
    for completion in (
        client.chat.completions.create(model="default", messages=messages, max_tokens=5),
        client.chat.completions.create(model="default", messages=messages, max_completion_tokens=5),
    ):
        assert completion.choices[0].finish_reason == "length"
        assert completion.choices[0].message.content == "Echo: w0 w1 w2 w3 "
        assert completion.usage is not None and completion.usage.completion_tokens == 5
    chunks = list(
        client.chat.completions.create(
            model="default",
            messages=[{"role": "user", "content": text}],
            max_tokens=3,
            stream=True,
        )
    )
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Echo: w0 w1 "


def test_new_chat_fields_are_accepted(client: openai.OpenAI) -> None:
    """Fields of the current API that echo has no use for are accepted, not refused."""
    completion = client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "fields"}],
        verbosity="low",
        prompt_cache_key="k1",
        prompt_cache_retention="24h",
        safety_identifier="user-hash-1",
        modalities=["text"],
        prediction={"type": "content", "content": "x"},
        web_search_options={},
        seed=7,
        stop=["zzz"],
        response_format={"type": "text"},
        reasoning_effort="low",
        parallel_tool_calls=False,
        metadata={"team": "blue"},
        store=False,
        service_tier="auto",
        top_p=0.5,
        logprobs=False,
        user="someone",
    )
    assert completion.choices[0].message.content == "Echo: fields"


def test_a_field_the_api_lacks_is_refused(client: openai.OpenAI) -> None:
    """A made-up field is still a 400 naming it."""
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="default",
            messages=[{"role": "user", "content": "x"}],
            extra_body={"not_a_field": 1},
        )
    assert caught.value.param == "not_a_field"


# -- the Responses API -----------------------------------------------------------------------


def test_responses_function_call_then_output_with_previous_response_id(
    client: openai.OpenAI,
) -> None:
    """A client function call is a function_call output item; its output sent with
    previous_response_id continues the same session."""
    first = client.responses.create(
        model="default", input='/tool lookup {"q": "cue"}', tools=[RESPONSES_LOOKUP]
    )
    assert first.status == "completed"
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "lookup"
    assert json.loads(calls[0].arguments) == {"q": "cue"}
    second = client.responses.create(
        model="default",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "found"}],
        tools=[RESPONSES_LOOKUP],
    )
    assert second.output_text == "Tool lookup returned: found"
    assert second.previous_response_id == first.id
    third = client.responses.create(previous_response_id=second.id, input="and now?", model="")
    assert third.output_text == "Echo: and now?"


def test_responses_stateless_input_items(client: openai.OpenAI) -> None:
    """The whole conversation as input items (message, function_call, function_call_output)
    is accepted without a previous response."""
    response = client.responses.create(
        model="default",
        instructions="Be brief.",
        input=[
            {"role": "user", "content": [{"type": "input_text", "text": "look up cue"}]},
            {
                "type": "function_call",
                "call_id": "call_1",
                "name": "lookup",
                "arguments": '{"q": "cue"}',
            },
            {"type": "function_call_output", "call_id": "call_1", "output": "a signal"},
        ],
        tools=[RESPONSES_LOOKUP],
        include=["reasoning.encrypted_content"],
        store=False,
        text={"format": {"type": "text"}, "verbosity": "low"},
        reasoning={"effort": "low"},
        parallel_tool_calls=False,
        tool_choice="auto",
        truncation="disabled",
        metadata={"k": "v"},
    )
    assert response.output_text == "Tool lookup returned: a signal"
    assert response.metadata == {"k": "v"} and response.instructions == "Be brief."


def test_responses_stream_full_event_sequence(client: openai.OpenAI) -> None:
    """The stream has every event the SDK's accumulator expects, in order, and the text part
    is closed before the response completes."""
    with client.responses.stream(model="default", input="stream me") as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert final.output_text == "Echo: stream me"
    assert kinds[:5] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]


def test_responses_stream_function_call(client: openai.OpenAI) -> None:
    """A streamed client function call arrives as a function_call item with its arguments."""
    with client.responses.stream(
        model="default", input='/tool lookup {"q": "s"}', tools=[RESPONSES_LOOKUP]
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert "response.function_call_arguments.done" in kinds
    assert kinds[-2:] == ["response.output_item.done", "response.completed"]
    calls = [item for item in final.output if item.type == "function_call"]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("lookup", {"q": "s"})]


def test_responses_max_output_tokens_is_incomplete(client: openai.OpenAI) -> None:
    """max_output_tokens cuts the reply: status incomplete, reason max_output_tokens."""
    response = client.responses.create(
        model="default", input="one two three four five six", max_output_tokens=3
    )
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == "Echo: one two "
    assert response.usage is not None and response.usage.output_tokens == 3


def test_responses_retrieve_and_cancel(client: openai.OpenAI) -> None:
    """GET /v1/responses/{id} answers the finished response; cancelling a finished one
    leaves it completed; an unknown id is 404."""
    created = client.responses.create(model="default", input="keep me")
    fetched = client.responses.retrieve(created.id)
    assert fetched.id == created.id and fetched.output_text == "Echo: keep me"
    assert fetched.created_at > 0 and fetched.model == "default"
    cancelled = client.responses.cancel(created.id)
    assert cancelled.status == "completed"
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_run_nope")


def test_responses_background_then_cancel(client: openai.OpenAI, server: ServerProcess) -> None:
    """background answers at once in progress; GET shows it still in progress while its run
    waits for an approval; cancel ends it as cancelled."""
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        made = http.post(
            "/v1/agents", json={"id": "careful", "tools": ["calculator"], "approval": "ask"}
        )
        assert made.status_code == 201, made.text
    started = client.responses.create(
        model="careful", input='/tool calculator {"expr": "1+1"}', background=True
    )
    assert started.status == "in_progress" and started.background is True
    assert client.responses.retrieve(started.id).status == "in_progress"
    cancelled = client.responses.cancel(started.id)
    assert cancelled.status == "cancelled"
    assert client.responses.retrieve(started.id).status == "cancelled"


def test_responses_hosted_tools_are_refused_clearly(client: openai.OpenAI) -> None:
    """A tool cuelog cannot serve (web_search) is a 400 naming it, not silently ignored."""
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="default", input="x", tools=[{"type": "web_search"}])
    assert caught.value.param == "tools.0.type"


# -- images and files --------------------------------------------------------------------------

PIXELS = bytes(range(256)) * 64  # 16 KiB standing in for an image


def test_image_parts_are_recorded_by_digest_and_described(
    client: openai.OpenAI, server: ServerProcess
) -> None:
    """An inline image's bytes go to the content store (the log names them by digest), a
    linked image keeps its URL, and echo describes both."""
    digest = hashlib.sha256(PIXELS).hexdigest()
    data_url = "data:image/png;base64," + base64.b64encode(PIXELS).decode()
    raw = client.chat.completions.with_raw_response.create(
        model="default",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": data_url, "detail": "low"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                ],
            }
        ],
    )
    answer = raw.parse().choices[0].message.content
    assert answer == (
        f"Echo: what is this? [image image/png {len(PIXELS)} bytes sha256 {digest[:16]}]"
        " [image https://example.com/a.png]"
    )
    session = raw.headers["x-session-key"]
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        events = http.get("/v1/events", params={"prefix": f"session:{session}"}).json()["data"]
    [accepted] = [e for e in events if e["type"] == "MessageAccepted"]
    [message] = accepted["data"]["messages"]
    assert message["parts"][0] == {
        "kind": "image",
        "media_type": "image/png",
        "digest": digest,
        "size": len(PIXELS),
        "detail": "low",
    }
    assert data_url[30:90] not in json.dumps(accepted)  # the bytes are not in the log


def test_responses_input_image_and_file(client: openai.OpenAI) -> None:
    """Responses input_image and input_file parts are accepted and described."""
    encoded = base64.b64encode(b"%PDF-1.4 tiny").decode()
    response = client.responses.create(
        model="default",
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "read"},
                    {
                        "type": "input_image",
                        "image_url": "https://example.com/b.jpg",
                        "detail": "auto",
                    },
                    {
                        "type": "input_file",
                        "filename": "a.pdf",
                        "file_data": f"data:application/pdf;base64,{encoded}",
                    },
                ],
            }
        ],
    )
    assert response.output_text.startswith(
        "Echo: read [image https://example.com/b.jpg] [file a.pdf application/pdf 13 bytes"
    )


def test_bad_image_data_is_refused(client: openai.OpenAI) -> None:
    """Image data that is not base64 is a 400 naming the part."""
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="default",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}
                    ],
                }
            ],
        )
    assert caught.value.param == "messages.0.content.0"


def test_every_run_here_replays_without_divergence(server: ServerProcess, data_dir: Path) -> None:
    """The runs of this module (client calls, limits, media, Responses) re-execute from the log
    exactly as recorded: `cuelog replay --check` finds no divergence."""
    result = subprocess.run(
        [CUELOG, "replay", str(data_dir), "--check"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "run(s) re-executed" in result.stdout
