"""Resumable run streams: a dropped read resumed with Last-Event-ID equals an uninterrupted one."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.http.live import Live, frame_id, live_server, on_every_backend, sse_frames

LONG = " ".join(f"w{i:03d}" for i in range(400))


async def _finished_run(live: Live) -> str:
    body = {"model": "default", "messages": [{"role": "user", "content": LONG}]}
    response = await live.client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response.headers["x-run-id"]


async def _read_until_dropped(client: httpx.AsyncClient, url: str, frames: int) -> bytes:
    """Read `frames` complete frames, then drop the connection; return what was received."""
    received = b""
    async with client.stream("GET", url) as response:
        assert response.status_code == 200
        async for chunk in response.aiter_raw():
            received += chunk
            if len(sse_frames(received)) >= frames:
                break
    return received


def _up_to_last_id(received: bytes) -> tuple[bytes, int]:
    """The frames received up to and including the last one that carries an id, and that id."""
    kept = b""
    last = None
    upto = b""
    for frame in sse_frames(received):
        upto += frame
        seq = frame_id(frame)
        if seq is not None:
            kept, last = upto, seq
    assert last is not None, "no frame with an id before the drop"
    return kept, last


@pytest.mark.parametrize("query", ["", "?format=openai", "?format=openai&include_usage=true"])
@on_every_backend
async def test_resume_with_last_event_id_is_byte_identical(
    tmp_path: Path, backend: str, query: str
) -> None:
    """Frames before a drop plus frames after resuming with Last-Event-ID equal one full read."""
    async with live_server(tmp_path / "data", backend=backend) as live:
        run_id = await _finished_run(live)
        url = f"/v1/runs/{run_id}/events{query}"
        full = (await live.client.get(url)).content
        assert len(sse_frames(full)) > 20  # many deltas: the drop really is mid-stream
        received = await _read_until_dropped(live.client, url, frames=7)
        kept, last = _up_to_last_id(received)
        assert len(kept) < len(full)
        rest = await live.client.get(url, headers={"Last-Event-ID": str(last)})
        assert rest.status_code == 200
        assert kept + rest.content == full


@on_every_backend
async def test_resume_with_after_query_matches_last_event_id(tmp_path: Path, backend: str) -> None:
    """`?after=SEQ` resumes exactly like `Last-Event-ID: SEQ`."""
    async with live_server(tmp_path / "data", backend=backend) as live:
        run_id = await _finished_run(live)
        url = f"/v1/runs/{run_id}/events"
        full = (await live.client.get(url)).content
        kept, last = _up_to_last_id(b"".join(sse_frames(full)[:9]))
        by_query = await live.client.get(url, params={"after": last})
        assert kept + by_query.content == full


@on_every_backend
async def test_dropped_chat_stream_resumes_from_run_events(tmp_path: Path, backend: str) -> None:
    """A chat stream dropped mid-way is completed exactly by the run's openai-format events."""
    body = {
        "model": "default",
        "messages": [{"role": "user", "content": LONG}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with live_server(tmp_path / "data", backend=backend) as live:
        received = b""
        async with live.client.stream("POST", "/v1/chat/completions", json=body) as response:
            run_id = response.headers["x-run-id"]
            async for chunk in response.aiter_raw():
                received += chunk
                if len(sse_frames(received)) >= 6:
                    break
        kept, last = _up_to_last_id(received)
        rest = await live.client.get(
            f"/v1/runs/{run_id}/events?format=openai&include_usage=true",
            headers={"Last-Event-ID": str(last)},
        )
        resumed = kept + rest.content
        # The run's whole stream, read once it has ended: what the dropped client pieced together
        # is exactly it (a second run would coalesce its deltas by time, so differently).
        full = (
            await live.client.get(f"/v1/runs/{run_id}/events?format=openai&include_usage=true")
        ).content
        assert resumed == full
        assert resumed.endswith(b"data: [DONE]\n\n")
        run = (await live.client.get(f"/v1/runs/{run_id}")).json()
        assert run["status"] == "completed"  # dropping the stream did not cancel the run


@on_every_backend
async def test_run_events_openai_format_equals_the_chat_stream(
    tmp_path: Path, backend: str
) -> None:
    """GET /v1/runs/{id}/events?format=openai replays the chat stream byte for byte."""
    body = {
        "model": "default",
        "messages": [{"role": "user", "content": LONG}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with live_server(tmp_path / "data", backend=backend) as live:
        streamed = await live.client.post("/v1/chat/completions", json=body)
        run_id = streamed.headers["x-run-id"]
        replay = await live.client.get(
            f"/v1/runs/{run_id}/events", params={"format": "openai", "include_usage": "true"}
        )
        assert replay.content == streamed.content
