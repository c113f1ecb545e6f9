"""Run the HTTP facade on Hypercorn's trio worker, with graceful shutdown on SIGTERM/SIGINT.

Start-up order: bind the port (a taken port fails before anything is created), open the log,
open the agent runtime (seeds agents, recovers interrupted runs), then listen. Shutdown runs it
backwards: stop accepting connections, let open connections drain within
`server.graceful_timeout`, stop the actors, and let the log commit what is queued.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import structlog
import trio
from hypercorn.config import Config

from cuelog.actors import (
    AgentSpec,
    Budgets,
    BuiltinTools,
    DataKeys,
    Domain,
    EchoModel,
    HttpFetchConfig,
    Invalid,
    KeyFile,
    McpServers,
    ModelProvider,
    OpenAIConfig,
    OpenAIModel,
    Providers,
    RunSettings,
    SharedKeys,
    ToolRegistry,
    ToolsConfig,
    WebhookSettings,
    open_domain,
    open_loops,
    open_webhooks,
)
from cuelog.http._app import create_app
from cuelog.http._auth import Authenticator
from cuelog.http._config import ConfigError, Settings, cluster_config
from cuelog.http._connections import connection_cap, raise_fd_limit, serve_http
from cuelog.http._forward import open_forwarder
from cuelog.http._otel import open_otel_export
from cuelog.http._services import Services
from cuelog.runtime import (
    ActorConfig,
    EventLog,
    open_event_log,
    open_projection_store,
    shared_data_keys,
    tune_gc_for_serving,
)

log = structlog.get_logger("cuelog.server")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_settings(settings: Settings) -> None:
    server = settings.server
    if server.api_key is None and not is_loopback(server.host):
        raise ConfigError(
            f"server.host: refusing to bind {server.host} without server.api_key; "
            "set an API key or bind 127.0.0.1"
        )


def read_anchor_key(settings: Settings) -> bytes | None:
    path = settings.log.anchor_key_file
    if path is None:
        return None
    try:
        key = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"log.anchor_key_file: cannot read {path}: {exc.strerror}") from None
    if len(key) < 16:
        raise ConfigError("log.anchor_key_file: the key must be at least 16 bytes")
    return key


class _Config(Config):
    """Hypercorn's config, plus TCP_USER_TIMEOUT on the listening sockets (inherited by every
    accepted connection): the kernel drops a connection whose client has taken no data for
    `stall_timeout` seconds. Hypercorn shields its socket writes from cancellation, so only the
    kernel can end a write that a stalled reader blocks."""

    stall_timeout: float = 0.0

    def create_sockets(self) -> Any:
        sockets = super().create_sockets()
        if self.stall_timeout > 0 and hasattr(socket, "TCP_USER_TIMEOUT"):
            for sock in [*sockets.insecure_sockets, *sockets.secure_sockets]:
                sock.setsockopt(
                    socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(self.stall_timeout * 1000)
                )
        return sockets


def hypercorn_config(settings: Settings) -> Config:
    config = _Config()
    config.stall_timeout = settings.server.stall_timeout
    host = settings.server.host
    host = f"[{host}]" if ":" in host else host
    config.bind = [f"{host}:{settings.server.port}"]
    config.graceful_timeout = settings.server.graceful_timeout
    config.accesslog = None
    config.errorlog = None
    config.keep_alive_timeout = settings.server.keep_alive_timeout
    return config


def bind_sockets(settings: Settings, config: Config) -> list[socket.socket]:
    """Bind the listening sockets (not listening yet), so a taken port fails before anything
    else is opened or created."""
    try:
        return list(config.create_sockets().insecure_sockets)
    except OSError as exc:
        server = settings.server
        raise ConfigError(
            f"server.port: cannot bind {server.host}:{server.port}: {exc.strerror or exc}"
        ) from None


def model_providers(settings: Settings) -> dict[str, ModelProvider]:
    providers: dict[str, ModelProvider] = {"echo": EchoModel()}
    model = settings.model
    if model.base_url:
        providers["openai"] = OpenAIModel(
            OpenAIConfig(base_url=model.base_url, api_key_env=model.api_key_env)
        )
    return providers


def seeded_agents(settings: Settings) -> dict[str, AgentSpec]:
    """`[agents.<id>]` from the config, with `default` on the configured model."""
    default = AgentSpec(
        name="default",
        provider=settings.model.provider,
        model=settings.model.name,
        tools=["clock", "calculator"],
    )
    return {"default": default, **settings.agents}


def provider_key_file(settings: Settings) -> Path:
    """Where the provider registry's data keys are kept: `providers.key_file`, else a file in
    the data dir (never in the log, so neither exports nor copies of the log carry it)."""
    return settings.providers.key_file or settings.log.data_dir / "provider-keys.json"


@asynccontextmanager
async def open_data_keys(settings: Settings, event_log: EventLog) -> AsyncIterator[DataKeys]:
    """The data keys that seal provider, MCP and webhook secrets: the key file, or with a
    PostgreSQL log the table beside it (every node of a cluster opens what any node sealed),
    into which the key file's keys are moved first."""
    try:
        key_file = KeyFile(provider_key_file(settings))
    except Invalid as exc:
        raise ConfigError(f"providers.key_file: {exc}") from None
    store = shared_data_keys(event_log)
    if store is None:
        yield key_file
        return
    shared = SharedKeys(store)
    moved = shared.take_over(key_file)
    if moved:
        log.info("data keys moved into the log's database", count=moved, key_file=key_file.path)
    yield shared


