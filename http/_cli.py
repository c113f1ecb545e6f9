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


@main.command("verify")
@click.argument("data_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--anchor-key-file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Key that sealed the log's anchor; catches rewritten or truncated logs.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify_command(data_dir: Path, anchor_key_file: Path | None, as_json: bool) -> None:
    """Verify the hash chain and indexes of a log (read-only; safe beside a running server).

    Exit 0: intact. Exit 1: tampered (the first bad seq and why). Exit 2: cannot read.
    """
    from cuelog.http._verify_cli import run_verify

    sys.exit(run_verify(data_dir, anchor_key_file, as_json=as_json))
