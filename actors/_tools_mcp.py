"""MCP servers as tool sources: their configs are events on stream `mcp`, their connections live
in this process.

Each enabled server has a supervisor task: connect (stdio or streamable HTTP), list the tools,
then ping now and then; a server that exits, hangs or refuses is reconnected with exponential
backoff. Its tools are named `<server>.<tool>`; while it is down they fail with a ToolError
instead of hanging. A stdio server's stderr is kept, the last `STDERR_BYTES` of it.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Final, Literal, final

import msgspec
import structlog
import trio
from cryptography.exceptions import InvalidTag

from cuelog.actors._errors import Conflict, Invalid, NotFound, ToolError
from cuelog.actors._events import (
    McpServerConfig,
    McpServerDeleted,
    McpServerSaved,
)
from cuelog.actors._names import MCP_STREAM
from cuelog.actors._sealed import DataKeys, open_sealed, seal
from cuelog.actors._shared_stream import SharedStream
from cuelog.runtime import EventLog

log = structlog.get_logger("cuelog.mcp")

SERVER_ID_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,32}")
SERVER_ID_RULE: Final = "1-32 letters, digits, _ or - (no dots: a tool is named server.tool)"
STDERR_BYTES: Final = 64 * 1024
MAX_SERVERS: Final = 64
MAX_TOOLS_PER_SERVER: Final = 256
MAX_OUTPUT_CHARS: Final = 4 * 1024 * 1024  # a tool answer past this is cut, and says so

McpStatus = Literal["disabled", "connecting", "connected", "failed"]


class _McpSecrets(msgspec.Struct, frozen=True):
    env: dict[str, str]
    headers: dict[str, str]


_secrets_decoder = msgspec.json.Decoder(_McpSecrets)


class McpServerState(msgspec.Struct, frozen=True, kw_only=True):
    """A server's config and how its connection is doing."""

    id: str
    config: McpServerConfig
    status: McpStatus
    tools: list[str]  # namespaced: server.tool
    last_error: str | None
    restarts: int  # connections made after the first one
    pid: int | None  # a stdio server's process id while connected


@final
class McpTool:
    """One tool of an MCP server, called through the server's live connection."""

    def __init__(self, server: _Server, name: str, description: str, schema: dict[str, Any]):
        self._server = server
        self.remote_name = name
        self.name = f"{server.id}.{name}"
        self.description = description
        self.parameters = schema

    async def run(self, args: dict[str, Any]) -> str:
        return await self._server.call(self.remote_name, args)


class _Connected(msgspec.Struct):
    client: Any  # mcp.Client
    pid: int | None


