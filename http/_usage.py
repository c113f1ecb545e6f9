"""Usage and costs: runs and tokens summed by the hour from the runs catalog, over a period or
between two times, as a total, a time series or a breakdown, and priced from `[prices]`."""

from __future__ import annotations

import time
from typing import Literal, cast

from quart import Response

from cuelog.actors import USAGE_DIMENSIONS, UsageDimension, UsageFilter, UsageTotals
from cuelog.http._auth import Routes, caller
from cuelog.http._params import ChoiceParam, TextParam, TimeParam
from cuelog.http._schemas import (
    CostLine,
    CostSummary,
    UsageBreakdown,
    UsageGroup,
    UsagePoint,
    UsageSummary,
    UsageTimeseries,
)
from cuelog.http._services import Services
from cuelog.http._wire import json_response, to_json

_HOUR = 3600
_PERIODS = {"24h": 24 * _HOUR, "7d": 7 * 24 * _HOUR, "30d": 30 * 24 * _HOUR}

PERIOD = ChoiceParam(
    name="period",
    choices=("all", "24h", "today", "7d", "30d"),
    default="all",
    description="The last 24 hours, today (UTC), the last 7 or 30 days, or all time; "
    "from/to win over it.",
)
FROM = TimeParam(name="from", description="From this time (RFC 3339), counted by the hour.")
TO = TimeParam(name="to", description="Until this time (RFC 3339, excluded), by the hour.")
AGENT = TextParam(name="agent_id", description="Only this agent's runs.")
PROVIDER = TextParam(name="provider", description="Only runs on this model provider.")
MODEL = TextParam(name="model", description="Only runs on this model.")
INTERVAL = ChoiceParam(name="interval", choices=("hour", "day"), default="hour")
GROUP_BY = ChoiceParam(name="group_by", choices=USAGE_DIMENSIONS, default="agent")
FILTERS = [PERIOD, FROM, TO, AGENT, PROVIDER, MODEL]


def _window() -> tuple[int | None, int | None]:
    """(since, until) in µs since the Unix epoch, None where unbounded."""
    period = PERIOD.get()
    since, until = FROM.get(), TO.get()
    if since is not None or until is not None:
        return since, until
    if period == "all":
        return None, None
    now = time.time()
    start = now - now % (24 * _HOUR) if period == "today" else now - _PERIODS[period]
    return int(start * 1_000_000), None


def _filters() -> UsageFilter:
    since, until = _window()
    return UsageFilter(
        since=since, until=until, agent_id=AGENT.get(), provider=PROVIDER.get(), model=MODEL.get()
    )


def _seconds(us: int | None) -> float | None:
    return None if us is None else us / 1_000_000


def register_usage_routes(routes: Routes, services: Services) -> None:
    prices = services.settings.prices

    def price(model: str, prompt_tokens: int, completion_tokens: int) -> float:
        known = prices.get(model)
        if known is None:
            return 0.0
        return (prompt_tokens * known.input + completion_tokens * known.output) / 1e6

    @routes.add("/v1/usage/summary", ["GET"], "read", answers={200: UsageSummary}, params=FILTERS)
    async def usage_summary() -> Response:
        """Runs started and tokens spent in the period (a non-admin key: its own runs')."""
        filters = _filters()
        totals = await services.models().usage_summary(filters, caller=caller())
        return json_response(
            to_json(
                UsageSummary(
                    object="usage.summary",
                    from_=_seconds(filters.since),
                    to=_seconds(filters.until),
                    **_counts(totals),
                )
            )
        )

    @routes.add(
        "/v1/usage/timeseries",
        ["GET"],
        "read",
        answers={200: UsageTimeseries},
        params=[*FILTERS, INTERVAL],
    )
    async def usage_timeseries() -> Response:
        """Runs and tokens per hour or day (UTC), for each one with any."""
        filters = _filters()
        interval = cast(Literal["hour", "day"], INTERVAL.get())
        points = await services.models().usage_timeseries(
            filters, interval=interval, caller=caller(), price=price
        )
        data = [
            UsagePoint(start=start // 1_000_000, cost=t.cost, **_counts(t)) for start, t in points
        ]
        body = UsageTimeseries(
            object="usage.timeseries",
            interval=interval,
            from_=_seconds(filters.since),
            to=_seconds(filters.until),
            data=data,
        )
        return json_response(to_json(body))

    @routes.add(
        "/v1/usage/breakdown",
        ["GET"],
        "read",
        answers={200: UsageBreakdown},
        params=[*FILTERS, GROUP_BY],
    )
    async def usage_breakdown() -> Response:
        """Runs and tokens per agent, model, provider, key or end user, most tokens first."""
        filters = _filters()
        by = cast(UsageDimension, GROUP_BY.get())
        groups = await services.models().usage_breakdown(filters, by, caller=caller(), price=price)
        data = [UsageGroup(value=value or None, cost=t.cost, **_counts(t)) for value, t in groups]
        body = UsageBreakdown(
            object="usage.breakdown",
            group_by=by,
            from_=_seconds(filters.since),
            to=_seconds(filters.until),
            data=data,
        )
        return json_response(to_json(body))

    @routes.add("/v1/costs/summary", ["GET"], "read", answers={200: CostSummary}, params=FILTERS)
    async def costs_summary() -> Response:
        """Tokens per model priced from `[prices]`; models without a price count 0 and are
        named in `unpriced_models`."""
        filters = _filters()
        lines: list[CostLine] = []
        unpriced: list[str] = []
        for provider, model, totals in await services.models().usage_by_model(
            filters, caller=caller()
        ):
            price = prices.get(model)
            if price is None and model not in unpriced:
                unpriced.append(model)
            input_cost = totals.prompt_tokens * price.input / 1e6 if price else 0.0
            output_cost = totals.completion_tokens * price.output / 1e6 if price else 0.0
            lines.append(
                CostLine(
                    provider=provider,
                    model=model,
                    prompt_tokens=totals.prompt_tokens,
                    completion_tokens=totals.completion_tokens,
                    input_cost=input_cost,
                    output_cost=output_cost,
                    cost=input_cost + output_cost,
                    priced=price is not None,
                )
            )
        body = CostSummary(
            object="costs.summary",
            from_=_seconds(filters.since),
            to=_seconds(filters.until),
            total_cost=sum(line.cost for line in lines),
            unpriced_models=unpriced,
            data=lines,
        )
        return json_response(to_json(body))


def _counts(totals: UsageTotals) -> dict[str, int]:
    return {
        "runs": totals.runs,
        "prompt_tokens": totals.prompt_tokens,
        "completion_tokens": totals.completion_tokens,
        "total_tokens": totals.total_tokens,
    }
