"""`cuelog verify`: walk a log read-only with a progress bar and report in words or JSON."""

from __future__ import annotations

import sys
from pathlib import Path

import msgspec
import trio
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

from cuelog.cli._location import Location
from cuelog.http.api import Anchored
from cuelog.runtime import (
    Anchor,
    LogError,
    LogFormatError,
    VerifyReport,
    default_verify_jobs,
    open_event_log,
)

EXIT_OK, EXIT_TAMPERED, EXIT_UNREADABLE = 0, 1, 2


def read_anchor(path: Path) -> Anchor:
    try:
        return msgspec.json.decode(path.read_bytes(), type=Anchored).to_anchor()
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        raise LogFormatError(f"{path} is not an anchor (JSON with seq, hash, mac): {exc}") from None


def run_verify(
    data_dir: Location,
    anchor_key_file: Path | None,
    anchor_file: Path | None,
    *,
    as_json: bool,
    jobs: int | None = None,
) -> int:
    """`jobs` None: one per CPU for a large log (`default_verify_jobs`), else 1."""
    err = Console(stderr=True)
    key = anchor_key_file.read_bytes().strip() if anchor_key_file else None
    show_progress = sys.stderr.isatty() and not as_json
    try:
        anchor = read_anchor(anchor_file) if anchor_file is not None else None
        report = trio.run(_verify, data_dir, key, anchor, show_progress, jobs)
    except LogError as exc:
        err.print(f"cuelog verify: {exc}")
        return EXIT_UNREADABLE
    if as_json:
        sys.stdout.write(msgspec.json.encode(report).decode() + "\n")
    elif report.ok:
        anchored = f", anchored at seq {report.anchored_seq}" if report.anchored_seq else ""
        blobs = f", {report.content_checked:,} stored contents" if report.content_checked else ""
        print(f"ok: {report.checked:,} events{blobs}, chain and index intact{anchored}")
    elif report.bad_content is not None and report.first_bad_seq is None:
        print(f"TAMPERED content {report.bad_content}: {report.reason}")
    else:
        print(f"TAMPERED at seq {report.first_bad_seq}: {report.reason}")
    return EXIT_OK if report.ok else EXIT_TAMPERED


async def _verify(
    data_dir: Location,
    key: bytes | None,
    anchor: Anchor | None,
    show_progress: bool,
    jobs: int | None,
) -> VerifyReport:
    async with open_event_log(data_dir, readonly=True) as log:
        total = log.head().seq
        if jobs is None:
            jobs = default_verify_jobs(total)
        if not show_progress:
            return await log.verify(anchor_key=key, anchor=anchor, jobs=jobs)
        with Progress(
            "verifying", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True
        ) as bar:
            task = bar.add_task("verify", total=total)
            return await log.verify(
                anchor_key=key,
                anchor=anchor,
                progress=lambda done, _total: bar.update(task, completed=done),
                jobs=jobs,
            )