class _Server:
    """One server's config, tools and supervisor."""

    def __init__(self, server_id: str, config: McpServerConfig, servers: McpServers) -> None:
        self.id = server_id
        self.config = config
        self._servers = servers
        self.tools: dict[str, McpTool] = {}
        self.status: McpStatus = "disabled"
        self.last_error: str | None = None
        self.restarts = 0
        self.connections = 0
        self.stderr = bytearray()
        self.connected: _Connected | None = None
        self.scope: trio.CancelScope | None = None
        self._poke = trio.Event()
        self._relist = False
        self.locked: str | None = None  # why its secrets cannot be opened; it is not started

    def state(self) -> McpServerState:
        return McpServerState(
            id=self.id,
            config=self.config,
            status=self.status,
            tools=sorted(self.tools),
            last_error=self.last_error,
            restarts=self.restarts,
            pid=self.connected.pid if self.connected else None,
        )

    def poke(self, *, relist: bool = False) -> None:
        self._relist = self._relist or relist
        self._poke.set()

    # -- calls ---------------------------------------------------------------------------------

    async def call(self, name: str, args: dict[str, Any]) -> str:
        connected = self.connected
        if connected is None:
            why = f": {self.last_error}" if self.last_error else ""
            raise ToolError(f"{self.id}.{name}: MCP server {self.id!r} is {self.status}{why}")
        try:
            result = await connected.client.call_tool(name, args)
        except Exception as exc:  # the connection broke under the call
            self.poke()
            raise ToolError(f"{self.id}.{name}: MCP server {self.id!r} failed: {exc}") from None
        text = _result_text(result.content)
        if len(text) > MAX_OUTPUT_CHARS:
            text = text[:MAX_OUTPUT_CHARS] + f"\n[cut at {MAX_OUTPUT_CHARS} characters]"
        if result.is_error:
            raise ToolError(f"{self.id}.{name}: {text or 'the MCP server reported an error'}")
        if not text and result.structured_content is not None:
            return msgspec.json.encode(result.structured_content).decode()
        return text

    # -- supervision ---------------------------------------------------------------------------

    async def supervise(self) -> None:
        """Connect, and reconnect with backoff, until cancelled."""
        settings = self._servers
        backoff = settings.backoff_min
        while True:
            self.status = "connecting"
            connections = self.connections
            try:
                await self._connect_and_watch()
            except Exception as exc:
                self.last_error = _describe(exc)
            self.connected = None
            self.status = "failed"
            if self.last_error is None:
                self.last_error = "the connection ended"
            log.warning("mcp_server_down", server=self.id, error=self.last_error, retry_in=backoff)
            if self.connections > connections:
                backoff = settings.backoff_min  # it worked for a while: start again from short
            await trio.sleep(backoff)
            backoff = min(backoff * 2, settings.backoff_max)

    async def _connect_and_watch(self) -> None:
        from mcp import Client

        async def on_message(message: Any) -> None:
            if getattr(message, "method", None) == "notifications/tools/list_changed":
                self.poke(relist=True)

        failure: Exception | None = None
        async with trio.open_nursery() as nursery:
            transport, errlog, pid_of = self._transport(nursery)
            deadline = trio.current_time() + self._servers.connect_timeout
            try:
                with trio.CancelScope(deadline=deadline) as connecting:
                    async with Client(
                        transport, message_handler=on_message, mode="legacy", cache=None
                    ) as client:
                        if errlog is not None:
                            errlog.close()  # the child holds its own copy of the pipe
                            errlog = None
                        self.connected = _Connected(client=client, pid=pid_of())
                        await self._list_tools(client)
                        connecting.deadline = math.inf
                        if self.connections:
                            self.restarts += 1
                        self.connections += 1
                        self.status = "connected"
                        self.last_error = None
                        log.info("mcp_server_connected", server=self.id, tools=len(self.tools))
                        await self._watch(client)
            except Exception as exc:  # kept until stderr is read, then raised
                failure = exc
            finally:
                self.connected = None
                if errlog is not None:
                    errlog.close()
                # Let the stderr reader take what the process wrote last (it ends at EOF).
                nursery.cancel_scope.deadline = trio.current_time() + 1
            if connecting.cancelled_caught:
                self.last_error = "the server did not answer in time"
        if failure is not None:
            raise failure

    async def _watch(self, client: Any) -> None:
        settings = self._servers
        while True:
            with trio.move_on_after(settings.ping_interval):
                await self._poke.wait()
            self._poke = trio.Event()
            with trio.fail_after(settings.ping_timeout):
                if self._relist:
                    self._relist = False
                    await self._list_tools(client)
                else:
                    # The session's ping: connections use the initialize handshake
                    # (mode="legacy"), where ping is part of the protocol.
                    await client.session.send_ping()

    async def _list_tools(self, client: Any) -> None:
        tools: dict[str, McpTool] = {}
        cursor: str | None = None
        while len(tools) < MAX_TOOLS_PER_SERVER:
            listed = await client.list_tools(cursor=cursor)
            for tool in listed.tools[: MAX_TOOLS_PER_SERVER - len(tools)]:
                mcp_tool = McpTool(self, tool.name, tool.description or "", tool.input_schema)
                tools[mcp_tool.name] = mcp_tool
            cursor = listed.next_cursor
            if not cursor:
                break
        self.tools = tools

    def _transport(self, nursery: trio.Nursery) -> tuple[Any, Any, Any]:
        config = self.config
        if config.transport == "http":
            from mcp.client.streamable_http import streamable_http_client
            from mcp.shared._httpx_utils import create_mcp_http_client

            client = create_mcp_http_client(headers=dict(config.headers))
            assert config.url is not None
            return streamable_http_client(config.url, http_client=client), None, lambda: None
        from mcp.client.stdio import StdioServerParameters, stdio_client

        read_fd, write_fd = os.pipe()
        nursery.start_soon(self._keep_stderr, read_fd)
        errlog = os.fdopen(write_fd, "w")
        assert config.command is not None
        params = StdioServerParameters(command=config.command, args=config.args, env=config.env)
        transport = stdio_client(params, errlog=errlog)
        return transport, errlog, lambda: _stdio_pid(transport)

    async def _keep_stderr(self, read_fd: int) -> None:
        async with trio.lowlevel.FdStream(read_fd) as stream:
            while chunk := await stream.receive_some(16384):
                self.stderr += chunk
                del self.stderr[:-STDERR_BYTES]


