"""Agents, agents as OpenAI models, and wake: a message to an agent, answered or accepted."""

from __future__ import annotations

from typing import cast

import msgspec
from quart import Response

from cuelog.actors import AgentSpec, AgentView, ChatMessage, agent_signer
from cuelog.http._auth import Routes, principal
from cuelog.http._bodies import AgentBody, AgentPatch, WakeBody
from cuelog.http._chat import accepted
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


def agent_json(view: AgentView, services: Services | None = None) -> Agent:
    fields = msgspec.structs.asdict(view.spec)
    del fields["request"]  # only a run's spec carries its request's options
    hooks = services.webhooks if services is not None else None
    signs = hooks is not None and hooks.secrets.has(agent_signer(view.id))
    return Agent(
        id=view.id, object="agent", version=view.version, has_webhook_secret=signs, **fields
    )


def model_json(view: AgentView, created: int) -> Model:
    return Model(id=view.id, object="model", created=created, owned_by="cuelog")


def actor() -> str:
    return principal().key_id or "local"


def check_spec(services: Services, spec: AgentSpec) -> None:
    """Refuse an agent this server could not run: a provider it has not configured, or a tool
    it does not know (an unknown name would only fail at the agent's first call)."""
    settings = services.domain.settings
    if spec.provider not in settings.providers and services.providers is not None:
        services.providers.catch_up()  # added through another process a moment ago?
    if spec.provider not in settings.providers:
        known = ", ".join(sorted(settings.providers))
        raise ApiError(
            400,
            f"model provider {spec.provider!r} is not configured on this server ({known})",
            code="invalid_value",
            param="provider",
        )
    known_tools = set(settings.tools.names())
    if services.mcp is not None and any(name not in known_tools for name in spec.tools):
        services.mcp.catch_up()  # a server added through another process a moment ago?
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
        return page_json([agent_json(a, services) for a in agents], next_cursor)

    @routes.add("/v1/agents", ["POST"], "admin", body=AgentBody, answers={201: Agent})
    async def create_agent() -> Response:
        """Create an agent."""
        body, _ = await services.read(AgentBody)
        agent_id = check_id("id", body.id)
        secret = body.webhook_secret or None
        if secret is not None:
            services.outbox()  # a 503 before anything is written when webhooks are off
        if body.callback_url is not None:
            await services.outbox().check_target(
                body.callback_url, agent_id=agent_id, secret_given=secret is not None
            )
        fields = {
            k: v
            for k, v in msgspec.structs.asdict(body).items()
            if v is not None and k not in ("id", "webhook_secret")
        }
        spec = msgspec.convert({"name": agent_id, **fields}, AgentSpec)
        check_spec(services, spec)
        view = await domain.create_agent(agent_id, spec)
        if secret is not None:
            await services.outbox().set_secret(agent_signer(agent_id), secret, actor=actor())
        return json_response(to_json(agent_json(view, services)), 201)

    @routes.add("/v1/agents/<agent_id>", ["GET"], "read", answers={200: Agent})
    async def get_agent(agent_id: str) -> Response:
        """One agent."""
        return json_response(to_json(agent_json(await domain.get_agent(agent_id), services)))

    @routes.add("/v1/agents/<agent_id>", ["PATCH"], "admin", body=AgentPatch, answers={200: Agent})
    async def patch_agent(agent_id: str) -> Response:
        """Change some of an agent's fields."""
        body, _ = await services.read(AgentPatch)
        secret = body.webhook_secret
        if secret is not None:
            services.outbox()  # a 503 before anything is written when webhooks are off
        if body.callback_url is not None:
            await services.outbox().check_target(
                body.callback_url, agent_id=agent_id, secret_given=bool(secret)
            )
        current = await domain.get_agent(agent_id)
        changes = {
            k: v
            for k, v in msgspec.structs.asdict(body).items()
            if v is not None and k != "webhook_secret"
        }
        spec = msgspec.structs.replace(current.spec, **changes)
        check_spec(services, spec)
        # A patch of the secret alone leaves the agent's definition (and version) as it is.
        only_secret = secret is not None and not changes
        view = current if only_secret else await domain.update_agent(agent_id, spec)
        if secret:
            await services.outbox().set_secret(agent_signer(agent_id), secret, actor=actor())
        elif secret == "":
            await services.outbox().secrets.clear(agent_signer(agent_id), actor=actor())
        return json_response(to_json(agent_json(view, services)))

    @routes.add("/v1/agents/<agent_id>", ["DELETE"], "admin", answers={200: Deleted})
    async def delete_agent(agent_id: str) -> Response:
        """Delete an agent (its sessions stay readable)."""
        await domain.delete_agent(agent_id)
        if services.webhooks is not None:  # a later agent of that id does not inherit it
            await services.webhooks.secrets.clear(agent_signer(agent_id), actor=actor())
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
            callback_url=body.callback_url,
        )
        if body.mode == "async":
            return await accepted(services, sent)
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
