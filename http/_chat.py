"""The OpenAI surface: chat completions and Responses, streaming or not; `model` names the agent."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from quart import Response

from cuelog.actors import AssistantDelta, RunCompleted, RunEvent, RunStarted, RunView
from cuelog.http._auth import Routes
from cuelog.http._openai import (
    DONE_FRAME,
    ChatCompletionRequest,
    ResponsesRequest,
    chat_chunk_frames,
    chat_completion,
    chat_messages,
    new_user_messages,
    response_object,
    responses_messages,
)
from cuelog.http._params import IDEMPOTENCY_KEY, SESSION_KEY
from cuelog.http._services import (
    Services,
    cancel_on_disconnect,
    event_frame,
    run_headers,
)
from cuelog.http._wire import ApiError, json_response, sse_frame, to_json


def register_chat_routes(routes: Routes, services: Services) -> None:
    @routes.add(
        "/v1/chat/completions",
        ["POST"],
        "chat",
        body=ChatCompletionRequest,
        answers={200: None},
        params=[IDEMPOTENCY_KEY, SESSION_KEY],
        streams=True,
        runs=True,
    )
    async def chat_completions() -> Response:
        """OpenAI chat completions, streaming or not; `model` names the agent."""
        body, raw = await services.read(ChatCompletionRequest)
        if body.n not in (None, 1):
            raise ApiError(400, "only n=1 is supported", param="n")
        messages = chat_messages(body.messages)
        session_key = SESSION_KEY.get()
        if session_key is not None:
            messages = new_user_messages(messages)
        elif messages[-1].role != "user":
            raise ApiError(400, "the last message must be from the user", param="messages")
        with services.stream_slot(bool(body.stream)) as slot:  # a 429 before the run exists
            sent = await services.start_run("chat", raw, body.model, messages, session_key)
            if body.stream:
                include_usage = bool(body.stream_options and body.stream_options.include_usage)
                frames = run_frames(
                    services,
                    sent.run_id,
                    await services.domain.follow_run(sent.run_id),
                    0,
                    "openai",
                    include_usage=include_usage,
                    cancel_on_close=cancel_on_disconnect(),
                )
                return services.stream(frames, run_headers(sent), slot=slot)
        view = await services.wait_for(sent)
        raise_for_run(view)
        created = int(time.time())
        return json_response(
            chat_completion(view.id, body.model, created, view.content, view.usage),
            headers=run_headers(sent),
        )

    @routes.add(
        "/v1/responses",
        ["POST"],
        "chat",
        body=ResponsesRequest,
        answers={200: None},
        params=[IDEMPOTENCY_KEY],
        streams=True,
        runs=True,
    )
    async def responses() -> Response:
        """The OpenAI Responses API subset: text in, text out, streaming or not."""
        body, raw = await services.read(ResponsesRequest)
        messages = responses_messages(body)
        with services.stream_slot(bool(body.stream)) as slot:  # a 429 before the run exists
            sent = await services.start_run("responses", raw, body.model, messages, None)
            created = int(time.time())
            if body.stream:
                events = await services.domain.follow_run(sent.run_id)
                return services.stream(
                    response_events(events, sent.run_id, body.model, created),
                    run_headers(sent),
                    slot=slot,
                )
        view = await services.wait_for(sent)
        raise_for_run(view)
        return json_response(
            to_json(
                response_object(view.id, body.model, created, "completed", view.content, view.usage)
            ),
            headers=run_headers(sent),
        )


def raise_for_run(view: RunView) -> None:
    if view.status == "completed":
        return
    if view.status == "cancelled":
        raise ApiError(409, f"the run was cancelled: {view.error}", code="run_cancelled")
    raise ApiError(502, f"the run failed: {view.error}", code="run_failed")


async def run_frames(
    services: Services,
    run_id: str,
    events: AsyncIterator[RunEvent],
    after_seq: int,
    fmt: str,
    *,
    include_usage: bool = False,
    cancel_on_close: bool = False,
) -> AsyncIterator[bytes]:
    """A run's events as SSE frames from `after_seq`; ends after the run's last event.

    The OpenAI format names the agent and the run's start time in every chunk, so the run is
    followed from its first event (`RunStarted`) even when frames are only sent after `after_seq`.
    """
    model, created = "", 0
    finished = False
    try:
        async for item in events:
            if isinstance(item.event, RunStarted):
                model, created = item.event.agent_id, item.record.ts // 1_000_000
            if item.record.seq > after_seq:
                if fmt == "openai":
                    for frame in chat_chunk_frames(item, run_id, model, created, include_usage):
                        yield frame
                else:
                    yield event_frame(item.record)
            if item.terminal:
                finished = True
                if fmt == "openai":
                    yield DONE_FRAME
                return
    finally:
        if cancel_on_close and not finished:
            await services.cancel_quietly(run_id)


async def response_events(
    events: AsyncIterator[RunEvent], run_id: str, model: str, created: int
) -> AsyncIterator[bytes]:
    """Responses API stream events for a run."""

    sequence = 0
    item_id = f"msg_{run_id}"
    text: list[str] = []

    def frame(kind: str, payload: dict[str, Any], seq: int | None) -> bytes:
        nonlocal sequence
        sequence += 1
        return sse_frame(
            to_json({"type": kind, "sequence_number": sequence, **payload}), event=kind, id=seq
        )

    yield frame(
        "response.created",
        {"response": response_object(run_id, model, created, "in_progress", None, None)},
        None,
    )
    item = {
        "type": "message",
        "id": item_id,
        "status": "in_progress",
        "role": "assistant",
        "content": [],
    }
    yield frame("response.output_item.added", {"output_index": 0, "item": item}, None)
    part = {"type": "output_text", "text": "", "annotations": []}
    yield frame(
        "response.content_part.added",
        {"item_id": item_id, "output_index": 0, "content_index": 0, "part": part},
        None,
    )
    async for run_event in events:
        event, seq = run_event.event, run_event.record.seq
        if isinstance(event, AssistantDelta):
            text.append(event.text)
            yield frame(
                "response.output_text.delta",
                {
                    "item_id": item_id,
                    "output_index": 0,
                    "content_index": 0,
                    "delta": event.text,
                    "logprobs": [],
                },
                seq,
            )
        elif isinstance(event, RunCompleted):
            full = "".join(text)
            yield frame(
                "response.output_text.done",
                {
                    "item_id": item_id,
                    "output_index": 0,
                    "content_index": 0,
                    "text": full,
                    "logprobs": [],
                },
                None,
            )
            final = response_object(run_id, model, created, "completed", full, event.usage)
            yield frame("response.completed", {"response": final}, seq)
            return
        elif run_event.terminal:
            failed = response_object(run_id, model, created, "failed", None, None)
            yield frame("response.failed", {"response": failed}, seq)
            return
