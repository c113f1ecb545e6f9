"""The OpenAI surface: chat completions and Responses, streaming or not; `model` names the agent."""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator
from typing import Any, cast

from quart import Response

from cuelog.actors import RunEvent, RunStarted, RunView, Sent
from cuelog.http._auth import Routes, caller
from cuelog.http._openai import (
    DONE_FRAME,
    ChatCompletionRequest,
    chat_chunk_frames,
    chat_completion,
    chat_messages,
    chat_request_options,
    check_last_message,
    new_messages,
    with_request,
)
from cuelog.http._params import (
    CALLBACK_URL,
    END_USER,
    IDEMPOTENCY_KEY,
    PREFER,
    SESSION_KEY,
    prefers_async,
)
from cuelog.http._responses import (
    ResponseEcho,
    ResponsesRequest,
    continued_messages,
    outcome_of,
    response_echo,
    response_events,
    response_object,
    responses_messages,
    responses_options,
    run_id_of,
)
from cuelog.http._schemas import RunStatus, WakeAccepted
from cuelog.http._services import (
    Services,
    cancel_on_disconnect,
    check_id,
    event_frame,
    run_headers,
)
from cuelog.http._wire import ApiError, json_response, to_json


def register_chat_routes(routes: Routes, services: Services) -> None:
    @routes.add(
        "/v1/chat/completions",
        ["POST"],
        "chat",
        body=ChatCompletionRequest,
        answers={200: None, 202: WakeAccepted},
        params=[IDEMPOTENCY_KEY, SESSION_KEY, END_USER, PREFER, CALLBACK_URL],
        streams=True,
        runs=True,
    )
    async def chat_completions() -> Response:
        """OpenAI chat completions, streaming or not; `model` names the agent. Client `tools`
        end the run with `finish_reason: "tool_calls"`; the next request brings the results.
        `Prefer: respond-async` answers 202 with the run at once; `X-Callback-Url` has its
        outcome delivered there."""
        body, raw = await services.read(ChatCompletionRequest)
        respond_async = prefers_async() and not body.stream
        if body.n not in (None, 1):
            raise ApiError(400, "only n=1 is supported", param="n")
        messages = chat_messages(body.messages)
        session_key = SESSION_KEY.get()
        if session_key is not None:
            messages = new_messages(messages)
        else:
            check_last_message(messages, "messages")
        tune = functools.partial(
            with_request,
            options=chat_request_options(body),
            max_tokens=body.max_completion_tokens or body.max_tokens,
            temperature=body.temperature,
        )
        metadata = with_end_user(body.metadata, body.safety_identifier or body.user)
        with services.stream_slot(bool(body.stream)) as slot:  # a 429 before the run exists
            sent = await services.start_run(
                "chat",
                raw,
                body.model,
                messages,
                session_key,
                metadata,
                tune=tune,
                callback_url=CALLBACK_URL.get(),
            )
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
        if respond_async:
            return await accepted(services, sent, {"Preference-Applied": "respond-async"})
        view = await services.wait_for(sent)
        raise_for_run(view, run_headers(sent))
        created = int(time.time())
        return json_response(
            chat_completion(
                view.id,
                body.model,
                created,
                view.content,
                view.usage,
                view.finish_reason,
                view.tool_calls,
            ),
            headers=run_headers(sent),
        )

    @routes.add(
        "/v1/responses",
        ["POST"],
        "chat",
        body=ResponsesRequest,
        answers={200: None},
        params=[IDEMPOTENCY_KEY, END_USER, CALLBACK_URL],
        streams=True,
        runs=True,
    )
    async def responses() -> Response:
        """The OpenAI Responses API: text, client function calls and their outputs;
        `previous_response_id` (or `conversation`) continues that session. `X-Callback-Url`
        has the run's outcome delivered there (with `background: true`, say)."""
        body, raw = await services.read(ResponsesRequest)
        options = responses_options(body)
        messages = responses_messages(body)
        model, session_key = body.model, conversation_key(body)
        if body.previous_response_id is not None:
            previous = await services.domain.get_run(
                run_id_of(body.previous_response_id), caller=caller()
            )
            model, session_key = model or previous.agent_id, previous.session_key
        if model is None:
            raise ApiError(400, "model is required", param="model")
        if session_key is not None:
            # The session holds the instructions and the turns before; only what is new goes in.
            messages = continued_messages([m for m in messages if m.role != "system"])
            if not messages:
                raise ApiError(400, "input has nothing new for the session", param="input")
        tune = functools.partial(
            with_request,
            options=options,
            max_tokens=body.max_output_tokens,
            temperature=body.temperature,
        )
        metadata = with_end_user(body.metadata, body.safety_identifier or body.user)
        echo = response_echo(body)
        with services.stream_slot(bool(body.stream)) as slot:  # a 429 before the run exists
            sent = await services.start_run(
                "responses",
                raw,
                model,
                messages,
                session_key,
                metadata,
                tune=tune,
                callback_url=CALLBACK_URL.get(),
            )
            created = int(time.time())
            if body.stream:
                events = await services.domain.follow_run(sent.run_id)
                return services.stream(
                    response_events(events, sent.run_id, model, created, echo),
                    run_headers(sent),
                    slot=slot,
                )
        if body.background:
            view = await services.domain.get_run(sent.run_id, caller=caller())
        else:
            view = await services.wait_for(sent)
        return json_response(
            to_json(response_object(view.id, model, created, outcome_of(view), echo)),
            headers=run_headers(sent),
        )

    @routes.add("/v1/responses/<run_id>", ["GET"], "read", answers={200: None})
    async def get_response(run_id: str) -> Response:
        """A response by id (`resp_<run id>`, or the run id): in progress, or its output."""
        return json_response(to_json(await stored_response(services, run_id)))

    @routes.add("/v1/responses/<run_id>/cancel", ["POST"], "chat", answers={200: None})
    async def cancel_response(run_id: str) -> Response:
        """Cancel a response's run; answers the response as it then stands."""
        run_id = run_id_of(run_id)
        await services.domain.cancel_run(run_id, reason="cancelled by client", caller=caller())
        return json_response(to_json(await stored_response(services, run_id)))


