"""MCP servers: `/v1/mcp/servers` to add, change, toggle, restart and remove them while the
server runs. Values of `env` and `headers` are secrets: sealed in the log, masked in every
answer, and a patch that sends the mask back keeps the stored value."""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

import msgspec
from quart import Response

from cuelog.actors import McpServerConfig, McpServers, McpServerState
from cuelog.http._auth import Routes, principal
from cuelog.http._schemas import Deleted
from cuelog.http._services import Services
from cuelog.http._wire import ApiError, json_response, to_json

MASK: Final = "********"

ServerId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,32}$", max_length=32)]
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
Args = Annotated[list[Annotated[str, msgspec.Meta(max_length=4096)]], msgspec.Meta(max_length=128)]
Secrets = Annotated[
    dict[
        Annotated[str, msgspec.Meta(min_length=1, max_length=256)],
        Annotated[str, msgspec.Meta(max_length=8192)],
    ],
    msgspec.Meta(max_length=128),
]
Timeout = Annotated[float, msgspec.Meta(gt=0, le=3600)]
Transport = Literal["stdio", "http"]


class McpServerBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A new MCP server: `command` (+ `args`, `env`) runs it on stdio, `url` (+ `headers`)
    reaches it over streamable HTTP; `transport` may say which, or is inferred."""

    name: ServerId
    transport: Transport | None = None
    command: Text | None = None
    args: Args = msgspec.field(default_factory=list)
    env: Secrets = msgspec.field(default_factory=dict)
    url: Text | None = None
    headers: Secrets = msgspec.field(default_factory=dict)
    enabled: bool = True
    timeout: Timeout = 60.0


class McpServerPatch(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The fields to change; `env` and `headers` replace the whole map (a masked value keeps the
    stored one)."""

    transport: Transport | None = None
    command: Text | None = None
    args: Args | None = None
    env: Secrets | None = None
    url: Text | None = None
    headers: Secrets | None = None
    enabled: bool | None = None
    timeout: Timeout | None = None


class McpServer(msgspec.Struct, kw_only=True):
    id: str
    name: str  # the same as id
    object: Literal["mcp_server"]
    transport: Transport
    command: str | None
    args: list[str]
    env: dict[str, str]  # values masked
    url: str | None
    headers: dict[str, str]  # values masked
    enabled: bool
    timeout: float
    status: Literal["disabled", "connecting", "connected", "failed"]
    tool_count: int
    tools: list[str]
    last_error: str | None
    restarts: int
    pid: int | None


class McpServerList(msgspec.Struct, kw_only=True):
    object: Literal["list"]
    data: list[McpServer]


