"""A log that cannot grow: wakes fail with 503 and a clear error, nothing committed is damaged,
reads keep working, and a restart with a larger `log.max_size` works again.

The server's map starts at min(64 MiB, log.max_size), so a 2 MiB max is both the first map size
and the ceiling: the first MapFullError is final.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx

from tests.support import CUELOG, start_server

KEY = "full-storage-admin-key-0123456789"
HEADERS = {"Authorization": f"Bearer {KEY}"}
SMALL = 2 << 20
LARGE = 64 << 20
MESSAGE = "x" * 40_000  # echoed back, so each wake stores it several times


def config(tmp_path: Path, max_size: int) -> Path:
    path = tmp_path / f"cuelog-{max_size}.toml"
    path.write_text(f"[log]\nmax_size = {max_size}\n[server]\ngraceful_timeout = 5.0\n")
    return path


def test_a_full_log_answers_503_keeps_what_it_has_and_recovers_with_more_room(
    tmp_path: Path,
) -> None:
    """Waking until the 2 MiB log is full gives a 503 naming log.max_size; completed runs stay
    readable, the chain verifies, and after a restart with 64 MiB wakes complete again."""
    data = tmp_path / "data"
    server = start_server(data, "--api-key", KEY, "--config", str(config(tmp_path, SMALL)))
    completed: dict[str, str] = {}  # run id -> session key
    try:
        with httpx.Client(base_url=server.url, headers=HEADERS, timeout=60) as http:
            failure: httpx.Response | None = None
            for number in range(200):
                response = http.post(
                    "/v1/agents/default/wake", json={"message": f"{number} {MESSAGE}"}
                )
                if response.status_code != 200 or response.json()["status"] != "completed":
                    failure = response
                    break
                completed[response.json()["run_id"]] = response.json()["session_key"]
            assert failure is not None, "the log never filled up"
            assert len(completed) >= 3, "the log filled up before any real work was done"
            assert failure.status_code == 503, failure.text
            assert "Retry-After" in failure.headers
            message = failure.json()["error"]["message"]
            assert "maximum size" in message and "log.max_size" in message, message
            # Everything already committed is still served.
            head = http.get("/v1/audit/head")
            assert head.status_code == 200, head.text
            for run_id, session_key in completed.items():
                run = http.get(f"/v1/runs/{run_id}")
                assert run.status_code == 200, run.text
                assert run.json()["status"] == "completed"
                assert MESSAGE in run.json()["content"]
                assert http.get(f"/v1/sessions/{session_key}").status_code == 200
            # A second attempt fails the same clean way rather than hanging or crashing.
            again = http.post("/v1/agents/default/wake", json={"message": MESSAGE})
            assert again.status_code == 503, again.text
    finally:
        assert server.terminate() == 0, "".join(server.log_lines)
    verify = subprocess.run(
        [CUELOG, "verify", str(data)], capture_output=True, text=True, timeout=60, check=False
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr

    server = start_server(data, "--api-key", KEY, "--config", str(config(tmp_path, LARGE)))
    try:
        with httpx.Client(base_url=server.url, headers=HEADERS, timeout=60) as http:
            for number in range(5):
                response = http.post(
                    "/v1/agents/default/wake", json={"message": f"after {number} {MESSAGE}"}
                )
                assert response.status_code == 200, response.text
                assert response.json()["status"] == "completed", response.text
            for run_id in completed:
                assert http.get(f"/v1/runs/{run_id}").json()["status"] == "completed"
    finally:
        assert server.terminate() == 0
    verify = subprocess.run(
        [CUELOG, "verify", str(data)], capture_output=True, text=True, timeout=60, check=False
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