async def accepted(
    services: Services, sent: Sent, headers: dict[str, str] | None = None
) -> Response:
    """202: the run is under way; where to follow it."""
    view = await services.domain.get_run(sent.run_id, caller=caller())
    body = WakeAccepted(
        run_id=sent.run_id,
        session_key=sent.session_key,
        status=cast(RunStatus, view.status),
        events_url=f"/v1/runs/{sent.run_id}/events",
    )
    return json_response(to_json(body), 202, {**run_headers(sent), **(headers or {})})


def with_end_user(metadata: dict[str, str] | None, end_user: str | None) -> dict[str, str]:
    """The message's metadata with who the request acts for (`user_id`, as wake records it):
    the body's `safety_identifier` or `user`, else the `X-End-User` header."""
    user = end_user or END_USER.get()
    out = dict(metadata or {})
    if user:
        out["user_id"] = user
    return out


def conversation_key(body: ResponsesRequest) -> str | None:
    """The session a `conversation` names (its id, or `{"id": ...}`)."""
    conversation = body.conversation
    if isinstance(conversation, dict):
        conversation = conversation.get("id")
        if not isinstance(conversation, str):
            raise ApiError(400, "conversation.id must be a string", param="conversation")
    return None if conversation is None else check_id("conversation", conversation)


async def stored_response(services: Services, response_id: str) -> dict[str, Any]:
    """A response object rebuilt from its run: the model is its agent, `created_at` its start."""
    run_id = run_id_of(response_id)
    view = await services.domain.get_run(run_id, caller=caller())
    created = 0
    events = await services.domain.follow_run(run_id)
    try:
        async for item in events:
            created = item.record.ts // 1_000_000
            break
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()
    return response_object(view.id, view.agent_id, created, outcome_of(view), ResponseEcho())


def raise_for_run(view: RunView, headers: dict[str, str]) -> None:
    """The error for a run that ended without an answer; `headers` name the run, so a client
    can look it up (the same Idempotency-Key answers the same error)."""
    if view.status == "completed":
        return
    if view.status == "cancelled":
        raise ApiError(
            409, f"the run was cancelled: {view.error}", code="run_cancelled", headers=headers
        )
    raise ApiError(502, f"the run failed: {view.error}", code="run_failed", headers=headers)


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
