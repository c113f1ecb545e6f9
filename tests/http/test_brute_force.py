"""Guessing keys is slow: failed authentications from one address run out of a small budget
and are then refused with 429 before any key is looked at."""

from __future__ import annotations

from pathlib import Path

import httpx
import trio

from tests.http.live import live_server


def wrong(n: int) -> dict[str, str]:
    return {"Authorization": f"Bearer cue_wrong-guess-{n:06d}"}


async def test_wrong_keys_from_one_address_get_429_after_the_burst(tmp_path: Path) -> None:
    """After `auth_failure_burst` wrong keys, the address gets 429 with Retry-After (even with
    the right key) and one more guess per refilled token; /health still answers."""
    async with (
        live_server(tmp_path / "data", auth_failure_rate=0.5, auth_failure_burst=5) as live,
        httpx.AsyncClient(base_url=live.url, timeout=30) as guesser,
    ):
        started = trio.current_time()
        statuses = [
            (await guesser.get("/v1/agents", headers=wrong(n))).status_code for n in range(100)
        ]
        assert statuses[:6] == [401] * 5 + [429], statuses
        # Half a guess a second gets through to be refused; the rest are 429.
        refills = 1 + int((trio.current_time() - started) * 0.5)
        assert statuses.count(401) <= 5 + refills, statuses
        assert set(statuses) == {401, 429}
        refused = await guesser.get("/v1/agents", headers=wrong(999))
        for _ in range(3):  # a token that refilled just now lets one guess through
            if refused.status_code == 429:
                break
            refused = await guesser.get("/v1/agents", headers=wrong(999))
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.json()["error"]["code"] == "too_many_auth_failures"
        # The address is held whatever it sends, so a right guess cannot be told apart.
        assert (await live.client.get("/v1/agents")).status_code == 429
        assert (await guesser.get("/health")).status_code == 200
        await trio.sleep(int(refused.headers["Retry-After"]))
        assert (await guesser.get("/v1/agents", headers=wrong(1000))).status_code == 401
        assert (await guesser.get("/v1/agents", headers=wrong(1001))).status_code == 429


async def test_missing_scopes_count_as_failures(tmp_path: Path) -> None:
    """Repeated 403s from one address run out the same budget as wrong keys."""
    async with live_server(tmp_path / "data", auth_failure_rate=0.1, auth_failure_burst=3) as live:
        made = await live.client.post("/v1/keys", json={"name": "r", "scopes": ["read"]})
        reader = {"Authorization": f"Bearer {made.json()['key']}"}
        statuses = [
            (await live.client.get("/v1/keys", headers=reader)).status_code for _ in range(6)
        ]
        assert statuses == [403, 403, 403, 429, 429, 429]


async def test_the_address_limit_counts_requests_with_bad_keys(tmp_path: Path) -> None:
    """`ip_rate_limit` applies before authentication, so wrong keys spend it too."""
    async with live_server(
        tmp_path / "data", ip_rate_limit=0.5, rate_burst=5, auth_failure_rate=0
    ) as live:
        async with httpx.AsyncClient(base_url=live.url, timeout=30) as guesser:
            statuses = [
                (await guesser.get("/v1/agents", headers=wrong(n))).status_code for n in range(8)
            ]
        assert statuses == [401] * 5 + [429] * 3
