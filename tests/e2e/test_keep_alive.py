"""Keep-alive connections against a real `cuelog serve`: rejected requests do not stall them."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support import running_server

API_KEY = "keep-alive-key-0123456789abcdef"
BODY = {"model": "default", "messages": [{"role": "user", "content": "x"}]}


def test_rejected_requests_do_not_stall_a_keep_alive_connection(tmp_path: Path) -> None:
    """401s and 415s in a row on one keep-alive connection are all answered promptly."""
    with (
        running_server(tmp_path / "data", "--api-key", API_KEY) as server,
        httpx.Client(base_url=server.url, timeout=2) as client,  # answers take milliseconds
    ):
        statuses = []
        for _ in range(6):
            statuses.append(client.post("/v1/chat/completions", json=BODY).status_code)
            plain = client.post(
                "/v1/chat/completions",
                content=b"x",
                headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "text/plain"},
            )
            statuses.append(plain.status_code)
        assert statuses == [401, 415] * 6
