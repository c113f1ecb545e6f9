"""One session written from three real `cuelog serve` nodes at once: its messages are totally
ordered in the log and none is lost or doubled, whichever node each request landed on."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.postgres import fresh_database
from tests.reliability.test_cluster_crash import (
    HEADERS,
    NODES,
    Cluster,
    accepted_event,
    stream_events,
)

PER_CLIENT = 15


@pytest.fixture
def url() -> Iterator[str]:
    with fresh_database() as created:
        yield created


def test_one_session_from_three_nodes_keeps_every_message_once_in_one_order(
    tmp_path: Path, url: str
) -> None:
    """Three clients, one per node, each send their messages to the same session concurrently
    (two of the three are forwarded to its owner): every acknowledged message is accepted exactly
    once, each client's messages keep their order, and every run completes."""
    cluster = Cluster(tmp_path, url)
    for name in NODES:
        cluster.start(name)
    acked: dict[str, str] = {}
    errors: list[str] = []
    lock = threading.Lock()

    def client(index: int, base: str) -> None:
        with httpx.Client(timeout=30, headers=HEADERS) as http:
            for number in range(PER_CLIENT):
                text = f"m{index}-{number}"
                response = http.post(
                    f"{base}/v1/agents/default/wake",
                    json={"message": text, "session_key": "shared", "mode": "async"},
                    headers={"Idempotency-Key": text},
                )
                with lock:
                    if response.status_code == 202:
                        acked[text] = response.json()["run_id"]
                    else:
                        errors.append(f"{text}: {response.status_code} {response.text}")

    try:
        urls = [cluster.servers[name].url for name in NODES]
        threads = [
            threading.Thread(target=client, args=(i, base), daemon=True)
            for i, base in enumerate(urls)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not errors, errors[:3]
        assert len(acked) == PER_CLIENT * len(NODES)
        with httpx.Client(timeout=30, headers=HEADERS) as http:
            last = acked[f"m0-{PER_CLIENT - 1}"]
            for run_id in acked.values():
                for _ in range(600):
                    status = http.get(f"{urls[1]}/v1/runs/{run_id}").json().get("status")
                    if status == "completed":
                        break
                    threading.Event().wait(0.05)
                assert status == "completed", (run_id, status, last)
        order = []
        for stream, type_, data in stream_events(url, "session:shared"):
            if stream == "session:shared" and type_ == "MessageAccepted":
                order.append(str(accepted_event(data).messages[0]["content"]))
        assert sorted(order) == sorted(acked), "a message was lost or accepted twice"
        for index in range(len(NODES)):
            mine = [text for text in order if text.startswith(f"m{index}-")]
            assert mine == [f"m{index}-{n}" for n in range(PER_CLIENT)]
    finally:
        for server in cluster.servers.values():
            if server.proc.poll() is None:
                assert server.terminate() == 0
