"""Waking agents: sync and async answers, and Idempotency-Key giving exactly one run."""

from __future__ import annotations

from pathlib import Path

import httpx
import trio

from tests.http.live import frame_data, live_server, on_every_backend, sse_frames


@on_every_backend
async def test_sync_wake_answers_content_run_session_and_usage(
    tmp_path: Path, backend: str
) -> None:
    """A sync wake answers the reply, its run id, a new session key and the usage."""
    async with live_server(tmp_path / "data", backend=backend) as live:
        response = await live.client.post("/v1/agents/default/wake", json={"message": "ping me"})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["content"] == "Echo: ping me"
        assert body["run_id"].startswith("run_")
        assert body["session_key"]
        assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
        session = (await live.client.get(f"/v1/sessions/{body['session_key']}")).json()
        assert session["recent_runs"] == [body["run_id"]]


@on_every_backend
async def test_async_wake_answers_202_and_its_events_url_runs_to_completion(
    tmp_path: Path,
    backend: str,
) -> None:
    """An async wake answers 202 at once; following events_url ends with RunCompleted."""
    async with live_server(tmp_path / "data", backend=backend) as live:
        response = await live.client.post(
            "/v1/agents/default/wake",
            json={"message": "later please", "mode": "async", "session_key": "s-async"},
        )
        assert response.status_code == 202, response.text
        body = response.json()
        assert body["session_key"] == "s-async"
        assert body["status"] in {"queued", "running", "completed"}
        events = await live.client.get(body["events_url"])
        frames = sse_frames(events.content)
        assert frames[-1].startswith(b"id: ") and b"event: RunCompleted\n" in frames[-1]
        assert b'"content":"Echo: later please"' in frame_data(frames[-1])
        run = (await live.client.get(f"/v1/runs/{body['run_id']}")).json()
        assert run["status"] == "completed"


@on_every_backend
async def test_same_idempotency_key_twice_gives_one_run(tmp_path: Path, backend: str) -> None:
    """Repeating a wake with the same Idempotency-Key returns the first run; the log has one run."""
    async with live_server(tmp_path / "data", backend=backend) as live:
        headers = {"Idempotency-Key": "order-42"}
        body = {"message": "do it once"}
        first = await live.client.post("/v1/agents/default/wake", json=body, headers=headers)
        second = await live.client.post("/v1/agents/default/wake", json=body, headers=headers)
        assert first.status_code == second.status_code == 200
        assert first.json()["run_id"] == second.json()["run_id"]
        assert first.json()["session_key"] == second.json()["session_key"]
        assert second.json()["content"] == "Echo: do it once"
        assert await live.count_events("RunStarted", "run:") == 1


@on_every_backend
async def test_idempotency_key_with_another_body_is_409(tmp_path: Path, backend: str) -> None:
    """The same Idempotency-Key with a different body is a 409 and starts nothing."""
    async with live_server(tmp_path / "data", backend=backend) as live:
        headers = {"Idempotency-Key": "order-43"}
        first = await live.client.post(
            "/v1/agents/default/wake", json={"message": "a"}, headers=headers
        )
        assert first.status_code == 200
        head = await live.head_seq()
        other = await live.client.post(
            "/v1/agents/default/wake", json={"message": "b"}, headers=headers
        )
        assert other.status_code == 409
        assert other.json()["error"]["code"] == "idempotency_key_reused"
        assert await live.head_seq() == head
        assert await live.count_events("RunStarted", "run:") == 1


@on_every_backend
async def test_twenty_concurrent_requests_with_one_key_make_one_run(
    tmp_path: Path, backend: str
) -> None:
    """Twenty concurrent wakes sharing an Idempotency-Key all get the same single run."""
    rounds = 5  # the race is not lost every time; more rounds make a loss likelier
    async with live_server(tmp_path / "data", backend=backend) as live:
        for round_number in range(rounds):
            answers: list[httpx.Response] = []

            async def wake(key: str, answers: list[httpx.Response]) -> None:
                answers.append(
                    await live.client.post(
                        "/v1/agents/default/wake",
                        json={"message": "only once"},
                        headers={"Idempotency-Key": key},
                    )
                )

            async with trio.open_nursery() as nursery:
                for _ in range(20):
                    nursery.start_soon(wake, f"burst-{round_number}", answers)
            assert [a.status_code for a in answers] == [200] * 20, [a.text for a in answers]
            assert len({a.json()["run_id"] for a in answers}) == 1
            assert {a.json()["content"] for a in answers} == {"Echo: only once"}
        assert await live.count_events("RunStarted", "run:") == rounds
        assert await live.count_events("MessageAccepted", "session:") == rounds


@on_every_backend
async def test_idempotent_chat_completion_returns_the_same_completion(
    tmp_path: Path, backend: str
) -> None:
    """A chat completion repeated with its Idempotency-Key answers the original run."""
    body = {"model": "default", "messages": [{"role": "user", "content": "hi"}]}
    async with live_server(tmp_path / "data", backend=backend) as live:
        headers = {"Idempotency-Key": "chat-1"}
        first = await live.client.post("/v1/chat/completions", json=body, headers=headers)
        second = await live.client.post("/v1/chat/completions", json=body, headers=headers)
        assert first.headers["x-run-id"] == second.headers["x-run-id"]
        assert first.json()["id"] == second.json()["id"]
        assert await live.count_events("RunStarted", "run:") == 1


async def test_a_retry_long_after_its_run_attaches_to_that_run(tmp_path: Path) -> None:
    """A wake retried with its Idempotency-Key after the session has had many more runs still
    gets its own run back and adds nothing to the session."""
    async with live_server(tmp_path / "data") as live:
        body = {"message": "first of many", "session_key": "busy", "mode": "sync"}
        headers = {"Idempotency-Key": "long-ago"}
        first = await live.client.post("/v1/agents/default/wake", json=body, headers=headers)
        assert first.status_code == 200, first.text
        for number in range(60):
            later = await live.client.post(
                "/v1/agents/default/wake",
                json={"message": f"later {number}", "session_key": "busy", "mode": "sync"},
            )
            assert later.status_code == 200, later.text
        head = await live.head_seq()
        again = await live.client.post("/v1/agents/default/wake", json=body, headers=headers)
        assert again.status_code == 200, again.text
        assert again.json()["run_id"] == first.json()["run_id"]
        assert again.json()["content"] == "Echo: first of many"
        assert await live.head_seq() == head
