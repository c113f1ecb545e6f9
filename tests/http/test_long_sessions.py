"""Long sessions against a real server: history is referenced, not copied, so a session whose
history passes the log's event limit keeps working, bytes per turn stay flat, and input too big
for one event is refused at the door."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cuelog.runtime import open_event_log
from tests.http.live import Live, live_server

BIG = "word " * 72_000  # 360,000 characters: three make a history over 1 MiB
TOO_BIG = "word " * 220_000  # 1.1 MB: over the 1 MiB event limit, under a 4 MiB body limit


async def wake(live: Live, message: str, session_key: str) -> dict[str, Any]:
    response = await live.client.post(
        "/v1/agents/default/wake", json={"message": message, "session_key": session_key}
    )
    assert response.status_code == 200, response.text[:500]
    body: dict[str, Any] = response.json()
    return body


async def test_a_session_past_one_mib_of_history_keeps_working(tmp_path: Path) -> None:
    """Three 360,000-character wakes to one session, then a fourth wake, GET, reset and DELETE
    all work, and no actor fails on the way."""
    async with live_server(tmp_path / "data") as live:
        for _ in range(3):
            assert (await wake(live, BIG, "long"))["status"] == "completed"
        fourth = await wake(live, "and now?", "long")
        assert fourth["status"] == "completed"
        assert fourth["content"] == "Echo: and now?"
        session = await live.client.get("/v1/sessions/long")
        assert session.status_code == 200
        messages = session.json()["messages"]
        assert len(messages) == 8
        assert sum(len(m.get("content") or "") for m in messages) > 1 << 20
        reset = await live.client.post("/v1/sessions/long/reset")
        assert reset.status_code == 200, reset.text
        assert (await live.client.get("/v1/sessions/long")).json()["messages"] == []
        deleted = await live.client.delete("/v1/sessions/long")
        assert deleted.status_code == 200, deleted.text
        assert (await live.client.get("/v1/sessions/long")).status_code == 404
        assert await live.count_events("ActorFailed") == 0


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/agents/default/wake", {"message": TOO_BIG, "session_key": "door"}),
        (
            "/v1/chat/completions",
            {"model": "default", "messages": [{"role": "user", "content": TOO_BIG}]},
        ),
        ("/v1/responses", {"model": "default", "input": TOO_BIG}),
    ],
)
async def test_input_too_big_for_the_log_is_refused_at_the_door(
    tmp_path: Path, path: str, body: dict[str, Any]
) -> None:
    """An input that would make an event over the log's limit gets 413 in the documented shape,
    and the log head does not move (no claim, no session, no failure recorded)."""
    async with live_server(tmp_path / "data", max_body_bytes=4 << 20) as live:
        before = await live.head_seq()
        response = await live.client.post(path, json=body, headers={"Idempotency-Key": "k1"})
        assert response.status_code == 413, response.text[:500]
        error = response.json()["error"]
        assert set(error) == {"message", "type", "code", "param"}
        assert "1048576-byte event limit" in error["message"]
        assert await live.head_seq() == before
        assert (await live.client.get("/v1/sessions/door")).status_code == 404


async def test_bytes_appended_per_turn_stay_flat(tmp_path: Path) -> None:
    """Turn 200 of one session appends no more than 1.5 times the bytes of turn 10 (a run
    records a reference to the history, not a copy of it)."""
    data = tmp_path / "data"
    heads = []
    async with live_server(data, log_settings={"sync": False}) as live:
        heads.append(await live.head_seq())
        for turn in range(1, 201):
            await wake(live, f"turn {turn} of a long conversation", "flat")
            heads.append(await live.head_seq())
    async with open_event_log(data, readonly=True) as log:

        def turn_bytes(turn: int) -> int:
            first, last = heads[turn - 1], heads[turn]
            records = log.read_records(first, last - first)
            return sum(len(record.body) for record in records)

        turn_10, turn_200 = turn_bytes(10), turn_bytes(200)
    print(f"bytes appended: turn 10 = {turn_10}, turn 200 = {turn_200}")
    assert turn_200 <= 1.5 * turn_10
