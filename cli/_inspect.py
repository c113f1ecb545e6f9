"""`cuelog timeline`, `cuelog rerun`, `cuelog state` and `cuelog export`: read a data dir
(read-only) to debug runs. `cuelog replay` is the older spelling of the first two.

All of them open the log read-only, so they work beside a running server.
"""

from __future__ import annotations

import base64
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import click
import msgspec
import trio
from rich.console import Console
from rich.table import Table
from rich.text import Text

from cuelog.actors import (
    check_runs,
    is_run_event,
    payload,
    recorded_runs,
    run_recorded,
    session_state_at,
    summary,
    timeline_events,
)
from cuelog.cli._location import LOG, Location
from cuelog.runtime import CuelogError, EventLog, RecordedEvent, StoredRecord, open_event_log

_generic = msgspec.msgpack.Decoder()
_json = msgspec.json.Encoder()
DATA_DIR = LOG


def _fail(message: str) -> None:
    click.echo(f"cuelog: {message}", err=True)
    sys.exit(2)


def _time(ts: int) -> str:
    return datetime.fromtimestamp(ts / 1e6, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _row(event: RecordedEvent) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "time": _time(event.ts),
        "actor": event.actor,
        "stream": event.stream,
        "type": event.type,
        "summary": summary(event),
    }


_SESSION = click.option("--session", "session", help="Timeline of one session and its runs.")
_ALL = click.option("--all", "all_events", is_flag=True, help="Timeline of the whole log.")
_JSON = click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table.")
_FOLLOW = click.option("--follow", is_flag=True, help="Keep printing new events as they commit.")


@click.command("timeline")
@DATA_DIR
@_SESSION
@click.option("--run", "run", help="Timeline of one run.")
@_ALL
@_JSON
@_FOLLOW
def timeline_command(
    data_dir: Location,
    session: str | None,
    run: str | None,
    all_events: bool,
    as_json: bool,
    follow: bool,
) -> None:
    """Show what happened, in order and by whom: one session, one run or the whole log."""
    if (session is not None) + (run is not None) + all_events != 1:
        _fail("choose one of --session KEY, --run ID or --all")
    trio.run(_timeline, data_dir, session, run, as_json, follow)


@click.command("rerun")
@DATA_DIR
@click.option("--run", "run", help="Re-execute only this run (default: every recorded run).")
@_JSON
def rerun_command(data_dir: Location, run: str | None, as_json: bool) -> None:
    """Re-execute recorded runs with the current code, feeding the recorded model and tool
    outputs and approval decisions; report the first divergence (exit 1) or none (exit 0)."""
    sys.exit(trio.run(_check, data_dir, run, as_json))


@click.command("replay")
@DATA_DIR
@_SESSION
@click.option("--run", "run", help="Timeline of one run (with --check: re-run only it).")
@_ALL
@_JSON
@_FOLLOW
@click.option("--check", is_flag=True, help="Same as `cuelog rerun`.")
@click.pass_context
def replay_command(
    ctx: click.Context,
    data_dir: Location,
    session: str | None,
    run: str | None,
    all_events: bool,
    as_json: bool,
    follow: bool,
    check: bool,
) -> None:
    """The older spelling of `cuelog timeline` (and, with --check, of `cuelog rerun`)."""
    if check:
        ctx.invoke(rerun_command, data_dir=data_dir, run=run, as_json=as_json)
        return
    ctx.invoke(
        timeline_command,
        data_dir=data_dir,
        session=session,
        run=run,
        all_events=all_events,
        as_json=as_json,
        follow=follow,
    )


async def _timeline(
    data_dir: Location, session: str | None, run: str | None, as_json: bool, follow: bool
) -> None:
    try:
        async with open_event_log(data_dir, readonly=True) as log:
            events = list(timeline_events(log, session=session, run=run))
            if as_json or not sys.stdout.isatty():
                for event in events:
                    sys.stdout.write(_json.encode(_row(event)).decode() + "\n")
            else:
                table = Table("seq", "time", "actor", "stream", "type", "summary", box=None)
                for event in events:
                    row = _row(event)
                    # Text, not str: a message saying `[/x]` or `[link=…]` is shown, never
                    # interpreted as markup.
                    table.add_row(*(Text(str(row[k] or "")) for k in row))
                Console().print(table)
            if follow:
                last = events[-1].seq if events else 0
                streams = {e.stream for e in events}
                async for event in log.subscribe(last):
                    if (
                        (session is None and run is None)
                        or event.stream in streams
                        or (is_run_event(event) and session is not None)
                    ):
                        sys.stdout.write(_json.encode(_row(event)).decode() + "\n")
                        sys.stdout.flush()
    except CuelogError as exc:
        _fail(str(exc))


