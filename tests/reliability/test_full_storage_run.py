"""A log with room for a message but not for its run's reply: a synchronous wake answers 503
at once (not when the client gives up), a streaming chat ends with an `error` frame, nothing
committed is damaged, and after a restart with a larger `log.max_size` the run reads as
interrupted and its session takes the next message.

The echo model answers with the message, stored again by the run's end several times: with a
message of a fifth of the 2 MiB log, the message fits and the end does not.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx

from tests.support import CUELOG, start_server

KEY = "full-storage-run-key-0123456789ab"
HEADERS = {"Authorization": f"Bearer {KEY}"}
SMALL = 2 << 20
LARGE = 64 << 20
MESSAGE = "z" * 400_000


def config(tmp_path: Path, max_size: int) -> Path:
    path = tmp_path / f"cuelog-{max_size}.toml"
    path.write_text(f"[log]\nmax_size = {max_size}\n[server]\ngraceful_timeout = 5.0\n")
    return path


def verify(data: Path) -> None:
    result = subprocess.run(
        [CUELOG, "verify", str(data)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_sync_wake_whose_run_end_does_not_fit_answers_503_and_the_session_recovers(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    server = start_server(data, "--api-key", KEY, "--config", str(config(tmp_path, SMALL)))
    try:
        with httpx.Client(base_url=server.url, headers=HEADERS, timeout=60) as http:
            started = time.monotonic()
            response = http.post("/v1/agents/default/wake", json={"message": MESSAGE})
            assert time.monotonic() - started < 20, "the wake waited for the client to give up"
            assert response.status_code == 503, response.text[:500]
            assert "Retry-After" in response.headers
            message = response.json()["error"]["message"]
            assert "log.max_size" in message, message
            # The message is in (its session exists), its run never completed.
            runs = http.get("/v1/runs", params={"limit": 10})
            assert runs.status_code == 200, runs.text[:500]
            (run,) = runs.json()["data"]
            run_id, session_key = run["id"], run["session_key"]
            assert run["status"] != "completed", run
            assert http.get(f"/v1/sessions/{session_key}").status_code == 200
    finally:
        assert server.terminate() == 0, "".join(server.log_lines)
    verify(data)

    server = start_server(data, "--api-key", KEY, "--config", str(config(tmp_path, LARGE)))
    try:
        with httpx.Client(base_url=server.url, headers=HEADERS, timeout=60) as http:
            run = http.get(f"/v1/runs/{run_id}").json()
            assert run["status"] == "failed" and run["error"] == "interrupted", run
            response = http.post(
                "/v1/agents/default/wake",
                json={"message": f"again {MESSAGE}", "session_key": session_key},
            )
            assert response.status_code == 200, response.text[:500]
            assert response.json()["status"] == "completed"
            assert response.json()["content"] == f"Echo: again {MESSAGE}"
    finally:
        assert server.terminate() == 0, "".join(server.log_lines)
    verify(data)


def test_a_streaming_chat_whose_run_end_does_not_fit_ends_with_an_error_frame(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    server = start_server(data, "--api-key", KEY, "--config", str(config(tmp_path, SMALL)))
    try:
        with httpx.Client(base_url=server.url, headers=HEADERS, timeout=60) as http:
            body = {
                "model": "default",
                "stream": True,
                "messages": [{"role": "user", "content": MESSAGE}],
            }
            started = time.monotonic()
            with http.stream("POST", "/v1/chat/completions", json=body) as response:
                assert response.status_code == 200
                text = response.read().decode()
            assert time.monotonic() - started < 20, "the stream waited for the client to give up"
            frames = text.strip().split("\n\n")
            assert frames[-1].startswith("event: error"), frames[-1][:500]
            assert "log.max_size" in frames[-1], frames[-1][:500]
            assert "data: [DONE]" not in text
    finally:
        assert server.terminate() == 0, "".join(server.log_lines)
    verify(data)
