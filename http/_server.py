"""Run the HTTP facade on Hypercorn's trio worker, with graceful shutdown on SIGTERM/SIGINT."""

from __future__ import annotations

import ipaddress
import signal
from pathlib import Path

import msgspec
import structlog
import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

from cuelog.http._app import create_app
from cuelog.runtime import CuelogError

log = structlog.get_logger("cuelog.server")


class ServerSettings(msgspec.Struct, frozen=True, kw_only=True):
    """What `cuelog serve` needs to start."""

    host: str = "127.0.0.1"
    port: int = 8088
    data_dir: Path = Path("data")
    api_key: str | None = None
    graceful_timeout: float = 10.0


class ConfigError(CuelogError):
    """A setting is invalid; the message names it."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_settings(settings: ServerSettings) -> None:
    if settings.api_key is None and not is_loopback(settings.host):
        raise ConfigError(
            f"server.host: refusing to bind {settings.host} without server.api_key; "
            "set an API key or bind 127.0.0.1"
        )
    if not 0 <= settings.port <= 65535:
        raise ConfigError(f"server.port: {settings.port} is not a TCP port")


def hypercorn_config(settings: ServerSettings) -> Config:
    config = Config()
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    config.bind = [f"{host}:{settings.port}"]
    config.graceful_timeout = settings.graceful_timeout
    config.accesslog = None
    config.errorlog = None
    config.keep_alive_timeout = 75
    return config


async def serve(
    settings: ServerSettings,
    *,
    shutdown: trio.Event | None = None,
    handle_signals: bool = True,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until `shutdown` is set (or SIGTERM/SIGINT arrives); report the bound URLs."""
    check_settings(settings)
    stop = trio.Event() if shutdown is None else shutdown
    app = create_app()
    async with trio.open_nursery() as nursery:
        if handle_signals:
            nursery.start_soon(_stop_on_signals, stop)
        async with trio.open_nursery() as server:
            binds = await server.start(
                lambda task_status: hypercorn_serve(
                    app,
                    hypercorn_config(settings),
                    shutdown_trigger=stop.wait,
                    task_status=task_status,
                )
            )
            log.info("serving", urls=binds, data_dir=str(settings.data_dir))
            task_status.started(binds)
        # Hypercorn has drained its connections; only the signal watcher is left.
        nursery.cancel_scope.cancel()
    log.info("stopped")


async def _stop_on_signals(stop: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            stop.set()
            return
