"""`cuelog projections status|rebuild`: the read models kept beside a log."""

from __future__ import annotations

import sys

import click
import msgspec
import trio
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

from cuelog.actors import NotFound, ReadModels
from cuelog.cli._location import LOG, Location
from cuelog.runtime import (
    CuelogError,
    ProjectionFailed,
    ProjectionStatus,
    open_event_log,
    open_projection_store,
)

EXIT_OK, EXIT_FAILED, EXIT_UNREADABLE = 0, 1, 2


@click.group("projections")
def projections() -> None:
    """Read models folded from the log (runs list, usage): where they are, and rebuilding them.

    They live in LOG/projections beside an LMDB log, or in tables of a PostgreSQL log's
    database; both commands are safe beside a running server.
    """


def _describe(status: ProjectionStatus) -> str:
    where = f"at seq {status.checkpoint:,} of {status.head_seq:,} (lag {status.lag:,})"
    if status.failed_seq is not None:
        return f"{status.name}: FAILED at seq {status.failed_seq}: {status.error}; {where}"
    return f"{status.name}: {where}"


@projections.command("status")
@LOG
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per projection.")
def status_command(data_dir: Location, as_json: bool) -> None:
    """Each projection's checkpoint, the log's head and the lag; exit 1 if one has failed."""

    async def read() -> list[ProjectionStatus]:
        async with (
            open_event_log(data_dir, readonly=True) as log,
            open_projection_store(data_dir) as store,
        ):
            return ReadModels(log, store).statuses()

    try:
        statuses = trio.run(read)
    except CuelogError as exc:
        click.echo(f"cuelog projections: {exc}", err=True)
        sys.exit(EXIT_UNREADABLE)
    for status in statuses:
        click.echo(msgspec.json.encode(status).decode() if as_json else _describe(status))
    sys.exit(EXIT_FAILED if any(s.failed_seq is not None for s in statuses) else EXIT_OK)


@projections.command("rebuild")
@click.argument("name")
@LOG
def rebuild_command(name: str, data_dir: Location) -> None:
    """Drop projection NAME's state and fold the whole log into it again, from seq 0.

    A server running beside it keeps answering (from the state as it is rebuilt) and follows
    on from where the rebuild got to. Exit 1 if the projection fails on an event.
    """
    err = Console(stderr=True)
    show_progress = sys.stderr.isatty()

    async def rebuild() -> int:
        async with (
            open_event_log(data_dir, readonly=True) as log,
            open_projection_store(data_dir) as store,
        ):
            runner = ReadModels(log, store).runner(name)
            if not show_progress:
                return (await runner.rebuild()).seq
            with Progress(
                f"rebuilding {name}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=err,
                transient=True,
            ) as bar:
                task = bar.add_task(name, total=log.head().seq)
                checkpoint = await runner.rebuild(
                    lambda done, total: bar.update(task, completed=done, total=total)
                )
                return checkpoint.seq

    try:
        seq = trio.run(rebuild)
    except ProjectionFailed as exc:
        click.echo(f"cuelog projections: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    except (NotFound, CuelogError) as exc:
        click.echo(f"cuelog projections: {exc}", err=True)
        sys.exit(EXIT_UNREADABLE)
    click.echo(f"rebuilt {name}: {seq:,} events applied")
