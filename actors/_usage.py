"""Usage by the hour: runs started and tokens spent, per key, agent, provider, model and end
user, kept by the runs catalog's projection so a restart or rebuild gives the same numbers.
Summaries, time series, breakdowns and costs are sums over the hours asked for.

Keys: `u:<u64 hour since the Unix epoch><msgpack [key, agent, provider, model, user]>` → msgpack
`[runs, prompt_tokens, completion_tokens, total_tokens]`; and for all time, per agent and model
(what Prometheus is given), `c:<msgpack [agent, model]>` → the same counters. What budgets
read: one key's or one agent's tokens by the hour and by the day (UTC) and model,
`bk:<key>\0h<u64 hour><model>` and `bk:<key>\0d<u64 day><model>`, the same under `ba:<agent>\0`
→ the same counters, so a check reads only its own rows (a month's mostly by the day).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from typing import Final, Literal

import msgspec

from cuelog.actors._commands import ADMIN, Caller
from cuelog.actors._messages import Usage
from cuelog.runtime import ProjectionState

_U64: Final = struct.Struct(">Q")
_PREFIX: Final = b"u:"
_TOTALS: Final = b"c:"
HOUR_US: Final = 3_600_000_000
DAY_US: Final = 24 * HOUR_US

Dimension = Literal["key", "agent", "provider", "model", "user"]
DIMENSIONS: Final[tuple[Dimension, ...]] = ("key", "agent", "provider", "model", "user")

_dims_encoder = msgspec.msgpack.Encoder()
_dims_decoder = msgspec.msgpack.Decoder(tuple[str, str, str, str, str])
_counts_decoder = msgspec.msgpack.Decoder(tuple[int, int, int, int])
_pair_decoder = msgspec.msgpack.Decoder(tuple[str, str])


# What a model's tokens cost: (model, prompt tokens, completion tokens) -> cost.
Pricing = Callable[[str, int, int], float]


class UsageTotals(msgspec.Struct, kw_only=True):
    """Runs started and tokens spent (and what they cost, when a price was given)."""

    runs: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost: float = 0.0

    def add(self, runs: int, prompt: int, completion: int, total: int) -> None:
        self.runs += runs
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        self.total_tokens += total


class UsageFilter(msgspec.Struct, frozen=True, kw_only=True):
    """Which hours (µs since the Unix epoch: `since` included, `until` excluded) and which
    runs count; None: any."""

    since: int | None = None
    until: int | None = None
    agent_id: str | None = None
    provider: str | None = None
    model: str | None = None


class UsageCounts:
    """Runs and tokens added during a batch, by hour and by who and what they count under,
    written to the state's buckets once for the batch (`write`): a busy hour's buckets are read
    and written once a batch, not once a run."""

    __slots__ = ("_deltas",)

    def __init__(self) -> None:
        # (hour, dims) -> runs, tokens (prompt, completion, total), and the tokens of model
        # calls that spent any (the budgets' spend)
        self._deltas: dict[tuple[int, tuple[str, str, str, str, str]], list[int]] = {}

    def add(
        self,
        ts: int,
        dims: tuple[str, str, str, str, str],
        *,
        runs: int = 0,
        usage: Usage | None = None,
    ) -> None:
        """Add a run start and/or a model call's tokens to the hour of `ts` (and the day, for
        the budgets' spend), and to the all-time counters of its agent and model."""
        key = (ts // HOUR_US, dims)
        delta = self._deltas.get(key)
        if delta is None:
            delta = self._deltas[key] = [0, 0, 0, 0, 0, 0, 0]
        delta[0] += runs
        if usage is not None:
            delta[1] += usage.prompt_tokens
            delta[2] += usage.completion_tokens
            delta[3] += usage.total_tokens
            if usage.total_tokens:
                delta[4] += usage.prompt_tokens
                delta[5] += usage.completion_tokens
                delta[6] += usage.total_tokens

    def write(self, state: ProjectionState) -> None:
        for (hour_number, dims), delta in self._deltas.items():
            hour = _U64.pack(hour_number)
            counts = delta[:4]
            _add(state, _PREFIX + hour + _dims_encoder.encode(dims), counts)
            _add(state, _TOTALS + _dims_encoder.encode((dims[1], dims[3])), counts)
            if delta[6]:
                owner, agent, _provider, model, _user = dims
                day = _U64.pack(hour_number * HOUR_US // DAY_US)
                spent = [0, *delta[4:]]
                for kind, name in (("key", owner), ("agent", agent)):
                    if name:
                        prefix = spend_prefix(kind, name)
                        _add(state, prefix + b"h" + hour + model.encode(), spent)
                        _add(state, prefix + b"d" + day + model.encode(), spent)
        self._deltas.clear()

    def clear(self) -> None:
        self._deltas.clear()


def _add(state: ProjectionState, key: bytes, counts: list[int]) -> None:
    raw = state.get(key)
    if raw is not None:
        counts = [a + b for a, b in zip(_counts_decoder.decode(raw), counts, strict=True)]
    state.put(key, _dims_encoder.encode(counts))


def spend_prefix(kind: str, name: str) -> bytes:
    return (b"bk:" if kind == "key" else b"ba:") + name.encode() + b"\0"


def _spend(
    state: ProjectionState, prefix: bytes, first: int, last: int
) -> Iterator[tuple[int, str, UsageTotals]]:
    """(bucket, model, tokens) for the buckets `first` to `last` (excluded) under `prefix`."""
    start = None if first == 0 else prefix + _U64.pack(first - 1) + b"\xff"
    for key, value in state.scan(prefix, start=start):
        bucket = _U64.unpack(key[len(prefix) : len(prefix) + 8])[0]
        if bucket < first:
            continue
        if bucket >= last:
            return
        totals = UsageTotals()
        totals.add(*_counts_decoder.decode(value))
        yield bucket, key[len(prefix) + 8 :].decode(), totals


def spend_since(
    state: ProjectionState, kind: Literal["key", "agent"], name: str, since: int, now: int
) -> list[tuple[int, int, str, UsageTotals]]:
    """(first hour, hours, model, tokens) a key's or an agent's runs spent from `since` (µs) on,
    oldest first: by the hour up to the first whole day and on the current day (UTC), by the
    day in between, so a month reads about 30 days' rows and not 720 hours'."""
    first_hour = max(since, 0) // HOUR_US
    this_day = max(now, 0) // DAY_US
    first_day = -(-first_hour // 24)  # the first whole day (rounded up)
    prefix = spend_prefix(kind, name)
    if first_day >= this_day:  # no whole day in between: hours only
        hours = _spend(state, prefix + b"h", first_hour, 1 << 62)
        return [(hour, 1, model, totals) for hour, model, totals in hours]
    out = [(h, 1, m, t) for h, m, t in _spend(state, prefix + b"h", first_hour, first_day * 24)]
    out += [(d * 24, 24, m, t) for d, m, t in _spend(state, prefix + b"d", first_day, this_day)]
    out += [(h, 1, m, t) for h, m, t in _spend(state, prefix + b"h", this_day * 24, 1 << 62)]
    return out


def _rows(
    state: ProjectionState, filters: UsageFilter, caller: Caller
) -> Iterator[tuple[int, tuple[str, str, str, str, str], tuple[int, int, int, int]]]:
    """(hour, dims, counts) of every bucket the filter and the caller keep, by hour."""
    first = None if filters.since is None else max(filters.since, 0) // HOUR_US
    last = None if filters.until is None else -(-max(filters.until, 0) // HOUR_US)  # round up
    if first is not None and last is not None and first >= last:
        return  # an empty window
    start = None if first is None or first == 0 else _PREFIX + _U64.pack(first - 1) + b"\xff"
    for key, value in state.scan(_PREFIX, start=start):
        hour = _U64.unpack(key[2:10])[0]
        if first is not None and hour < first:
            continue
        if last is not None and hour >= last:
            return
        dims = _dims_decoder.decode(key[10:])
        owner, agent, provider, model, _user = dims
        if not caller.admin and owner != (caller.owner or ""):
            continue
        if filters.agent_id is not None and agent != filters.agent_id:
            continue
        if filters.provider is not None and provider != filters.provider:
            continue
        if filters.model is not None and model != filters.model:
            continue
        yield hour, dims, _counts_decoder.decode(value)


def usage_summary(
    state: ProjectionState, filters: UsageFilter, *, caller: Caller = ADMIN
) -> UsageTotals:
    totals = UsageTotals()
    for _hour, _dims, counts in _rows(state, filters, caller):
        totals.add(*counts)
    return totals


def usage_timeseries(
    state: ProjectionState,
    filters: UsageFilter,
    *,
    interval: Literal["hour", "day"] = "hour",
    caller: Caller = ADMIN,
    price: Pricing | None = None,
) -> list[tuple[int, UsageTotals]]:
    """(start of the interval in µs, totals) for each interval with any usage, in order;
    with `price`, each interval's cost too."""
    width = 1 if interval == "hour" else 24
    points: dict[int, UsageTotals] = {}
    for hour, dims, counts in _rows(state, filters, caller):
        start = hour // width * width * HOUR_US
        point = points.get(start)
        if point is None:
            point = points[start] = UsageTotals()
        point.add(*counts)
        if price is not None:
            point.cost += price(dims[3], counts[1], counts[2])
    return sorted(points.items())


def usage_breakdown(
    state: ProjectionState,
    filters: UsageFilter,
    by: Dimension,
    *,
    caller: Caller = ADMIN,
    price: Pricing | None = None,
) -> list[tuple[str, UsageTotals]]:
    """Totals per value of one dimension, the most tokens first; with `price`, costs too."""
    index = DIMENSIONS.index(by)
    groups: dict[str, UsageTotals] = {}
    for _hour, dims, counts in _rows(state, filters, caller):
        group = groups.get(dims[index])
        if group is None:
            group = groups[dims[index]] = UsageTotals()
        group.add(*counts)
        if price is not None:
            group.cost += price(dims[3], counts[1], counts[2])
    return sorted(groups.items(), key=lambda item: (-item[1].total_tokens, item[0]))


def usage_by_model(
    state: ProjectionState, filters: UsageFilter, *, caller: Caller = ADMIN
) -> list[tuple[str, str, UsageTotals]]:
    """(provider, model, totals), for pricing."""
    groups: dict[tuple[str, str], UsageTotals] = {}
    for _hour, dims, counts in _rows(state, filters, caller):
        group = groups.get((dims[2], dims[3]))
        if group is None:
            group = groups[(dims[2], dims[3])] = UsageTotals()
        group.add(*counts)
    return [(p, m, totals) for (p, m), totals in sorted(groups.items())]


def totals_by_agent_and_model(state: ProjectionState) -> list[tuple[str, str, UsageTotals]]:
    """(agent, model, all-time totals) for each pair that ever ran."""
    out: list[tuple[str, str, UsageTotals]] = []
    for key, value in state.scan(_TOTALS):
        agent, model = _pair_decoder.decode(key[len(_TOTALS) :])
        totals = UsageTotals()
        totals.add(*_counts_decoder.decode(value))
        out.append((agent, model, totals))
    return out
