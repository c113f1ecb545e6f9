"""Chat completions over a real server: run and session headers, session history, stream shape."""

from __future__ import annotations

from pathlib import Path

import msgspec

from tests.http.live import frame_data, frame_id, live_server, on_every_backend, sse_frames


def _chat(text: str, *, stream: bool = False) -> dict[str, object]:
    return {"model": "default", "messages": [{"role": "user", "content": text}], "stream": stream}


@on_every_backend
async def test_chat_answers_run_and_session_headers(tmp_path: Path, backend: str) -> None:
    """A chat completion names its run and session in X-Run-Id and X-Session-Key, and both exist."""
    async with live_server(tmp_path / "data", backend=backend) as live:
        response = await live.client.post("/v1/chat/completions", json=_chat("hello there"))
        assert response.status_code == 200, response.text
        run_id = response.headers["x-run-id"]
        session_key = response.headers["x-session-key"]
        assert response.json()["choices"][0]["message"]["content"] == "Echo: hello there"
        run = (await live.client.get(f"/v1/runs/{run_id}")).json()
        assert run["status"] == "completed"
        assert run["session_key"] == session_key


@on_every_backend
async def test_session_key_keeps_history_across_calls(tmp_path: Path, backend: str) -> None:
    """With X-Session-Key the second call's session holds both turns: four messages."""
    async with live_server(tmp_path / "data", backend=backend) as live:
        headers = {"X-Session-Key": "conv-1"}
        first = await live.client.post("/v1/chat/completions", json=_chat("one"), headers=headers)
        assert first.status_code == 200, first.text
        second = await live.client.post("/v1/chat/completions", json=_chat("two"), headers=headers)
        assert second.headers["x-session-key"] == "conv-1"
        assert second.headers["x-run-id"] != first.headers["x-run-id"]
        session = (await live.client.get("/v1/sessions/conv-1")).json()
        roles = [(m["role"], m["content"]) for m in session["messages"]]
        assert roles == [
            ("user", "one"),
            ("assistant", "Echo: one"),
            ("user", "two"),
            ("assistant", "Echo: two"),
        ]


@on_every_backend
async def test_chat_stream_frames_carry_log_seqs_and_end_with_done(
    tmp_path: Path, backend: str
) -> None:
    """A streamed chat joins to the non-stream text; ids are increasing log seqs; [DONE] is last."""
    words = " ".join(f"word{i}" for i in range(60))
    async with live_server(tmp_path / "data", backend=backend) as live:
        plain = await live.client.post("/v1/chat/completions", json=_chat(words))
        streamed = await live.client.post("/v1/chat/completions", json=_chat(words, stream=True))
        assert streamed.headers["content-type"].startswith("text/event-stream")
        frames = sse_frames(streamed.content)
        assert frames[-1] == b"data: [DONE]\n\n"
        chunks = [msgspec.json.decode(frame_data(f)) for f in frames[:-1]]
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        assert text == plain.json()["choices"][0]["message"]["content"]
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
        ids = [i for i in (frame_id(f) for f in frames) if i is not None]
        assert len(ids) > 2 and ids == sorted(set(ids))


async def test_a_chat_whose_run_fails_names_the_run(tmp_path: Path) -> None:
    """A chat whose run fails (its provider cannot be reached) answers 502 `run_failed` with the
    run in X-Run-Id; the same Idempotency-Key answers the same run again, and it is failed."""
    provider = {"id": "down", "base_url": "http://127.0.0.1:9/v1", "max_retries": 0}
    agent = {"id": "a", "provider": "down", "model": "m"}
    async with live_server(tmp_path / "data") as live:
        assert (await live.client.post("/v1/providers", json=provider)).status_code == 201
        assert (await live.client.post("/v1/agents", json=agent)).status_code == 201
        body = {"model": "a", "messages": [{"role": "user", "content": "hi"}]}
        headers = {"Idempotency-Key": "failing-chat"}
        answers = [
            await live.client.post("/v1/chat/completions", json=body, headers=headers)
            for _ in range(2)
        ]
        for answer in answers:
            assert answer.status_code == 502, answer.text
            assert answer.json()["error"]["code"] == "run_failed"
        run_id = answers[0].headers["x-run-id"]
        assert answers[1].headers["x-run-id"] == run_id
        assert answers[0].headers["x-session-key"]
        run = (await live.client.get(f"/v1/runs/{run_id}")).json()
        assert run["status"] == "failed"