def _stdio_pid(transport: Any) -> int | None:
    """The child's pid, read from the stdio transport's generator frame (the SDK does not
    expose it); None if it cannot be found."""
    frame = getattr(getattr(transport, "gen", None), "ag_frame", None)
    process = frame.f_locals.get("process") if frame is not None else None
    pid = getattr(process, "pid", None)
    return pid if isinstance(pid, int) else None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        return _describe(exc.exceptions[0])
    if isinstance(exc, trio.TooSlowError):
        return "the server did not answer in time"
    text = str(exc) or type(exc).__name__
    return text[:500]


def _result_text(content: list[Any]) -> str:
    parts: list[str] = []
    for item in content:
        text = getattr(item, "text", None)
        if isinstance(text, str):
            parts.append(text)
        else:
            parts.append(item.model_dump_json(by_alias=True, exclude_none=True))
    return "\n".join(parts)


def check_server_config(config: McpServerConfig) -> None:
    """Refuse a config that cannot work, naming the field."""
    if config.transport == "stdio":
        if not config.command:
            raise Invalid("a stdio server needs a command", param="command")
        if config.url is not None or config.headers:
            raise Invalid("url and headers are for http servers", param="url")
    else:
        if not config.url or not config.url.startswith(("http://", "https://")):
            raise Invalid("an http server needs an http:// or https:// url", param="url")
        if config.command is not None or config.args or config.env:
            raise Invalid("command, args and env are for stdio servers", param="command")
    if not (math.isfinite(config.timeout) and 0 < config.timeout <= 3600):
        raise Invalid("timeout must be more than 0 and at most 3600 seconds", param="timeout")


