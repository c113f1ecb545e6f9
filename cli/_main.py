"""The `cuelog` command line."""

from __future__ import annotations

import functools
import sys
from importlib.metadata import version
from pathlib import Path

import click
import trio

from cuelog.cli._keys import keys
from cuelog.cli._location import Location, LogLocationType
from cuelog.runtime import CuelogError, configure_logging


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version("cuelog"), prog_name="cuelog")
def main() -> None:
    """cuelog: an event-sourced actor runtime for LLM agents.

    Every agent, session, run and tool is an actor; every state change is an event in one
    append-only, hash-chained log. Start with `cuelog serve`, then
    `curl http://127.0.0.1:8088/health`.
    """
    configure_logging(level="warning")  # `serve` raises it to info


@main.command("serve")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML config file (default: ./cuelog.toml if present). See docs/configuration.md.",
)
@click.option("--host", default=None, help="Address to bind [server.host, 127.0.0.1].")
@click.option("--port", default=None, type=int, help="Port to bind, 0 for any [server.port, 8088].")
@click.option(
    "--data-dir",
    default=None,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the event log lives [log.data_dir, ./data].",
)
@click.option(
    "--log",
    "log_url",
    default=None,
    help="The log as a location instead of --data-dir: lmdb:///path or memory: [log.url].",
)
@click.option("--api-key", default=None, help="Static admin API key [server.api_key].")
@click.option(
    "--node",
    default=None,
    help="Run as this node of a cluster sharing one PostgreSQL log [cluster.node].",
)
def serve_command(
    config_file: Path | None,
    host: str | None,
    port: int | None,
    data_dir: Path | None,
    log_url: str | None,
    api_key: str | None,
    node: str | None,
) -> None:
    """Serve the HTTP API: OpenAI-compatible chat, agents, sessions, wake, runs, events.

    Settings come from the config file, then CUELOG_<SECTION>_<KEY> environment variables
    (e.g. CUELOG_SERVER_API_KEY), then these flags.
    """
    from cuelog.http.api import load_settings, serve

    configure_logging(level="info")
    try:
        settings = load_settings(
            config_file,
            flags={
                "server": {"host": host, "port": port, "api_key": api_key},
                "log": {"data_dir": data_dir, "url": log_url},
                "cluster": {"node": node},
            },
        )
        trio.run(functools.partial(serve, settings, tune_gc=True))
    except CuelogError as exc:
        click.echo(f"cuelog: {exc}", err=True)
        sys.exit(2)
    except BaseExceptionGroup as group:
        # A failure while serving (the log lost its file) arrives wrapped by the nurseries.
        error = _first_cuelog_error(group)
        if error is None:
            raise
        click.echo(f"cuelog: {error}", err=True)
        sys.exit(2)


def _first_cuelog_error(group: BaseExceptionGroup[BaseException]) -> CuelogError | None:
    for exc in group.exceptions:
        if isinstance(exc, CuelogError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _first_cuelog_error(exc)
            if found is not None:
                return found
    return None


@main.command("verify")
@click.argument("data_dir", metavar="LOG", type=LogLocationType())
@click.option(
    "--anchor-key-file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Key that sealed the log's anchor; catches rewritten or truncated logs.",
)
@click.option(
    "--anchor-file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="An anchor kept outside the data dir (the JSON POST /v1/audit/anchor answered); "
    "catches a whole data dir put back from an older copy. Needs --anchor-key-file.",
)
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=None,
    help="Worker processes that split the hashing of an LMDB log (default: one per CPU for "
    "logs of 100,000 events or more, else 1).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify_command(
    data_dir: Location,
    anchor_key_file: Path | None,
    anchor_file: Path | None,
    jobs: int | None,
    as_json: bool,
) -> None:
    """Verify the hash chain and indexes of a log (read-only; safe beside a running server).

    Exit 0: intact. Exit 1: tampered (the first bad seq and why). Exit 2: cannot read.
    """
    from cuelog.cli._verify import run_verify

    if anchor_file is not None and anchor_key_file is None:
        raise click.UsageError("--anchor-file needs --anchor-key-file (the key that sealed it)")
    sys.exit(run_verify(data_dir, anchor_key_file, anchor_file, as_json=as_json, jobs=jobs))


main.add_command(keys)


def _add_debug_commands() -> None:
    from cuelog.cli._inspect import (
        export_command,
        replay_command,
        rerun_command,
        state_command,
        timeline_command,
    )

    for command in (timeline_command, rerun_command, replay_command, state_command, export_command):
        main.add_command(command)


_add_debug_commands()


def _add_bench_command() -> None:
    from cuelog.cli._bench import bench_command

    main.add_command(bench_command)


_add_bench_command()


def _add_backup_command() -> None:
    from cuelog.cli._backup import backup_command

    main.add_command(backup_command)


_add_backup_command()


def _add_copy_command() -> None:
    from cuelog.cli._copy import copy_command

    main.add_command(copy_command)


_add_copy_command()


def _add_projections_command() -> None:
    from cuelog.cli._projections import projections

    main.add_command(projections)


_add_projections_command()
