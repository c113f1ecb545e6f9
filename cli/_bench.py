"""`cuelog bench`: flags, the progress bar, and the report in words or JSON."""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any
from urllib.parse import urlsplit

import click
import msgspec
import trio
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cuelog.cli._loadgen import (
    WORKLOADS,
    BenchError,
    LoadPlan,
    LoadState,
    RunReport,
    Spread,
    Target,
    local_server,
    preflight,
    run_load,
)

EXIT_OK, EXIT_TOO_MANY_ERRORS, EXIT_CANNOT_RUN = 0, 1, 2


def _check_url(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise click.BadParameter(
            f"{value!r} is not an http(s) URL; write it with its scheme, "
            "e.g. http://127.0.0.1:8088",
            ctx=ctx,
            param=param,
        )
    return value.rstrip("/")


@click.command("bench")
@click.option(
    "--url",
    callback=_check_url,
    help="A running cuelog server, e.g. http://127.0.0.1:8088 "
    "[default: start a throwaway local server with the echo model].",
)
@click.option(
    "--key",
    envvar="CUELOG_BENCH_KEY",
    help="API key for --url (or CUELOG_BENCH_KEY); it needs the read, chat and wake scopes.",
)
@click.option(
    "--workload",
    type=click.Choice(WORKLOADS),
    default="chat",
    show_default=True,
    help="What each request does.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Requests in flight at once (workers and pooled connections).",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds to measure [default: 10; with --requests, no time limit unless given].",
)
@click.option(
    "--requests",
    "request_count",
    type=click.IntRange(min=1),
    default=None,
    help="Measure this many requests instead of a duration.",
)
@click.option(
    "--warmup",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Seconds of load before measuring (not counted).",
)
@click.option(
    "--sessions",
    type=click.IntRange(min=1),
    default=None,
    help="For `sessions`: spread requests over N session keys, revisiting each every N "
    "requests [default: a new session every request].",
)
@click.option("--agent", default="default", show_default=True, help="Agent (model) to load.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@click.option(
    "--max-error-rate",
    type=click.FloatRange(min=0, max=1),
    default=0.01,
    show_default=True,
    help="Exit 1 when the share of failed requests is above this.",
)
@click.option(
    "--against",
    callback=_check_url,
    help="Also run the same chat workload against this OpenAI-compatible endpoint "
    "(root or /v1 base URL) and print both side by side.",
)
@click.option(
    "--against-key",
    envvar="CUELOG_BENCH_AGAINST_KEY",
    help="API key for --against (or CUELOG_BENCH_AGAINST_KEY).",
)
@click.option("--against-model", help="Model for --against [default: the --agent name].")
def bench_command(
    url: str | None,
    key: str | None,
    workload: str,
    concurrency: int,
    duration: float | None,
    request_count: int | None,
    warmup: float,
    sessions: int | None,
    agent: str,
    as_json: bool,
    max_error_rate: float,
    against: str | None,
    against_key: str | None,
    against_model: str | None,
) -> None:
    """Measure a cuelog server's throughput and latency, like pgbench or redis-benchmark.

    Without --url it starts a throwaway server (temp data dir, echo model, random key) and stops
    it afterwards. It reports requests/s, latency percentiles, errors by status, time to first
    token for streams, events the server appended to its log per second, and the CPU this load
    generator used (near 100% of a core: the client, not the server, is the limit).

    Exit 0: done. Exit 1: errors above --max-error-rate. Exit 2: bad flags or cannot run.
    """
    if key is not None and url is None:
        raise click.UsageError("--key needs --url (a throwaway server makes its own key)")
    if against is None and (against_key is not None or against_model is not None):
        raise click.UsageError("--against-key and --against-model need --against")
    if against is not None and workload not in ("chat", "chat-stream"):
        raise click.UsageError(
            f"--against compares the chat or chat-stream workload, not {workload!r}"
        )
    if duration is None and request_count is None:
        duration = 10.0
    plan = LoadPlan(
        workload=workload,
        concurrency=concurrency,
        duration=duration,
        requests=request_count,
        warmup=warmup,
        sessions=sessions,
    )
    sys.exit(
        run_bench(
            plan,
            url=url,
            key=key,
            agent=agent,
            as_json=as_json,
            max_error_rate=max_error_rate,
            against=against,
            against_key=against_key,
            against_model=against_model or agent,
        )
    )


def run_bench(
    plan: LoadPlan,
    *,
    url: str | None,
    key: str | None,
    agent: str,
    as_json: bool,
    max_error_rate: float,
    against: str | None,
    against_key: str | None,
    against_model: str,
) -> int:
    err = Console(stderr=True)
    with ExitStack() as stack:
        try:
            server_pid = None
            if url is None:
                if not as_json:
                    err.print("starting a throwaway cuelog server (echo model)…")
                server = stack.enter_context(local_server())
                url, key, server_pid = server.url, server.key, server.pid
            targets = [Target.for_cuelog(url, key, agent)]
            if against is not None:
                targets.append(Target.for_openai(against, against_key, against_model))
            reports: list[RunReport] = trio.run(_run_all, targets, plan, server_pid, err)
        except BenchError as exc:
            click.echo(f"cuelog bench: {exc}", err=True)
            return EXIT_CANNOT_RUN
    local = server_pid is not None
    failing = [r for r in reports if r.requests == 0 or r.error_rate > max_error_rate]
    if as_json:
        doc: dict[str, Any] = {
            **msgspec.to_builtins(reports[0]),
            "local_server": local,
            "max_error_rate": max_error_rate,
            "passed": not failing,
        }
        if len(reports) > 1:
            doc["against"] = msgspec.to_builtins(reports[1])
        sys.stdout.write(msgspec.json.encode(doc).decode() + "\n")
    else:
        _print_reports(Console(), reports, plan, local)
    for report in failing:
        reason = (
            "no request completed"
            if report.requests == 0
            else f"error rate {report.error_rate:.2%} is above --max-error-rate "
            f"{max_error_rate:.2%}"
        )
        click.echo(f"cuelog bench: {report.url}: {reason}", err=True)
    return EXIT_TOO_MANY_ERRORS if failing else EXIT_OK


async def _run_all(
    targets: list[Target], plan: LoadPlan, server_pid: int | None, err: Console
) -> list[RunReport]:
    for target in targets:
        await preflight(target)
    reports = []
    for i, target in enumerate(targets):
        state = LoadState()
        pid = server_pid if i == 0 else None
        if err.is_terminal:
            reports.append(await _with_progress_bar(target, plan, pid, state, err))
        else:
            reports.append(await run_load(target, plan, server_pid=pid, progress=state))
    return reports


async def _with_progress_bar(
    target: Target, plan: LoadPlan, server_pid: int | None, state: LoadState, console: Console
) -> RunReport:
    by_count = plan.duration is None
    total = float(plan.duration if plan.duration is not None else plan.requests or 0)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[done]} requests, {task.fields[failed]} errors"),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(
            f"{plan.workload} {target.url}: warming up", total=total, done=0, failed=0
        )
        result: list[RunReport] = []

        async def load() -> None:
            result.append(await run_load(target, plan, server_pid=server_pid, progress=state))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(load)
            while not result:
                tally = state.tally
                if state.measure_started is not None:
                    elapsed = trio.current_time() - state.measure_started
                    completed = tally.finished if by_count else min(elapsed, total)
                    phase = "finishing requests in flight" if state.phase == "draining" else ""
                    bar.update(
                        task,
                        completed=completed,
                        description=f"{plan.workload} {target.url}{': ' + phase if phase else ''}",
                        done=tally.finished,
                        failed=tally.failed,
                    )
                await trio.sleep(0.1)
    return result[0]