def tools_config(settings: Settings) -> ToolsConfig:
    """The built-in tools as `[server] enabled_tools` and `[tools]` set them; the files
    sandbox is made if missing."""
    section = settings.tools
    files_root = None
    if "files" in settings.server.enabled_tools and section.files_root is None:
        raise ConfigError("tools.files_root: required when server.enabled_tools lists files")
    if section.files_root is not None:
        try:
            section.files_root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"tools.files_root: cannot make {section.files_root}: {exc.strerror}"
            ) from None
        files_root = str(section.files_root)
    return ToolsConfig(
        enabled=settings.server.enabled_tools,
        files_root=files_root,
        files_max_bytes=section.files_max_bytes,
        files_quota_bytes=section.files_quota_bytes,
        http_fetch=HttpFetchConfig(allow_hosts=list(section.http_fetch_allow_hosts)),
    )


def webhook_settings(settings: Settings) -> WebhookSettings:
    section = settings.webhooks
    return WebhookSettings(
        secret=section.secret,
        allow_private=section.allow_private,
        retry_window=section.retry_window,
        backoff_base=section.backoff_base,
        backoff_max=section.backoff_max,
        timeout=section.timeout,
    )


async def serve(
    settings: Settings,
    *,
    shutdown: trio.Event | None = None,
    handle_signals: bool = True,
    tune_gc: bool = False,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until `shutdown` is set (or SIGTERM/SIGINT arrives); report the bound URLs.

    With `tune_gc` (a process that only serves, as `cuelog serve`), what start-up built is frozen
    out of the garbage collector and young collections are made rarer, once the server listens.
    """
    check_settings(settings)
    fd_limit = raise_fd_limit()
    max_connections = connection_cap(settings.server.max_connections, fd_limit)
    config = hypercorn_config(settings)
    sockets = bind_sockets(settings, config)
    try:
        await _serve(
            settings,
            config,
            sockets,
            max_connections,
            shutdown,
            handle_signals,
            tune_gc,
            task_status,
        )
    finally:
        for sock in sockets:
            sock.close()


async def _serve(
    settings: Settings,
    config: Config,
    sockets: list[socket.socket],
    max_connections: int,
    shutdown: trio.Event | None,
    handle_signals: bool,
    tune_gc: bool,
    task_status: trio.TaskStatus[list[str]],
) -> None:
    stop = trio.Event() if shutdown is None else shutdown
    tools_settings = tools_config(settings)
    tools = ToolRegistry.builtins(tools_settings)
    run_settings = RunSettings(
        providers=model_providers(settings),
        tools=tools,
        auto_approve=settings.server.auto_approve,
        content_threshold=settings.log.content_threshold,
    )
    async with (
        open_event_log(
            settings.log.url or settings.log.data_dir,
            sync=settings.log.sync,
            max_map_size=settings.log.max_size,
            max_event_bytes=settings.log.max_event_bytes,
        ) as event_log,
        open_data_keys(settings, event_log) as key_file,
        open_projection_store(
            settings.log.url or settings.log.data_dir, sync=settings.log.sync
        ) as projections,
        open_domain(
            event_log,
            run_settings,
            agents=seeded_agents(settings),
            config=ActorConfig(
                max_live_actors=settings.server.max_live_actors,
                passivate_after=settings.server.passivate_after,
            ),
            cluster=cluster_config(settings, sockets[0].getsockname()[:2] if sockets else None),
            projections=projections if settings.log.read_models else None,
            projector=settings.log.projector,
        ) as domain,
        McpServers(
            event_log,
            key_file,
            ping_interval=settings.mcp.ping_interval,
            ping_timeout=settings.mcp.ping_timeout,
        ).running() as mcp,
        _budgets_checked(domain, settings),
        # In cluster mode each of these runs on one node at a time (see `LeaseTable.run_service`).
        # Until some secret (the server's, an agent's or a key's) is set, no callback can be
        # set, and the webhook sender waits without following the log.
        open_otel_export(
            settings.otel, event_log, projections, domain.system.placement
        ) as trace_export,
        open_webhooks(
            domain,
            webhook_settings(settings),
            key_file=key_file,
            leases=domain.system.placement,
        ) as webhooks,
        open_loops(
            domain,
            misfire_grace=settings.loops.misfire_grace,
            schedule=settings.loops.enabled,
            webhooks=webhooks,
            leases=domain.system.placement,
        ) as loops,
        open_forwarder(settings.cluster.node) as forwarder,
        trio.open_nursery() as nursery,
    ):
        tools.attach(mcp)
        builtin_tools = BuiltinTools(event_log, tools, tools_settings)
        keys = domain.keys
        auth = Authenticator(settings.server.api_key, keys.lookup, keys.any_issued)
        anchor_key = read_anchor_key(settings)
        services = Services(domain, event_log, settings, auth, anchor_key)
        services.read_models = domain.read_models
        services.trace_export = trace_export
        services.mcp = mcp
        services.builtin_tools = builtin_tools
        services.providers = providers = Providers(event_log, key_file, run_settings.providers)
        services.loops = loops if settings.loops.enabled else None
        services.webhooks = webhooks
        services.forwarder = forwarder
        app = create_app(services)
        if settings.cluster.node is not None:  # other nodes change these registries too
            nursery.start_soon(providers.follow, name="providers")
            nursery.start_soon(mcp.follow, name="mcp servers")
        if handle_signals:
            nursery.start_soon(_stop_on_signals, stop)
        nursery.start_soon(_end_streams_on_stop, stop, services)
        async with trio.open_nursery() as server:
            binds = await server.start(
                lambda task_status: serve_http(
                    app,
                    config,
                    sockets,
                    max_connections=max_connections,
                    max_body=settings.server.max_body_bytes,
                    shutdown_trigger=stop.wait,
                    cors_origins=settings.server.cors_origins,
                    task_status=task_status,
                )
            )
            log.info(
                "serving",
                urls=binds,
                data_dir=str(settings.log.data_dir),
                head_seq=event_log.head().seq,
                node=settings.cluster.node,
                pid=os.getpid(),
                max_connections=max_connections,
            )
            if tune_gc:
                tune_gc_for_serving()
            task_status.started(binds)
        # Hypercorn has drained its connections; only the signal watcher is left.
        nursery.cancel_scope.cancel()
    log.info("stopped")


@asynccontextmanager
async def _budgets_checked(domain: Domain, settings: Settings) -> AsyncIterator[None]:
    """Check budgets before every run the domain sends from now on (loops' fires too), against
    the spend its read models keep."""
    prices = {model: (price.input, price.output) for model, price in settings.prices.items()}
    domain.budgets = Budgets(domain.read_models, domain.keys, prices)
    try:
        yield
    finally:
        domain.budgets = None


async def _end_streams_on_stop(stop: trio.Event, services: Services) -> None:
    """On shutdown, SSE streams send a last `shutdown` event and end, so Hypercorn can drain."""
    await stop.wait()
    services.stopping = True
    services.log.end_subscriptions()


async def _stop_on_signals(stop: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            stop.set()
            return
