"""Agents, agents as OpenAI models, and wake: a message to an agent, answered or accepted."""

from __future__ import annotations

from typing import cast

import msgspec
from quart import Response

from cuelog.actors import AgentSpec, AgentView, ChatMessage
from cuelog.http._auth import Routes, caller
from cuelog.http._bodies import AgentBody, AgentPatch, WakeBody
from cuelog.http._params import CURSOR, IDEMPOTENCY_KEY, limit
from cuelog.http._schemas import (
    Agent,
    AgentList,
    Deleted,
    Model,
    ModelList,
    RunStatus,
    WakeAccepted,
    WakeResult,
)
from cuelog.http._services import Services, check_id, page_json, run_headers
from cuelog.http._wire import json_response, to_json

AGENTS_LIMIT = limit(50, 500)


def agent_json(view: AgentView) -> Agent:
    return Agent(
        id=view.id, object="agent", version=view.version, **msgspec.structs.asdict(view.spec)
    )


def model_json(view: AgentView) -> Model:
    return Model(id=view.id, object="model", created=0, owned_by="cuelog")


def register_agent_routes(routes: Routes, services: Services) -> None:
    domain = services.domain

    @routes.add("/v1/models", ["GET"], "read", answers={200: ModelList})
    async def list_models() -> Response:
        """Agents as models: `model` in a chat request names the agent."""
        agents: list[AgentView] = []
        cursor: str | None = None
        while len(agents) < 1000:  # page by page: each page is a bounded scan
            page, cursor = await domain.list_agents(after=cursor, limit=1000 - len(agents))
            agents.extend(page)
            if cursor is None:
                break
        return json_response(
            to_json(ModelList(object="list", data=[model_json(a) for a in agents]))
        )

    @routes.add("/v1/models/<model_id>", ["GET"], "read", answers={200: Model})
    async def get_model(model_id: str) -> Response:
        """One agent as a model."""
        return json_response(to_json(model_json(await domain.get_agent(model_id))))

    @routes.add(
        "/v1/agents", ["GET"], "read", answers={200: AgentList}, params=[AGENTS_LIMIT, CURSOR]
    )
    async def list_agents() -> Response:
        """Agents, in id order, with cursor pagination."""
        agents, next_cursor = await domain.list_agents(after=CURSOR.get(), limit=AGENTS_LIMIT.get())
        return page_json([agent_json(a) for a in agents], next_cursor)

    @routes.add("/v1/agents", ["POST"], "admin", body=AgentBody, answers={201: Agent})
    async def create_agent() -> Response:
        """Create an agent."""
        body, _ = await services.read(AgentBody)
        agent_id = check_id("id", body.id)
        fields = {
            k: v for k, v in msgspec.structs.asdict(body).items() if v is not None and k != "id"
        }
        spec = msgspec.convert({"name": agent_id, **fields}, AgentSpec)
        view = await domain.create_agent(agent_id, spec)
        return json_response(to_json(agent_json(view)), 201)

    @routes.add("/v1/agents/<agent_id>", ["GET"], "read", answers={200: Agent})
    async def get_agent(agent_id: str) -> Response:
        """One agent."""
        return json_response(to_json(agent_json(await domain.get_agent(agent_id))))

    @routes.add("/v1/agents/<agent_id>", ["PATCH"], "admin", body=AgentPatch, answers={200: Agent})
    async def patch_agent(agent_id: str) -> Response:
        """Change some of an agent's fields."""
        body, _ = await services.read(AgentPatch)
        current = await domain.get_agent(agent_id)
        changes = {k: v for k, v in msgspec.structs.asdict(body).items() if v is not None}
        spec = msgspec.structs.replace(current.spec, **changes)
        return json_response(to_json(agent_json(await domain.update_agent(agent_id, spec))))

    @routes.add("/v1/agents/<agent_id>", ["DELETE"], "admin", answers={200: Deleted})
    async def delete_agent(agent_id: str) -> Response:
        """Delete an agent (its sessions stay readable)."""
        await domain.delete_agent(agent_id)
        return json_response(to_json(Deleted(id=agent_id, object="agent", deleted=True)))

    @routes.add(
        "/v1/agents/<agent_id>/wake",
        ["POST"],
        "wake",
        body=WakeBody,
        answers={200: WakeResult, 202: WakeAccepted},
        params=[IDEMPOTENCY_KEY],
        runs=True,
    )
    async def wake(agent_id: str) -> Response:
        """Wake an agent with a message: sync waits for the answer, async answers 202 at once."""
        body, raw = await services.read(WakeBody)
        if body.session_key is not None:
            check_id("session_key", body.session_key)
        metadata = dict(body.metadata or {})
        if body.user_id is not None:
            metadata["user_id"] = body.user_id
        sent = await services.start_run(
            f"wake:{agent_id}",
            raw,
            agent_id,
            [ChatMessage(role="user", content=body.message)],
            body.session_key,
            metadata,
        )
        if body.mode == "async":
            view = await domain.get_run(sent.run_id, caller=caller())
            accepted = WakeAccepted(
                run_id=sent.run_id,
                session_key=sent.session_key,
                status=cast(RunStatus, view.status),
                events_url=f"/v1/runs/{sent.run_id}/events",
            )
            return json_response(to_json(accepted), 202, run_headers(sent))
        view = await services.wait_for(sent)
        result = WakeResult(
            content=view.content,
            run_id=sent.run_id,
            session_key=sent.session_key,
            status=cast(RunStatus, view.status),
            usage=view.usage,
            error=view.error,
        )
        return json_response(to_json(result), headers=run_headers(sent))