def _ms(spread: Spread | None, name: str) -> str:
    return "-" if spread is None else f"{getattr(spread, name):,.1f}"


def _print_reports(console: Console, reports: list[RunReport], plan: LoadPlan, local: bool) -> None:
    first = reports[0]
    where = "throwaway local server, echo model" if local else "running server"
    window = (
        f"{first.elapsed_s:.1f} s"
        if plan.requests is None
        else f"{first.requests} requests in {first.elapsed_s:.1f} s"
    )
    console.print(f"cuelog bench: {first.url} ({where})", markup=False, highlight=False)
    console.print(
        f"workload {plan.workload}, concurrency {plan.concurrency}, "
        f"{window} after {plan.warmup:g} s warmup",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    table = Table(show_edge=False, box=None, pad_edge=False)
    table.add_column("")
    for report in reports:
        table.add_column("cuelog" if report is first else f"against {report.url}", justify="right")

    def row(label: str, cell: Callable[[RunReport], str]) -> None:
        table.add_row(label, *(cell(r) for r in reports))

    def spread_rows(label: str, pick: Callable[[RunReport], Spread | None]) -> None:
        for name in ("p50", "p90", "p99", "max"):
            table.add_row(f"{label} {name} ms", *(_ms(pick(r), name) for r in reports))

    row("requests", lambda r: f"{r.requests:,}")
    row("requests/s", lambda r: f"{r.requests_per_s:,.1f}")
    spread_rows("latency", lambda r: r.latency_ms)
    if any(r.ttft_ms for r in reports):
        spread_rows("first token", lambda r: r.ttft_ms)
    row("errors", lambda r: f"{r.requests - r.ok:,} ({r.error_rate:.2%})")
    if any(r.errors for r in reports):
        row("errors by status", lambda r: ", ".join(f"{k}: {v}" for k, v in r.errors.items()))
    row(
        "events appended/s",
        lambda r: (
            "n/a"
            if r.events is None
            else f"{r.events.per_second:,.1f} ({r.events.per_request:g}/request)"
        ),
    )
    row("client CPU", lambda r: f"{r.client_cpu.fraction:.0%} of a core")
    if any(r.server_cpu for r in reports):
        row(
            "server CPU",
            lambda r: "n/a" if r.server_cpu is None else f"{r.server_cpu.fraction:.0%} of a core",
        )
    console.print(table)
    if len(first.kinds) > 1:
        kinds = Table(
            show_edge=False, box=None, pad_edge=False, title="by kind", title_justify="left"
        )
        for column in ("kind", "requests", "errors", "p50 ms", "p99 ms", "first token p50 ms"):
            kinds.add_column(column, justify="left" if column == "kind" else "right")
        for kind, k in first.kinds.items():
            kinds.add_row(
                kind,
                f"{k.requests:,}",
                f"{k.errors:,}",
                _ms(k.latency_ms, "p50"),
                _ms(k.latency_ms, "p99"),
                _ms(k.ttft_ms, "p50"),
            )
        console.print(kinds)
    for report in reports:
        if report.events is None and report is first:
            console.print(
                "note: the server showed no log head (GET /v1/health shows it only to a valid "
                "key), so events appended/s is unknown",
                markup=False,
            )
        if report.client_bound:
            console.print(
                f"note: this load generator used {report.client_cpu.fraction:.0%} of a core "
                f"against {report.url}: the client may be the limit; run several "
                "`cuelog bench --url ...` processes side by side and add their rates, or run it "
                "from another machine",
                markup=False,
            )
