"""The official `openai` Python SDK, unmodified, against a real `cuelog serve` process."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.support import ServerProcess, running_server

API_KEY = "sdk-test-key-0123456789abcdef"
TEXT = " ".join(f"token{i}" for i in range(120))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("sdk") / "data"
    with running_server(data, "--api-key", API_KEY) as process:
        yield process


@pytest.fixture
def client(server: ServerProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0) as sdk:
        yield sdk


def test_models_list_contains_default(client: openai.OpenAI) -> None:
    """models.list() parses and lists the seeded `default` agent."""
    assert "default" in [model.id for model in client.models.list()]


def test_chat_completion_non_stream(client: openai.OpenAI) -> None:
    """chat.completions.create answers the echo reply with usage and a stop finish."""
    completion = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "hello sdk"}]
    )
    assert completion.choices[0].message.content == "Echo: hello sdk"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens == 5


def test_chat_stream_joins_to_the_non_stream_text_with_usage(client: openai.OpenAI) -> None:
    """Streamed chunk contents join to the non-stream content; include_usage adds a usage chunk."""
    messages: list[openai.types.chat.ChatCompletionMessageParam] = [
        {"role": "user", "content": TEXT}
    ]
    plain = client.chat.completions.create(model="default", messages=messages)
    chunks = list(
        client.chat.completions.create(
            model="default",
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    joined = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert joined == plain.choices[0].message.content
    assert len([c for c in chunks if c.choices]) > 3
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage == plain.usage


def test_chat_with_raw_response_headers(client: openai.OpenAI) -> None:
    """The SDK's raw response carries X-Run-Id and X-Session-Key."""
    raw = client.chat.completions.with_raw_response.create(
        model="default",
        messages=[{"role": "user", "content": "headers"}],
        extra_headers={"X-Session-Key": "sdk-session"},
    )
    assert raw.headers["x-session-key"] == "sdk-session"
    assert raw.headers["x-run-id"].startswith("run_")
    assert raw.parse().choices[0].message.content == "Echo: headers"


def test_responses_create_non_stream(client: openai.OpenAI) -> None:
    """responses.create answers output_text and usage."""
    response = client.responses.create(
        model="default", input="hello responses", instructions="Be kind."
    )
    assert response.output_text == "Echo: hello responses"
    assert response.status == "completed"
    assert response.usage is not None and response.usage.output_tokens == 3


def test_responses_stream_parses_and_completes(client: openai.OpenAI) -> None:
    """responses.stream parses every event; the deltas join to the final output text."""
    with client.responses.stream(model="default", input=TEXT) as stream:
        events = list(stream)
        final = stream.get_final_response()
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == final.output_text == f"Echo: {TEXT}"
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    numbers = [e.sequence_number for e in events]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)


def test_wrong_key_is_authentication_error(server: ServerProcess) -> None:
    """A wrong key raises openai.AuthenticationError."""
    with (
        openai.OpenAI(
            base_url=f"{server.url}/v1", api_key="wrong-key-0123456789", max_retries=0
        ) as wrong,
        pytest.raises(openai.AuthenticationError),
    ):
        wrong.models.list()


def test_unknown_model_is_not_found_error(client: openai.OpenAI) -> None:
    """A model that names no agent raises openai.NotFoundError."""
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(
            model="no-such-agent", messages=[{"role": "user", "content": "x"}]
        )
    assert "no-such-agent" in str(caught.value)


def test_bad_body_is_bad_request_error(client: openai.OpenAI) -> None:
    """An empty messages list raises openai.BadRequestError naming the field."""
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="default", messages=[])
    assert caught.value.param == "messages"
