"""Token buckets per API key and per client address (requests, and failed authentications),
and a cap on SSE streams per key.

Buckets live in a bounded LRU: a flood of distinct addresses costs at most `max_entries` buckets.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable


class TokenBuckets:
    """`rate` requests per second with bursts of `burst`, per name."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = 10_000,
    ) -> None:
        self.rate = rate
        self.burst = max(burst, 1)
        self._clock = clock
        self._max = max_entries
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def wait(self, name: str) -> float | None:
        """None when a token is free (none is taken), else the seconds until one is."""
        if not self.enabled or name not in self._buckets:
            return None
        tokens, last = self._buckets[name]
        tokens = min(float(self.burst), tokens + (self._clock() - last) * self.rate)
        return None if tokens >= 1 else (1 - tokens) / self.rate

    def take(self, name: str) -> float | None:
        """Take one token; None when allowed, else the seconds until one is free."""
        if not self.enabled:
            return None
        now = self._clock()
        tokens, last = self._buckets.pop(name, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens >= 1:
            self._buckets[name] = (tokens - 1, now)
            result = None
        else:
            self._buckets[name] = (tokens, now)
            result = (1 - tokens) / self.rate
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        return result


def retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


class StreamSlots:
    """How many SSE streams each key has open, against a cap."""

    def __init__(self, per_key: int) -> None:
        self.per_key = per_key
        self.open: dict[str, int] = {}

    def acquire(self, key: str) -> bool:
        count = self.open.get(key, 0)
        if self.per_key > 0 and count >= self.per_key:
            return False
        self.open[key] = count + 1
        return True

    def release(self, key: str) -> None:
        count = self.open.get(key, 0) - 1
        if count <= 0:
            self.open.pop(key, None)
        else:
            self.open[key] = count

    @property
    def total(self) -> int:
        return sum(self.open.values())
