"""The domain's read models, kept by projections of the log: which there are, running them
beside a server, and asking them (fresh up to the log's head when asked)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final, Literal

import trio

from cuelog.actors._commands import ADMIN, Caller
from cuelog.actors._errors import NotFound
from cuelog.actors._projector import Projector, ProjectorMode
from cuelog.actors._runs_catalog import RunFilter, RunRow, RunsCatalog, list_runs, run_row
from cuelog.actors._sessions_catalog import (
    OpenRunsCatalog,
    OpenWork,
    SessionRow,
    SessionsCatalog,
    list_session_keys,
    open_work,
)
from cuelog.actors._usage import (
    Dimension,
    Pricing,
    UsageFilter,
    UsageTotals,
    spend_since,
    totals_by_agent_and_model,
    usage_breakdown,
    usage_by_model,
    usage_summary,
    usage_timeseries,
)
from cuelog.runtime import (
    EventLog,
    LmdbProjectionStore,
    Projection,
    ProjectionGroup,
    ProjectionRunner,
    ProjectionState,
    ProjectionStatus,
    ProjectionStore,
)

# How long a read waits for a projection to reach the head it saw before answering from
# where the projection is (a stopped or failing projection answers at once).
FRESH_WAIT: Final = 2.0


def domain_projections() -> list[Projection]:
    """Every projection the domain keeps, by name order."""
    return [OpenRunsCatalog(), RunsCatalog(), SessionsCatalog()]


class ReadModels:
    """The domain's projections over one log and store, and the questions they answer."""

    def __init__(self, log: EventLog, store: ProjectionStore) -> None:
        self.log = log
        self.store = store
        self.runners = {p.name: ProjectionRunner(log, store, p) for p in domain_projections()}
        self.group = ProjectionGroup(list(self.runners.values()))
        self.projector: Projector | None = None  # when a projector process may keep them

    def runner(self, name: str) -> ProjectionRunner:
        try:
            return self.runners[name]
        except KeyError:
            known = ", ".join(sorted(self.runners))
            raise NotFound(f"no projection {name!r} (there are: {known})") from None

    def statuses(self) -> list[ProjectionStatus]:
        return [runner.status() for runner in self.runners.values()]

    def cpu_seconds(self) -> float:
        """CPU time the read models have taken: reading the log's batches and applying them,
        in this process and in its projector processes."""
        elsewhere = self.projector.cpu_seconds() if self.projector is not None else 0.0
        return self.group.cpu_seconds() + elsewhere

    async def _fresh(self, name: str) -> None:
        """Wait (briefly) until the projection has applied what the log held now: a run
        just started is in the list asked for right after."""
        with trio.move_on_after(FRESH_WAIT):
            await self.runners[name].wait_caught_up(self.log.head().seq)

    async def list_runs(
        self,
        filters: RunFilter,
        *,
        caller: Caller = ADMIN,
        after: int | None = None,
        limit: int = 50,
    ) -> tuple[list[RunRow], int | None]:
        """A page of the runs the caller may see, newest first, and the next page's cursor."""
        await self._fresh("runs")
        return self.store.read(
            "runs", lambda state: list_runs(state, filters, caller=caller, after=after, limit=limit)
        )

    async def row_of(self, run_id: str) -> RunRow | None:
        """The catalog's row of a run the caller was already allowed to see (None if the
        catalog has not reached it)."""
        await self._fresh("runs")
        return self.store.read("runs", lambda state: run_row(state, run_id))

    async def run_row(self, run_id: str, *, caller: Caller = ADMIN) -> RunRow:
        """The catalog's row of one run the caller may see."""
        await self._fresh("runs")
        row = self.store.read("runs", lambda state: run_row(state, run_id))
        if row is None or not (caller.admin or row.owner == caller.owner):
            raise NotFound(f"no run {run_id!r}")
        return row

    async def usage_summary(self, filters: UsageFilter, *, caller: Caller = ADMIN) -> UsageTotals:
        """Runs started and tokens spent in the hours asked for (a non-admin key: its own)."""
        await self._fresh("runs")
        return self.store.read("runs", lambda state: usage_summary(state, filters, caller=caller))

    async def usage_timeseries(
        self,
        filters: UsageFilter,
        *,
        interval: Literal["hour", "day"] = "hour",
        caller: Caller = ADMIN,
        price: Pricing | None = None,
    ) -> list[tuple[int, UsageTotals]]:
        await self._fresh("runs")
        return self.store.read(
            "runs",
            lambda state: usage_timeseries(
                state, filters, interval=interval, caller=caller, price=price
            ),
        )

    async def usage_breakdown(
        self,
        filters: UsageFilter,
        by: Dimension,
        *,
        caller: Caller = ADMIN,
        price: Pricing | None = None,
    ) -> list[tuple[str, UsageTotals]]:
        await self._fresh("runs")
        return self.store.read(
            "runs", lambda state: usage_breakdown(state, filters, by, caller=caller, price=price)
        )

    async def usage_by_model(
        self, filters: UsageFilter, *, caller: Caller = ADMIN
    ) -> list[tuple[str, str, UsageTotals]]:
        await self._fresh("runs")
        return self.store.read("runs", lambda state: usage_by_model(state, filters, caller=caller))

    async def spend(
        self, owner: Literal["key", "agent"], name: str, since: int, now: int
    ) -> list[tuple[int, int, str, UsageTotals]]:
        """(first hour, hours, model, tokens) one key's or one agent's runs spent from `since`
        (µs) on, as of `now` (µs), oldest first (see `spend_since`)."""
        await self._fresh("runs")
        return self.store.read("runs", lambda state: spend_since(state, owner, name, since, now))

    async def list_sessions(
        self,
        *,
        caller: Caller = ADMIN,
        agent_id: str | None = None,
        user_id: str | None = None,
        after: str | None = None,
        limit: int = 50,
        scan: int | None = None,
    ) -> tuple[list[SessionRow], str | None]:
        """A page of the catalog's rows of the sessions the caller may see, in key order, and
        the next page's cursor (see `list_session_keys`)."""
        await self._fresh("sessions")
        return self.store.read(
            "sessions",
            lambda state: list_session_keys(
                state,
                caller=caller,
                agent_id=agent_id,
                user_id=user_id,
                after=after,
                limit=limit,
                **({} if scan is None else {"scan": scan}),
            ),
        )

    async def open_work(self) -> OpenWork | None:
        """What a crash left in flight, once the open-runs catalog has applied the whole log
        as it is now (however long that takes: recovery must not miss a run); None if the
        projection failed or stopped first."""
        if not await self.runners["open_runs"].wait_caught_up(self.log.head().seq):
            return None
        return self.store.read("open_runs", open_work)

    def token_totals(self) -> list[tuple[str, str, UsageTotals]]:
        """All-time runs and tokens per agent and model, as far as the catalog has got (for
        metrics: no waiting)."""
        return self.store.read("runs", totals_by_agent_and_model)


def _nothing(state: ProjectionState) -> None:
    return None


@asynccontextmanager
async def open_read_models(
    log: EventLog, store: ProjectionStore, *, projector: ProjectorMode = "inline"
) -> AsyncIterator[ReadModels]:
    """The read models, caught up then following the log together (one read of each batch,
    one transaction a batch) until the block ends (or the log ends its subscriptions). With
    an LMDB store, `projector` says when a projector process keeps them instead of this
    process's event loop (see `cuelog.actors._projector`)."""
    models = ReadModels(log, store)
    for name in models.runners:
        # Open each projection's table before any batch is in flight: an LMDB store opens a
        # table with a write transaction, which must not wait, in the event loop's thread, for
        # a batch another runner is writing in a worker thread.
        store.read(name, _nothing)
    async with trio.open_nursery() as nursery:
        if projector != "inline" and isinstance(store, LmdbProjectionStore):
            models.projector = Projector(models.group, store.path.parent, projector)
            await nursery.start(models.projector.run)  # syncs the store while it applies
        else:
            await nursery.start(models.group.run)
            nursery.start_soon(store.keep_synced)
        yield models
        nursery.cancel_scope.cancel()
