"""Agents, agents as OpenAI models, and wake: a message to an agent, answered or accepted."""

from __future__ import annotations

import secrets
from typing import cast

import msgspec
from quart import Response

from cuelog.actors import AgentSpec, AgentView, ChatMessage, Unavailable
from cuelog.http._auth import Routes, caller, principal
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
from cuelog.http._wire import ApiError, json_response, to_json

AGENTS_LIMIT = limit(50, 500)


def agent_json(view: AgentView) -> Agent:
    fields = msgspec.structs.asdict(view.spec)
    del fields["request"]  # only a run's spec carries its request's options
    return Agent(id=view.id, object="agent", version=view.version, **fields)


def model_json(view: AgentView, created: int) -> Model:
    return Model(id=view.id, object="model", created=created, owned_by="cuelog")


def check_spec(services: Services, spec: AgentSpec) -> None:
    """Refuse an agent this server could not run: a provider it has not configured, or a tool
    it does not know (an unknown name would only fail at the agent's first call)."""
    settings = services.domain.settings
    if spec.provider not in settings.providers:
        known = ", ".join(sorted(settings.providers))
        raise ApiError(
            400,
            f"model provider {spec.provider!r} is not configured on this server ({known})",
            code="invalid_value",
            param="provider",
        )
    known_tools = set(settings.tools.names())
    servers = {state.id for state in services.mcp.all()} if services.mcp is not None else set()

    def granted(name: str) -> bool:
        # An MCP grant (`server.*` or `server.tool`) names a registered server; its tools are
        # discovered when it connects, so a server that is down still takes grants.
        server, dot, _ = name.partition(".")
        return name in known_tools or (bool(dot) and server in servers)

    for index, name in enumerate(spec.tools):
        if not granted(name):
            raise ApiError(
                400,
                f"no tool named {name!r} (known: {', '.join(sorted(known_tools))})",
                code="invalid_value",
                param=f"tools.{index}",
            )
    for name in spec.tool_approval:
        if not granted(name):
            raise ApiError(
                400, f"no tool named {name!r}", code="invalid_value", param="tool_approval"
            )


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
        models = [model_json(a, domain.agent_created(a.id)) for a in agents]
        # Aliases are listed too, for clients that check a model name against the list.
        created = {m.id: m.created for m in models}
        for alias, agent_id in services.settings.models.aliases.items():
            if agent_id in created and alias not in created:
                models.append(
                    Model(id=alias, object="model", created=created[agent_id], owned_by="cuelog")
                )
        return json_response(to_json(ModelList(object="list", data=models)))

    @routes.add("/v1/models/<model_id>", ["GET"], "read", answers={200: Model})
    async def get_model(model_id: str) -> Response:
        """One agent as a model (by its id, an alias, or `agent:ID`, each answered as asked)."""
        view = await domain.get_agent(services.agent_for_model(model_id))
        model = model_json(view, domain.agent_created(view.id))
        return json_response(to_json(msgspec.structs.replace(model, id=model_id)))

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
        if body.callback_url is not None:
            await services.outbox().check_target(body.callback_url)
        fields = {
            k: v for k, v in msgspec.structs.asdict(body).items() if v is not None and k != "id"
        }
        spec = msgspec.convert({"name": agent_id, **fields}, AgentSpec)
        check_spec(services, spec)
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
        if body.callback_url is not None:
            await services.outbox().check_target(body.callback_url)
        current = await domain.get_agent(agent_id)
        changes = {k: v for k, v in msgspec.structs.asdict(body).items() if v is not None}
        spec = msgspec.structs.replace(current.spec, **changes)
        check_spec(services, spec)
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
        callback_url = run_id = None
        actor = principal().key_id or "local"
        if body.callback_url is not None:
            # Checked, then recorded before the run exists: the run's outcome goes there and
            # not to the agent's default, however fast the run settles.
            callback_url = await services.outbox().check_target(body.callback_url)
            await domain.get_agent(agent_id)  # an unknown agent writes nothing
            if domain.emergency_stopped:
                raise Unavailable("emergency stop is on: new runs are refused until it is released")
            run_id = f"run_{secrets.token_hex(12)}"
            await services.outbox().request(run_id, callback_url, actor=actor)
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
            run_id=run_id,
        )
        if callback_url is not None and sent.run_id != run_id:
            # A repeat of an Idempotency-Key attached to the first request's run.
            await services.outbox().request(sent.run_id, callback_url, actor=actor)
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
