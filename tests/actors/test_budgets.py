"""Budget periods and spend: calendar windows start over at UTC boundaries, a rolling window is
under its limit again once enough of its oldest hours have aged out, and cost is priced per
model (an unpriced model costs nothing)."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from cuelog.actors import Budget
from cuelog.actors._budgets import budget_use, calendar_window
from cuelog.actors._usage import UsageTotals


def _at(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


def _tokens(prompt: int, completion: int) -> UsageTotals:
    return UsageTotals(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


@pytest.mark.parametrize(
    ("period", "now", "start", "end"),
    [
        ("day", "2026-11-30T21:15:00", "2026-11-30T00:00:00", "2026-12-01T00:00:00"),
        ("week", "2026-11-29T23:59:59", "2026-11-23T00:00:00", "2026-11-30T00:00:00"),
        ("week", "2026-11-30T00:00:00", "2026-11-30T00:00:00", "2026-12-07T00:00:00"),
        ("month", "2026-12-31T23:00:00", "2026-12-01T00:00:00", "2027-01-01T00:00:00"),
        ("month", "2028-02-29T12:00:00", "2028-02-01T00:00:00", "2028-03-01T00:00:00"),
    ],
)
def test_calendar_windows_follow_utc_boundaries(
    period: str, now: str, start: str, end: str
) -> None:
    """Days, weeks from Monday and months, in UTC."""
    budget = Budget(period=period, max_tokens=1)  # type: ignore[arg-type]
    assert calendar_window(budget.period, _at(now)) == (_at(start), _at(end))


def test_a_rolling_window_resets_when_enough_old_hours_age_out() -> None:
    """100 tokens an hour for three hours against a 150-token 24h budget: spent 300, under the
    limit again once the two oldest hours are 24 hours old."""
    now = _at("2026-11-30T12:30:00")
    hours = [_at(f"2026-11-30T{h:02}:00:00") // 3600 for h in (9, 10, 11)]
    spend = [(hour, "m", _tokens(40, 60)) for hour in hours]
    use = budget_use("agent", "a", Budget(period="24h", max_tokens=150), spend, {}, now)
    assert use.exceeded
    assert use.tokens == 300
    assert use.resets_at == _at("2026-12-01T11:00:00")
    assert use.window_start == _at("2026-11-29T12:00:00")
    under = budget_use("agent", "a", Budget(period="24h", max_tokens=301), spend, {}, now)
    assert not under.exceeded


def test_cost_is_priced_per_model_and_an_unpriced_model_costs_nothing() -> None:
    """Input and output per million tokens; the message names the spend and the limit."""
    now = _at("2026-11-30T12:30:00")
    hour = now // 3600
    spend = [(hour, "priced", _tokens(1_000_000, 500_000)), (hour, "free", _tokens(10**7, 0))]
    prices = {"priced": (2.0, 8.0)}
    use = budget_use("key", "key_1", Budget(period="month", max_cost=6.0), spend, prices, now)
    assert use.cost == pytest.approx(6.0)
    assert use.exceeded
    assert use.resets_at == _at("2026-12-01T00:00:00")
    assert "key 'key_1' has spent a cost of 6.0000 of 6 per month (UTC)" in use.message()
    assert "runs may start again at 2026-12-01T00:00:00Z" in use.message()


def test_a_budget_needs_a_limit() -> None:
    """Neither max_tokens nor max_cost is refused when decoded."""
    with pytest.raises(msgspec.ValidationError, match="max_tokens, max_cost or both"):
        msgspec.convert({"period": "day"}, Budget)
