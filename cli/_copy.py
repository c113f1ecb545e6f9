"""`cuelog copy SRC DST`: move a whole log between backends and verify the result.

SRC and DST are data dirs or log URLs (`postgresql://…`); DST is a new or empty data dir or an
empty database. The copy keeps the log id and every record's bytes, so its hashes, exports and
anchors are the source's.
"""

from __future__ import annotations

import sys
import time

import click
import trio

from cuelog.cli._location import Location, LogLocationType, shown
from cuelog.runtime import LogError, copy_log, parse_log_location

EXIT_OK, EXIT_TAMPERED, EXIT_FAILED = 0, 1, 2


def run_copy(source: Location, dest: str) -> int:
    started = time.perf_counter()
    try:
        parse_log_location(dest)
        head, report = trio.run(copy_log, source, dest)
    except (LogError, OSError) as exc:
        click.echo(f"cuelog copy: cannot copy {shown(source)}: {exc}", err=True)
        return EXIT_FAILED
    if not report.ok:
        print(f"TAMPERED copy at seq {report.first_bad_seq}: {report.reason}")
        return EXIT_TAMPERED
    seconds = time.perf_counter() - started
    print(
        f"ok: {report.checked:,} events copied and verified in {seconds:.2f} s; "
        f"head seq {head.seq} {head.hash.hex()} -> {shown(dest)}"
    )
    return EXIT_OK


@click.command("copy")
@click.argument("source", metavar="SRC", type=LogLocationType())
@click.argument("dest", metavar="DST")
def copy_command(source: Location, dest: str) -> None:
    """Copy the log at SRC into DST (an empty data dir or PostgreSQL database), then verify it.

    Exit 0: copied, verified, same head as the source. Exit 1: the copy fails verification.
    Exit 2: cannot copy (DST not empty, unreachable, …).
    """
    sys.exit(run_copy(source, dest))