async def _check(data_dir: Location, run: str | None, as_json: bool) -> int:
    try:
        async with open_event_log(data_dir, readonly=True) as log:
            runs = [run] if run is not None else recorded_runs(log)
            if run is not None and not run_recorded(log, run):
                _fail(f"no run {run!r} in this log")
            started = time.perf_counter()
            err = Console(stderr=True)
            show = sys.stderr.isatty() and not as_json

            def progress(done: int, total: int) -> None:
                if show and (done % 50 == 0 or done == total):
                    err.print(f"checked {done}/{total} runs", end="\r")

            divergences = await check_runs(log, runs, progress=progress)
    except CuelogError as exc:
        _fail(str(exc))
        return 2
    elapsed = time.perf_counter() - started
    if as_json:
        for divergence in divergences:
            sys.stdout.write(_json.encode(divergence).decode() + "\n")
    for divergence in divergences[:1] if not as_json else []:
        print(f"DIVERGED: run {divergence.run_id} at recorded seq {divergence.recorded_seq}")
        print(f"  {divergence.reason} (event #{divergence.position} of the run)")
        print(f"  recorded: {_json.encode(divergence.recorded).decode()}")
        print(f"  replayed: {_json.encode(divergence.replayed).decode()}")
    if not as_json:
        verdict = "no divergence" if not divergences else f"{len(divergences)} diverged"
        print(f"{len(runs)} run(s) re-executed in {elapsed:.2f}s: {verdict}")
    return 1 if divergences else 0


@click.command("state")
@DATA_DIR
@click.option("--session", "session", required=True, help="The session key.")
@click.option("--at", "at_seq", type=int, default=None, help="Log seq (default: now).")
def state_command(data_dir: Location, session: str, at_seq: int | None) -> None:
    """Print a session's folded state at a seq as JSON."""
    trio.run(_state, data_dir, session, at_seq)


async def _state(data_dir: Location, session: str, at_seq: int | None) -> None:
    try:
        async with open_event_log(data_dir, readonly=True) as log:
            state = session_state_at(log, session, at_seq)
    except CuelogError as exc:
        _fail(str(exc))
        return
    if not state.exists:
        _fail(f"session {session!r} does not exist at that seq")
    sys.stdout.write(_json.encode(state).decode() + "\n")


@click.command("export")
@DATA_DIR
@click.option("--jsonl", is_flag=True, required=True, help="One JSON event per line (the format).")
@click.option("--from", "from_seq", type=int, default=1, show_default=True)
@click.option("--to", "to_seq", type=int, default=None, help="Last seq (default: the head).")
def export_command(data_dir: Location, jsonl: bool, from_seq: int, to_seq: int | None) -> None:
    """Export events with their hashes; `body` is the exact hashed msgpack, base64."""
    trio.run(_export, data_dir, from_seq, to_seq)


async def _export(data_dir: Location, from_seq: int, to_seq: int | None) -> None:
    try:
        async with open_event_log(data_dir, readonly=True) as log:
            out = sys.stdout
            for record in _records(log, from_seq, to_seq):
                event = record.event
                line = {
                    "seq": record.seq,
                    "stream": event.stream,
                    "version": event.version,
                    "type": event.type,
                    "ts": event.ts,
                    "actor": event.actor,
                    "data": payload(event),
                    "prev": event.prev.hex(),
                    "hash": event.hash.hex(),
                    "body": base64.b64encode(record.body).decode(),
                }
                out.write(_json.encode(line).decode() + "\n")
    except CuelogError as exc:
        _fail(str(exc))


def _records(log: EventLog, from_seq: int, to_seq: int | None) -> Iterator[StoredRecord]:
    """Records from `from_seq` to `to_seq` (default: the head when the export started)."""
    last = log.head().seq if to_seq is None else to_seq
    after = max(from_seq, 1) - 1
    while after < last:
        page = log.read_records(after, min(1000, last - after))
        if not page:
            return
        yield from page
        after = page[-1].seq
