"""`cuelog backup LOG DEST`: a consistent, verified copy of a log, beside a running server.

The log's `copy_to` writes the log exactly as it was at one commit (LMDB: inside one read
transaction, free pages left out). The copy is then verified on its own.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click
import trio

from cuelog.cli._location import LOG, Location, shown
from cuelog.runtime import LogError, VerifyReport, open_event_log

EXIT_OK, EXIT_TAMPERED, EXIT_FAILED = 0, 1, 2


def _fail(message: str) -> int:
    click.echo(f"cuelog backup: {message}", err=True)
    return EXIT_FAILED


async def _copy_and_verify(data_dir: Location, dest: Path) -> VerifyReport:
    # A read-only open takes a reader slot, never the writer lock, so the server keeps appending
    # while the copy pins one commit.
    async with open_event_log(data_dir, readonly=True) as log:
        await log.copy_to(dest)
    async with open_event_log(dest, readonly=True) as copy:
        return await copy.verify()


def run_backup(data_dir: Location, dest: Path) -> int:
    if isinstance(data_dir, Path) and not (data_dir / "data.mdb").is_file():
        return _fail(f"no cuelog log at {data_dir} (data.mdb is missing)")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        return _fail(f"{dest} exists and is not an empty directory; choose a new destination")
    started = time.perf_counter()
    dest.mkdir(parents=True, exist_ok=True)
    try:
        report = trio.run(_copy_and_verify, data_dir, dest)
    except (LogError, OSError) as exc:
        return _fail(f"copy of {shown(data_dir)} into {dest} failed: {exc}")
    seconds = time.perf_counter() - started
    size = (dest / "data.mdb").stat().st_size
    if not report.ok:
        print(f"TAMPERED copy at seq {report.first_bad_seq}: {report.reason}")
        return EXIT_TAMPERED
    print(f"ok: {report.checked:,} events, {size:,} bytes, verified, in {seconds:.2f} s -> {dest}")
    return EXIT_OK


@click.command("backup")
@LOG
@click.argument("dest", type=click.Path(path_type=Path))
def backup_command(data_dir: Location, dest: Path) -> None:
    """Copy a log into DEST (new or empty) while the server runs, then verify the copy.

    Exit 0: copied and intact. Exit 1: the copy fails verification. Exit 2: cannot copy.
    Restore: stop the server, put DEST in place of the data dir, start it.
    """
    sys.exit(run_backup(data_dir, dest))