class McpServerStderr(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["mcp_server.stderr"]
    stderr: str  # the last 64 KiB a stdio server wrote to stderr


def _masked(values: dict[str, str]) -> dict[str, str]:
    return dict.fromkeys(values, MASK)


def server_json(state: McpServerState) -> McpServer:
    config = state.config
    return McpServer(
        id=state.id,
        name=state.id,
        object="mcp_server",
        transport=config.transport,
        command=config.command,
        args=config.args,
        env=_masked(config.env),
        url=config.url,
        headers=_masked(config.headers),
        enabled=config.enabled,
        timeout=config.timeout,
        status=state.status,
        tool_count=len(state.tools),
        tools=state.tools,
        last_error=state.last_error,
        restarts=state.restarts,
        pid=state.pid,
    )


def _unmasked(new: dict[str, str], old: dict[str, str]) -> dict[str, str]:
    """A patch's map, with each masked value replaced by the stored one."""
    return {k: old.get(k, v) if v == MASK else v for k, v in new.items()}


def patched(config: McpServerConfig, patch: McpServerPatch) -> McpServerConfig:
    changes: dict[str, Any] = {
        k: v for k, v in msgspec.structs.asdict(patch).items() if v is not None
    }
    if patch.env is not None:
        changes["env"] = _unmasked(patch.env, config.env)
    if patch.headers is not None:
        changes["headers"] = _unmasked(patch.headers, config.headers)
    if patch.transport is not None and patch.transport != config.transport:
        # Switching transport drops the other transport's fields unless the patch sets them.
        other: dict[str, Any] = (
            {"url": None, "headers": {}}
            if patch.transport == "stdio"
            else {"command": None, "args": [], "env": {}}
        )
        changes = {**other, **changes}
    return msgspec.structs.replace(config, **changes)


def register_mcp_routes(routes: Routes, services: Services) -> None:
    def servers() -> McpServers:
        if services.mcp is None:
            raise ApiError(503, "MCP servers are not available on this server")
        return services.mcp

    def answer(state: McpServerState, status: int = 200) -> Response:
        return json_response(to_json(server_json(state)), status)

    @routes.add("/v1/mcp/servers", ["GET"], "read", answers={200: McpServerList})
    async def list_mcp_servers() -> Response:
        """Every MCP server with its connection status and tools."""
        data = [server_json(state) for state in servers().all()]
        return json_response(to_json(McpServerList(object="list", data=data)))

    @routes.add("/v1/mcp/servers", ["POST"], "admin", body=McpServerBody, answers={201: McpServer})
    async def create_mcp_server() -> Response:
        """Add an MCP server; an enabled one connects at once."""
        body, _ = await services.read(McpServerBody)
        fields = msgspec.structs.asdict(body)
        server_id = fields.pop("name")
        if body.transport is None:
            if (body.command is None) == (body.url is None):
                raise ApiError(
                    400, "give command (a stdio server) or url (streamable HTTP)", param="command"
                )
            fields["transport"] = "stdio" if body.command is not None else "http"
        config = McpServerConfig(**fields)
        state = await servers().create(server_id, config, actor=principal().key_id)
        return answer(state, 201)

    @routes.add("/v1/mcp/servers/<server_id>", ["GET"], "read", answers={200: McpServer})
    async def get_mcp_server(server_id: str) -> Response:
        """One MCP server."""
        return answer(servers().get(server_id))

    @routes.add(
        "/v1/mcp/servers/<server_id>",
        ["PATCH"],
        "admin",
        body=McpServerPatch,
        answers={200: McpServer},
    )
    async def patch_mcp_server(server_id: str) -> Response:
        """Change some of a server's fields; it reconnects under the new config."""
        body, _ = await services.read(McpServerPatch)
        mcp = servers()
        config = patched(mcp.get(server_id).config, body)
        return answer(await mcp.update(server_id, config, actor=principal().key_id))

    @routes.add("/v1/mcp/servers/<server_id>", ["DELETE"], "admin", answers={200: Deleted})
    async def delete_mcp_server(server_id: str) -> Response:
        """Remove a server: its connection closes and its tools are gone."""
        await servers().delete(server_id, actor=principal().key_id)
        return json_response(to_json(Deleted(id=server_id, object="mcp_server", deleted=True)))

    @routes.add("/v1/mcp/servers/<server_id>/toggle", ["POST"], "admin", answers={200: McpServer})
    async def toggle_mcp_server(server_id: str) -> Response:
        """Enable a disabled server or disable an enabled one (its tools go while it is off)."""
        mcp = servers()
        config = mcp.get(server_id).config
        flipped = msgspec.structs.replace(config, enabled=not config.enabled)
        return answer(await mcp.update(server_id, flipped, actor=principal().key_id))

    @routes.add("/v1/mcp/servers/<server_id>/restart", ["POST"], "admin", answers={200: McpServer})
    async def restart_mcp_server(server_id: str) -> Response:
        """Close the connection (a stdio server's process ends) and connect again."""
        return answer(await servers().restart(server_id))

    @routes.add(
        "/v1/mcp/servers/<server_id>/stderr", ["GET"], "admin", answers={200: McpServerStderr}
    )
    async def mcp_server_stderr(server_id: str) -> Response:
        """What a stdio server wrote to stderr lately (the last 64 KiB)."""
        text = servers().stderr(server_id)
        return json_response(
            to_json(McpServerStderr(id=server_id, object="mcp_server.stderr", stderr=text))
        )
