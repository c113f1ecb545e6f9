"""Budgets: an agent's or an API key's spending limit per period, in tokens and/or cost, checked
when a run would start. The spend is read from the runs catalog (a projection of the log), so a
restart or a rebuild remembers it; a run already going is never cut, so the last run of a period
may take the spend past the limit.

Periods: `day`, `week` (from Monday) and `month` are UTC calendar periods that start over at
their boundary; `24h`, `7d` and `30d` roll, counted by the hour (the hour the window starts in
counts whole, so a rolling budget errs on the side of refusing; spend before today is read by
the day, so a rolling window's reset time is told to the end of the day that ages out).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Final, Literal, final

import msgspec

from cuelog.actors._commands import Caller
from cuelog.actors._errors import BudgetExceeded, Unavailable
from cuelog.actors._events import AgentSpec, Budget, BudgetPeriod
from cuelog.actors._keys import KeyStore
from cuelog.actors._read_models import ReadModels
from cuelog.actors._usage import UsageTotals

_HOUR: Final = 3600
_DAY: Final = 24 * _HOUR
_ROLLING: Final[dict[str, int]] = {"24h": _DAY, "7d": 7 * _DAY, "30d": 30 * _DAY}
_NAMES: Final[dict[str, str]] = {
    "day": "per day (UTC)",
    "week": "per week (UTC, from Monday)",
    "month": "per month (UTC)",
    "24h": "per rolling 24 hours",
    "7d": "per rolling 7 days",
    "30d": "per rolling 30 days",
}

BudgetOwner = Literal["key", "agent"]
# A model's price: (input, output) per million tokens.
Prices = Mapping[str, tuple[float, float]]


class BudgetUse(msgspec.Struct, frozen=True, kw_only=True):
    """One budget and what has been spent against it: times in seconds since the Unix epoch."""

    owner: BudgetOwner
    name: str
    budget: Budget
    tokens: int
    cost: float
    window_start: int
    resets_at: int

    @property
    def exceeded(self) -> bool:
        limit = self.budget
        return (limit.max_tokens is not None and self.tokens >= limit.max_tokens) or (
            limit.max_cost is not None and self.cost >= limit.max_cost
        )

    def message(self) -> str:
        limit = self.budget
        parts = []
        if limit.max_tokens is not None:
            parts.append(f"{self.tokens} of {limit.max_tokens} tokens")
        if limit.max_cost is not None:
            parts.append(f"a cost of {self.cost:.4f} of {limit.max_cost:g}")
        return (
            f"budget exceeded: {self.owner} {self.name!r} has spent {' and '.join(parts)} "
            f"{_NAMES[limit.period]} (since {_iso(self.window_start)}); "
            f"runs may start again at {_iso(self.resets_at)}"
        )


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def calendar_window(period: BudgetPeriod, now: float) -> tuple[int, int]:
    """(start, end) of the calendar period `now` is in, in seconds since the Unix epoch."""
    day = int(now) - int(now) % _DAY
    if period == "day":
        return day, day + _DAY
    if period == "week":
        start = day - datetime.fromtimestamp(day, UTC).weekday() * _DAY
        return start, start + 7 * _DAY
    first = datetime.fromtimestamp(day, UTC).replace(day=1)
    following = first.replace(year=first.year + 1, month=1) if first.month == 12 else None
    following = following or first.replace(month=first.month + 1)
    return int(first.timestamp()), int(following.timestamp())


def _cost(model: str, totals: UsageTotals, prices: Prices) -> float:
    price = prices.get(model)
    if price is None:
        return 0.0
    return (totals.prompt_tokens * price[0] + totals.completion_tokens * price[1]) / 1e6


def budget_use(
    owner: BudgetOwner,
    name: str,
    budget: Budget,
    spend: list[tuple[int, int, str, UsageTotals]],
    prices: Prices,
    now: float,
) -> BudgetUse:
    """What `spend` (first hour, hours, model, tokens; oldest first, from the window's start
    on) comes to against `budget`, and when the budget is next under its limit."""
    buckets: list[tuple[int, int, float]] = []  # the hour its spend leaves by, tokens, cost
    for hour, hours, model, totals in spend:
        cost = _cost(model, totals, prices)
        if buckets and buckets[-1][0] == hour + hours:
            _, tokens_so_far, cost_so_far = buckets[-1]
            buckets[-1] = (hour + hours, tokens_so_far + totals.total_tokens, cost_so_far + cost)
        else:
            buckets.append((hour + hours, totals.total_tokens, cost))
    tokens = sum(t for _, t, _ in buckets)
    cost = sum(c for _, _, c in buckets)
    span = _ROLLING.get(budget.period)
    if span is None:
        start, end = calendar_window(budget.period, now)
        return BudgetUse(
            owner=owner,
            name=name,
            budget=budget,
            tokens=tokens,
            cost=cost,
            window_start=start,
            resets_at=end,
        )
    start = (int(now) - span) // _HOUR * _HOUR
    use = BudgetUse(
        owner=owner,
        name=name,
        budget=budget,
        tokens=tokens,
        cost=cost,
        window_start=start,
        resets_at=int(now),
    )
    # A rolling window drops an hour's (or a day's) spend once it is `span` old: the budget is
    # under its limit again when enough of the oldest buckets have dropped out.
    for until, bucket_tokens, bucket_cost in buckets:
        if not use.exceeded:
            break
        use = msgspec.structs.replace(
            use,
            tokens=use.tokens - bucket_tokens,
            cost=use.cost - bucket_cost,
            resets_at=until * _HOUR + span,
        )
    return msgspec.structs.replace(use, tokens=tokens, cost=cost)


def window_since(period: BudgetPeriod, now: float) -> int:
    """The first second whose spend counts against a budget of `period` at `now`."""
    span = _ROLLING.get(period)
    if span is None:
        return calendar_window(period, now)[0]
    return (int(now) - span) // _HOUR * _HOUR


@final
class Budgets:
    """The budgets a run would start under (its agent's, its key's) and their spend."""

    def __init__(
        self,
        models: ReadModels | None,
        keys: KeyStore,
        prices: Prices,
        *,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.models = models
        self.keys = keys
        self.prices = prices
        self._now = now

    def applying(
        self, agent_id: str, spec: AgentSpec, caller: Caller
    ) -> list[tuple[BudgetOwner, str, Budget]]:
        found: list[tuple[BudgetOwner, str, Budget]] = [
            ("agent", agent_id, budget) for budget in spec.budgets
        ]
        key = self.keys.get(caller.owner) if caller.owner else None
        if key is not None:
            found.extend(("key", key.id, budget) for budget in key.budgets)
        return found

    async def use(self, owner: BudgetOwner, name: str, budget: Budget) -> BudgetUse:
        """What has been spent against one budget, as of the log's head."""
        if self.models is None:
            raise Unavailable(
                f"the {owner} {name!r} has a budget, and budgets are kept by the read models, "
                "which are off on this server: set log.read_models = true"
            )
        now = self._now()
        since = window_since(budget.period, now)
        spend = await self.models.spend(owner, name, since * 1_000_000, int(now * 1_000_000))
        return budget_use(owner, name, budget, spend, self.prices, now)

    async def check(self, agent_id: str, spec: AgentSpec, caller: Caller) -> None:
        """Raise `BudgetExceeded` if a run of this agent for this caller may not start now."""
        for owner, name, budget in self.applying(agent_id, spec, caller):
            use = await self.use(owner, name, budget)
            if use.exceeded:
                raise BudgetExceeded(use.message(), reset_at=use.resets_at)
