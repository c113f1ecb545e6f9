"""The agent frameworks people point at an OpenAI-compatible server, unmodified, against a real
`cuelog serve` process: the OpenAI Agents SDK (both of its model classes) and LangChain. Each
runs a client function tool loop to completion with the echo model."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from agents import (
    Agent,
    ModelBehaviorError,
    ModelSettings,
    OpenAIChatCompletionsModel,
    OpenAIResponsesModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from openai import AsyncOpenAI

from tests.support import ServerProcess, running_server

API_KEY = "frameworks-key-0123456789abcdef"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    set_tracing_disabled(True)  # the Agents SDK would otherwise export traces to OpenAI
    data = tmp_path_factory.mktemp("frameworks") / "data"
    with running_server(data, "--api-key", API_KEY) as process:
        yield process


@function_tool
def lookup(q: str) -> str:
    """Look a word up."""
    return f"found {q}"


async def _run_agent(server: ServerProcess, kind: str, prompt: Any, **settings: int) -> str:
    client = AsyncOpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)
    async with client:
        model = (
            OpenAIResponsesModel(model="default", openai_client=client)
            if kind == "responses"
            else OpenAIChatCompletionsModel(model="default", openai_client=client)
        )
        agent = Agent(
            name="helper",
            instructions="Use lookup for words.",
            model=model,
            tools=[lookup],
            model_settings=ModelSettings(**settings),  # type: ignore[arg-type]
        )
        result = await Runner.run(agent, prompt)
        return str(result.final_output)


@pytest.mark.parametrize("kind", ["responses", "chat"])
def test_agents_sdk_runs_a_function_tool_to_completion(server: ServerProcess, kind: str) -> None:
    """The Agents SDK's model calls its function tool, sends the output back and finishes."""
    final = asyncio.run(_run_agent(server, kind, '/tool lookup {"q": "cue"}'))
    assert final == "Tool lookup returned: found cue"


def test_agents_sdk_max_tokens_is_respected(server: ServerProcess) -> None:
    """ModelSettings.max_tokens cuts the echo reply at that many tokens: the chat model class
    returns the cut text; the Responses one sees the response incomplete, as from OpenAI."""
    final = asyncio.run(_run_agent(server, "chat", "a b c d e f g h", max_tokens=3))
    assert final.split() == ["Echo:", "a", "b"]
    with pytest.raises(ModelBehaviorError, match="max_output_tokens"):
        asyncio.run(_run_agent(server, "responses", "a b c d e f g h", max_tokens=3))


@tool
def word_lookup(q: str) -> str:
    """Look a word up."""
    return f"found {q}"


def _chat_model(server: ServerProcess, **kwargs: int) -> ChatOpenAI:
    return ChatOpenAI(
        model="default",
        base_url=f"{server.url}/v1",
        api_key=API_KEY,  # type: ignore[arg-type]
        max_retries=0,
        **kwargs,  # type: ignore[arg-type]
    )


def test_langchain_bind_tools_loop(server: ServerProcess) -> None:
    """bind_tools: the model's tool call comes back as `tool_calls`, the ToolMessage with its
    result goes in, and the model answers from it."""
    bound = _chat_model(server).bind_tools([word_lookup])
    messages: list[BaseMessage] = [HumanMessage('/tool word_lookup {"q": "log"}')]
    for _ in range(3):
        reply = bound.invoke(messages)
        assert isinstance(reply, AIMessage)
        messages.append(reply)
        if not reply.tool_calls:
            break
        for call in reply.tool_calls:
            output = word_lookup.invoke(call["args"])
            messages.append(ToolMessage(output, tool_call_id=call["id"]))
    assert [type(m).__name__ for m in messages] == [
        "HumanMessage",
        "AIMessage",
        "ToolMessage",
        "AIMessage",
    ]
    assert messages[-1].content == "Tool word_lookup returned: found log"


def test_langchain_streams_and_respects_max_tokens(server: ServerProcess) -> None:
    """Streaming joins to the reply; max_tokens cuts it with finish_reason length."""
    model = _chat_model(server, max_tokens=2)
    reply = model.invoke("one two three four")
    assert reply.response_metadata["finish_reason"] == "length"
    assert str(reply.content).split() == ["Echo:", "one"]
    streamed = "".join(str(chunk.content) for chunk in _chat_model(server).stream("hi there"))
    assert streamed == "Echo: hi there"


PNG_URL = "data:image/png;base64,iVBORw=="  # 4 bytes
IMAGE_REPLY = "Echo: see [image image/png 4 bytes sha256 "


@pytest.mark.parametrize("kind", ["responses", "chat"])
def test_agents_sdk_sends_an_image(server: ServerProcess, kind: str) -> None:
    """An input_image item reaches the agent, which sees it."""
    prompt: Any = [
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "see"},
                {"type": "input_image", "image_url": PNG_URL, "detail": "auto"},
            ],
        }
    ]
    final = asyncio.run(_run_agent(server, kind, prompt))
    assert final.startswith(IMAGE_REPLY)


def test_langchain_sends_an_image(server: ServerProcess) -> None:
    """An image_url content block reaches the agent, which sees it."""
    message = HumanMessage(
        content=[
            {"type": "text", "text": "see"},
            {"type": "image_url", "image_url": {"url": PNG_URL}},
        ]
    )
    reply = _chat_model(server).invoke([message])
    assert str(reply.content).startswith(IMAGE_REPLY)


async def _run_agent_streamed(server: ServerProcess, kind: str, prompt: str) -> tuple[str, int]:
    client = AsyncOpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)
    async with client:
        model = (
            OpenAIResponsesModel(model="default", openai_client=client)
            if kind == "responses"
            else OpenAIChatCompletionsModel(model="default", openai_client=client)
        )
        agent = Agent(name="helper", instructions="Be brief.", model=model, tools=[lookup])
        result = Runner.run_streamed(agent, prompt)
        events = [event async for event in result.stream_events()]
        return str(result.final_output), len(events)


@pytest.mark.parametrize("kind", ["responses", "chat"])
def test_agents_sdk_streamed_tool_loop(server: ServerProcess, kind: str) -> None:
    """Runner.run_streamed goes through the tool call and the answer on streamed responses."""
    final, events = asyncio.run(_run_agent_streamed(server, kind, '/tool lookup {"q": "s"}'))
    assert final == "Tool lookup returned: found s"
    assert events > 3