@final
class McpServers:
    """Every configured MCP server, folded from stream `mcp`, and their live connections; a
    tool source for the `ToolRegistry`."""

    def __init__(
        self,
        event_log: EventLog,
        key_file: DataKeys,
        *,
        ping_interval: float = 15.0,
        ping_timeout: float = 10.0,
        connect_timeout: float = 30.0,
        backoff_min: float = 0.5,
        backoff_max: float = 30.0,
    ) -> None:
        self._log = event_log
        self._keys = key_file
        self._key_ids: dict[str, str] = {}  # server id -> the data key sealing its secrets
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.connect_timeout = connect_timeout
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self._servers: dict[str, _Server] = {}
        self._nursery: trio.Nursery | None = None
        self._stream = SharedStream(event_log, MCP_STREAM, self._apply)
        self._stream.catch_up()

    def catch_up(self) -> None:
        """Take up what was recorded since (through any process sharing the log)."""
        self._stream.catch_up()

    async def follow(self) -> None:
        """Take up changes other processes record, as they come (until cancelled)."""
        await self._stream.follow()

    def _apply(self, event: object) -> None:
        """Bring the servers up to a recorded change: a saved config replaces the server's
        connection with one under the new config (once `running`), a deletion ends it."""
        if isinstance(event, McpServerSaved):
            old = self._servers.get(event.server_id)
            server = self._opened(event)
            if old is not None:
                self._stop(old)
                server.stderr = old.stderr
            self._servers[event.server_id] = server
            self._start(server)
        elif isinstance(event, McpServerDeleted):
            gone = self._servers.pop(event.server_id, None)
            if gone is not None:
                self._stop(gone)
            self._key_ids.pop(event.server_id, None)

    def _opened(self, event: McpServerSaved) -> _Server:
        """The server of a recorded config, its secrets unsealed with their data key."""
        config, locked = event.config, None
        self._key_ids.pop(event.server_id, None)
        if event.key_id:
            self._key_ids[event.server_id] = event.key_id
            key = self._keys.get(event.key_id)
            try:
                if key is None:
                    raise ValueError("missing")
                plain = open_sealed(key, f"mcp:{event.server_id}", event.key_id, event.sealed)
                opened = _secrets_decoder.decode(plain)
                config = msgspec.structs.replace(config, env=opened.env, headers=opened.headers)
            except (InvalidTag, ValueError, msgspec.DecodeError):
                locked = (
                    "its env and header values cannot be opened with the key file; "
                    "set them again with PATCH"
                )
        server = _Server(event.server_id, config, self)
        server.locked = locked
        return server

    async def _record(
        self,
        server_id: str,
        config: McpServerConfig,
        actor: str | None,
        decide: Callable[[], object],
    ) -> None:
        """Append the config with its env and header values sealed under a new data key, once
        `decide` (on the state caught up to) lets it; the server's previous key is destroyed
        once the new config is in the log."""
        self._stream.catch_up()
        decide()  # refused before a key is made
        key_id, sealed = "", ""
        if config.env or config.headers:
            key_id, key = self._keys.add()
            secrets = _McpSecrets(env=config.env, headers=config.headers)
            sealed = seal(key, f"mcp:{server_id}", key_id, msgspec.json.encode(secrets))
        blank = msgspec.structs.replace(
            config, env=dict.fromkeys(config.env, ""), headers=dict.fromkeys(config.headers, "")
        )
        event = McpServerSaved(server_id=server_id, config=blank, key_id=key_id, sealed=sealed)

        def retired() -> str | None:
            decide()
            return self._key_ids.get(server_id)

        recorded = False
        try:
            old_key = await self._stream.record(event, retired, actor=actor)
            recorded = True
        finally:
            if not recorded and key_id:
                self._keys.destroy(key_id)
        if old_key:
            self._keys.destroy(old_key)

    # -- the tool source -----------------------------------------------------------------------

    def find(self, name: str) -> McpTool | None:
        server_id, dot, _ = name.partition(".")
        server = self._servers.get(server_id) if dot else None
        if server is None or not server.config.enabled:
            return None
        return server.tools.get(name)

    def offered(self) -> list[McpTool]:
        return [
            tool
            for server in self._servers.values()
            if server.config.enabled
            for tool in server.tools.values()
        ]

    def timeout_of(self, name: str) -> float | None:
        server = self._servers.get(name.partition(".")[0])
        return server.config.timeout if server is not None and "." in name else None

    # -- servers -------------------------------------------------------------------------------

    def all(self) -> list[McpServerState]:
        return [self._servers[key].state() for key in sorted(self._servers)]

    def get(self, server_id: str) -> McpServerState:
        return self._server(server_id).state()

    def stderr(self, server_id: str) -> str:
        return bytes(self._server(server_id).stderr).decode(errors="replace")

    def _server(self, server_id: str) -> _Server:
        server = self._servers.get(server_id)
        if server is None:
            raise NotFound(f"no MCP server {server_id!r}")
        return server

    async def create(
        self, server_id: str, config: McpServerConfig, *, actor: str | None = None
    ) -> McpServerState:
        if not SERVER_ID_RE.fullmatch(server_id):
            raise Invalid(f"name must be {SERVER_ID_RULE}", param="name")
        check_server_config(config)

        def decide() -> None:
            if server_id in self._servers:
                raise Conflict(f"MCP server {server_id!r} exists")
            if len(self._servers) >= MAX_SERVERS:
                raise Conflict(f"at most {MAX_SERVERS} MCP servers")

        await self._record(server_id, config, actor, decide)
        return self._server(server_id).state()

    async def update(
        self, server_id: str, config: McpServerConfig, *, actor: str | None = None
    ) -> McpServerState:
        """Replace a server's config and reconnect it under the new one."""
        self._server(server_id)
        check_server_config(config)
        await self._record(server_id, config, actor, lambda: self._server(server_id))
        return self._server(server_id).state()

    async def delete(self, server_id: str, *, actor: str | None = None) -> None:
        event = McpServerDeleted(server_id=server_id)

        def retired() -> str | None:
            self._server(server_id)
            return self._key_ids.get(server_id)

        key_id = await self._stream.record(event, retired, actor=actor)
        if key_id:
            self._keys.destroy(key_id)  # what the log keeps of its secrets can't be opened now

    async def restart(self, server_id: str) -> McpServerState:
        """Drop the connection (a stdio server's process ends) and connect again now."""
        server = self._server(server_id)
        self._stop(server)
        self._start(server)
        return server.state()

    def _start(self, server: _Server) -> None:
        if server.locked is not None:
            server.status = "failed"
            server.last_error = server.locked
            return
        if not server.config.enabled:
            server.status = "disabled"
            server.tools = {}
            return
        if self._nursery is None:
            return  # started with the rest when `run` begins
        server.status = "connecting"
        server.scope = trio.CancelScope()
        self._nursery.start_soon(self._supervise, server, server.scope)

    @staticmethod
    async def _supervise(server: _Server, scope: trio.CancelScope) -> None:
        with scope:
            await server.supervise()

    @staticmethod
    def _stop(server: _Server) -> None:
        if server.scope is not None:
            server.scope.cancel()
            server.scope = None
        server.connected = None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[McpServers]:
        """Connect every enabled server; on exit, close every connection."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for server in self._servers.values():
                self._start(server)
            try:
                yield self
            finally:
                self._nursery = None
                nursery.cancel_scope.cancel()
