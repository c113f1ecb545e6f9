"""The `cuelog` command line."""

from __future__ import annotations

import sys
from importlib.metadata import version
from pathlib import Path

import click
import trio

from cuelog.http._server import ServerSettings, serve
from cuelog.runtime import CuelogError, configure_logging


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version("cuelog"), prog_name="cuelog")
def main() -> None:
    """cuelog: an event-sourced actor runtime for LLM agents.

    Every agent, session, run and tool is an actor; every state change is an event in one
    append-only, hash-chained log. Start with `cuelog serve`, then
    `curl http://127.0.0.1:8088/health`.
    """


@main.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, envvar="CUELOG_SERVER_HOST")
@click.option("--port", default=8088, show_default=True, type=int, envvar="CUELOG_SERVER_PORT")
@click.option(
    "--data-dir",
    default="data",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    envvar="CUELOG_LOG_DATA_DIR",
    help="Where the event log lives.",
)
@click.option("--api-key", default=None, envvar="CUELOG_SERVER_API_KEY", help="Static admin key.")
def serve_command(host: str, port: int, data_dir: Path, api_key: str | None) -> None:
    """Serve the HTTP API (OpenAI-compatible chat, agents, sessions, runs, events)."""
    configure_logging()
    settings = ServerSettings(host=host, port=port, data_dir=data_dir, api_key=api_key)
    try:
        trio.run(serve, settings)
    except CuelogError as exc:
        click.echo(f"cuelog: {exc}", err=True)
        sys.exit(2)
