"""Budget periods and spend: calendar windows start over at UTC boundaries, a rolling window is
under its limit again once enough of its oldest hours have aged out, and cost is priced per
model (an unpriced model costs nothing)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import msgspec
import pytest

from cuelog.actors import Budget, Usage
from cuelog.actors._budgets import budget_use, calendar_window
from cuelog.actors._usage import HOUR_US, UsageCounts, UsageTotals, spend_since


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
    spend = [(hour, 1, "m", _tokens(40, 60)) for hour in hours]
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
    spend = [
        (hour, 1, "priced", _tokens(1_000_000, 500_000)),
        (hour, 1, "free", _tokens(10**7, 0)),
    ]
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


class _State:
    """A `ProjectionState` in a dict: keys in order, as the stores scan them."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        self.data[key] = value

    def delete(self, key: bytes) -> None:
        self.data.pop(key, None)

    def scan(
        self, prefix: bytes, *, start: bytes | None = None, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        for key in sorted(k for k in self.data if k.startswith(prefix)):
            if start is None or key > start:
                yield key, self.data[key]


@pytest.mark.parametrize("days", [0.5, 1, 7, 30])
def test_spend_read_by_day_and_hour_adds_up_to_what_was_spent_in_the_window(days: float) -> None:
    """Model calls every 5 hours for 40 days, on two models and two keys: an agent's and a key's
    spend since a moment equals the tokens of the calls from that moment's hour on, whether it
    is read by the hour or (in whole past days) by the day."""
    state = _State()
    now = _at("2026-11-30T12:30:00") * 1_000_000
    calls: list[tuple[int, str, int]] = []  # time, key, tokens
    counts = UsageCounts()  # written every few calls, as batches are: added to what is stored
    for i in range(40 * 24 // 5):
        ts = now - i * 5 * HOUR_US - 7_000_000
        key, model, tokens = f"key_{i % 2}", f"m{i % 3 % 2}", 1 + i % 11
        usage = Usage(prompt_tokens=tokens, completion_tokens=0, total_tokens=tokens)
        counts.add(ts, (key, "a", "p", model, ""), usage=usage)
        calls.append((ts, key, tokens))
        if i % 3 == 0:
            counts.write(state)
    counts.write(state)
    since = now - int(days * 24 * HOUR_US)
    first = since // HOUR_US * HOUR_US
    for kind, name in (("agent", "a"), ("key", "key_1")):
        spend = spend_since(state, kind, name, since, now)  # type: ignore[arg-type]
        want = sum(t for ts, key, t in calls if ts >= first and name in (key, "a"))
        assert sum(totals.total_tokens for *_, totals in spend) == want
        assert [hour for hour, *_ in spend] == sorted(hour for hour, *_ in spend)
        if days >= 7:
            assert any(hours == 24 for _, hours, _, _ in spend)  # read by the day


def test_a_rolling_window_resets_when_a_past_day_ages_out() -> None:
    """A day's spend (read by the day) leaves a 7-day window when the day's end is 7 days old."""
    now = _at("2026-11-30T12:30:00")
    day = _at("2026-11-25T00:00:00") // 3600
    spend = [(day, 24, "m", _tokens(50, 50)), (now // 3600, 1, "m", _tokens(1, 0))]
    use = budget_use("agent", "a", Budget(period="7d", max_tokens=100), spend, {}, now)
    assert use.exceeded and use.tokens == 101
    assert use.resets_at == _at("2026-12-03T00:00:00")
