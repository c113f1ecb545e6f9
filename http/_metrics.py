"""Prometheus metrics: request counters and latency from hooks, everything else read at scrape
time from the log's, the actor system's and the runs' own counters (no second bookkeeping)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from quart import Response, g, request
from quart_trio import QuartTrio

from cuelog.actors import UsageTotals
from cuelog.runtime import LeaseStatistics, ProjectionStatus, gc_probe

if TYPE_CHECKING:
    from cuelog.http._services import Services

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _lease_metrics(leases: LeaseStatistics) -> Iterator[Any]:
    """Cluster mode: this node's leases, labelled with the node so nodes' series stay apart."""
    node = [leases.node]
    held = GaugeMetricFamily("cuelog_leases_held", "Actor leases held.", labels=["node"])
    held.add_metric(node, leases.held)
    yield held
    running = GaugeMetricFamily(
        "cuelog_service_owner",
        "1 for each process-wide service (webhooks, loops, otel) that runs on this node.",
        labels=["node", "service"],
    )
    for service in leases.services:
        running.add_metric([leases.node, service], 1)
    yield running
    for name, value, text in (
        ("acquired", leases.acquired, "Leases taken (new or taken back)."),
        ("takeovers", leases.takeovers, "Leases taken from another node after they expired."),
        ("refused", leases.refused, "Leases refused: another live node held them."),
        ("released", leases.released, "Leases released on passivation."),
        ("lost", leases.lost, "Leases found taken over or expired while held."),
        ("fenced", leases.fenced, "Appends refused because their lease was lost."),
        ("renewals", leases.renewals, "Lease renewals."),
        ("renew_failures", leases.renew_failures, "Lease renewals that failed."),
    ):
        family = CounterMetricFamily(f"cuelog_leases_{name}", text, labels=["node"])
        family.add_metric(node, value)
        yield family


class _StateCollector(Collector):
    def __init__(self, services: Services) -> None:
        self._services = services

    def collect(self) -> Iterator[Any]:
        services = self._services
        log = services.log.statistics()
        actors = services.domain.system.statistics()
        runs_now = services.domain.registry.statistics()
        yield GaugeMetricFamily("cuelog_log_head_seq", "Last committed seq.", value=log.head_seq)
        yield CounterMetricFamily("cuelog_log_appends", "Append calls answered.", value=log.appends)
        yield CounterMetricFamily(
            "cuelog_log_events_appended", "Events committed.", value=log.events_appended
        )
        yield CounterMetricFamily("cuelog_log_group_commits", "Group commits.", value=log.batches)
        yield GaugeMetricFamily(
            "cuelog_log_largest_group_commit",
            "Most appends in one commit.",
            value=log.largest_batch,
        )
        yield CounterMetricFamily(
            "cuelog_log_commit_seconds", "Time spent committing.", value=log.commit_seconds_total
        )
        yield GaugeMetricFamily(
            "cuelog_log_mean_group_commit_size",
            "Events per group commit on average.",
            value=log.events_appended / log.batches if log.batches else 0.0,
        )
        yield GaugeMetricFamily("cuelog_log_map_bytes", "LMDB map size.", value=log.map_size)
        yield GaugeMetricFamily("cuelog_actors_live", "Actors in memory.", value=actors.live_actors)
        yield GaugeMetricFamily(
            "cuelog_actors_mailbox_depth",
            "Messages waiting in mailboxes.",
            value=actors.mailbox_depth,
        )
        yield CounterMetricFamily(
            "cuelog_actors_passivated", "Actors passivated.", value=actors.passivated
        )
        yield CounterMetricFamily(
            "cuelog_actors_restarts", "Actor restarts.", value=actors.restarts
        )
        leases = services.domain.lease_statistics()
        if leases is not None:
            yield from _lease_metrics(leases)
        yield GaugeMetricFamily(
            "cuelog_runs_active", "Runs being driven now.", value=runs_now.active_runs
        )
        runs = CounterMetricFamily(
            "cuelog_runs_finished", "Runs ended, by status.", labels=["status"]
        )
        for status, count in sorted(runs_now.finished.items()):
            runs.add_metric([status], count)
        yield runs
        yield GaugeMetricFamily(
            "cuelog_approvals_pending", "Approvals waiting.", value=runs_now.pending_approvals
        )
        yield GaugeMetricFamily(
            "cuelog_sse_clients", "Open SSE streams.", value=services.streams.total
        )
        yield from _gc_metrics()
        if services.read_models is not None:
            yield from _projection_metrics(services.read_models.statuses())
            yield CounterMetricFamily(
                "cuelog_projection_cpu_seconds",
                "CPU time the read models took (reading the log, applying it), in the server "
                "and in its projector processes.",
                value=services.read_models.cpu_seconds(),
            )
            projector = services.read_models.projector
            if projector is not None:
                yield GaugeMetricFamily(
                    "cuelog_projector_process",
                    "1 while a projector process keeps the read models, 0 while the server does.",
                    value=1 if projector.through_process else 0,
                )
                yield CounterMetricFamily(
                    "cuelog_projector_starts",
                    "Projector processes started.",
                    value=projector.starts,
                )
            yield from _token_metrics(services.read_models.token_totals())


def _token_metrics(totals: list[tuple[str, str, UsageTotals]]) -> Iterator[Any]:
    """Tokens and runs by agent and model, from the usage read model (so a restart does not
    reset them)."""
    labels = ["agent", "model"]
    runs = CounterMetricFamily("cuelog_usage_runs", "Runs started.", labels=labels)
    tokens = CounterMetricFamily(
        "cuelog_usage_tokens",
        "Tokens spent, by kind (prompt, completion).",
        labels=[*labels, "kind"],
    )
    for agent, model, total in totals:
        runs.add_metric([agent, model], total.runs)
        tokens.add_metric([agent, model, "prompt"], total.prompt_tokens)
        tokens.add_metric([agent, model, "completion"], total.completion_tokens)
    yield runs
    yield tokens


def _projection_metrics(statuses: list[ProjectionStatus]) -> Iterator[Any]:
    """How far behind the log each read model is, and whether it stopped on an event."""
    labels = ["projection"]
    lag = GaugeMetricFamily(
        "cuelog_projection_lag_events", "Events committed but not yet applied.", labels=labels
    )
    checkpoint = GaugeMetricFamily(
        "cuelog_projection_checkpoint_seq", "Last seq applied.", labels=labels
    )
    failed = GaugeMetricFamily(
        "cuelog_projection_failed", "1 when the projection stopped on an event.", labels=labels
    )
    for status in statuses:
        lag.add_metric([status.name], status.lag)
        checkpoint.add_metric([status.name], status.checkpoint)
        failed.add_metric([status.name], 1 if status.failed_seq is not None else 0)
    yield lag
    yield checkpoint
    yield failed


def _gc_metrics() -> Iterator[Any]:
    """The garbage collector's pauses: each one stops every request in the process."""
    stats = gc_probe().statistics()
    collections = CounterMetricFamily(
        "cuelog_gc_collections", "Garbage collections, by generation.", labels=["generation"]
    )
    pauses = CounterMetricFamily(
        "cuelog_gc_pause_seconds",
        "Time the collector paused, by generation.",
        labels=["generation"],
    )
    longest = GaugeMetricFamily(
        "cuelog_gc_max_pause_seconds", "Longest pause, by generation.", labels=["generation"]
    )
    for generation in range(3):
        label = [str(generation)]
        collections.add_metric(label, stats.collections[generation])
        pauses.add_metric(label, stats.pause_seconds[generation])
        longest.add_metric(label, stats.max_pause_seconds[generation])
    yield collections
    yield pauses
    yield longest
    yield CounterMetricFamily(
        "cuelog_gc_slow_pauses", "Collections that paused 100 ms or more.", value=stats.slow_pauses
    )
    yield GaugeMetricFamily(
        "cuelog_gc_frozen_objects", "Objects frozen out of collection.", value=stats.frozen_objects
    )


class Metrics:
    """One registry per app, so several servers in one process do not mix their numbers."""

    def __init__(self, services: Services) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "cuelog_http_requests",
            "HTTP requests by route, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "cuelog_http_request_seconds",
            "Time to the response headers, by route.",
            ["route"],
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "cuelog_http_rate_limited", "Requests refused with 429.", registry=self.registry
        )
        self.registry.register(_StateCollector(services))

    def install(self, app: QuartTrio) -> None:
        @app.before_request
        async def start_timer() -> None:
            g.started = time.perf_counter()

        @app.after_request
        async def count(response: Response) -> Response:
            rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
            self.requests.labels(rule, request.method, str(response.status_code)).inc()
            started = getattr(g, "started", None)
            if started is not None:
                self.latency.labels(rule).observe(time.perf_counter() - started)
            return response

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE
