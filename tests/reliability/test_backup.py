"""`cuelog backup` copies a data dir while a real `cuelog serve` keeps appending under load, and
the copy verifies and serves every session acknowledged before the backup started."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import httpx

from tests.support import CUELOG, running_server

CLIENTS = 4


class Load:
    """Threads that wake the default agent, each in a new session, and note acknowledged keys."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.lock = threading.Lock()
        self.acked: dict[str, float] = {}  # session key -> monotonic time of its answer
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self, client: int) -> None:
        number = 0
        with httpx.Client(base_url=self.url, timeout=30) as http:
            while not self.stop.is_set():
                key = f"backup-c{client}-{number}"
                response = http.post(
                    "/v1/agents/default/wake", json={"message": f"hi {key}", "session_key": key}
                )
                if response.status_code != 200:
                    self.errors.append(response.text)
                    return
                with self.lock:
                    self.acked[key] = time.monotonic()
                number += 1

    def acked_before(self, moment: float) -> list[str]:
        with self.lock:
            return [key for key, at in self.acked.items() if at < moment]


def backup(data: Path, dest: Path) -> subprocess.CompletedProcess[str]:
    command = [CUELOG, "backup", str(data), str(dest)]
    return subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)


def test_backup_under_load_verifies_and_serves_acknowledged_sessions(tmp_path: Path) -> None:
    """A backup taken mid-load verifies, and a server on it has every session acked before it."""
    data, copy = tmp_path / "data", tmp_path / "copy"
    with running_server(data) as server:
        load = Load(server.url)
        threads = [threading.Thread(target=load.run, args=(n,)) for n in range(CLIENTS)]
        for thread in threads:
            thread.start()
        try:
            while len(load.acked) < 40 and not load.errors:
                time.sleep(0.05)
            started = time.monotonic()
            done = backup(data, copy)
            acked_after = len(load.acked)
        finally:
            load.stop.set()
            for thread in threads:
                thread.join()
        assert not load.errors, load.errors
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.startswith("ok: "), done.stdout
        assert "events" in done.stdout and "bytes" in done.stdout, done.stdout
        before = load.acked_before(started)
        # The load kept going while the copy ran: the server was live, not idle.
        assert acked_after > len(before) or len(load.acked) > len(before)
    verified = subprocess.run(
        [CUELOG, "verify", str(copy)], check=False, capture_output=True, text=True
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert len(before) >= 40
    with running_server(copy) as restored, httpx.Client(base_url=restored.url) as http:
        missing = [key for key in before if http.get(f"/v1/sessions/{key}").status_code != 200]
        assert not missing, f"{len(missing)} acknowledged sessions missing from the backup"
        answered = http.post(
            "/v1/agents/default/wake", json={"message": "after restore", "session_key": before[0]}
        )
        assert answered.status_code == 200, answered.text
        assert answered.json()["status"] == "completed", answered.text


def test_backup_refuses_a_destination_that_is_not_empty(tmp_path: Path) -> None:
    """A DEST that already holds files is refused with exit 2 and left untouched."""
    data, dest = tmp_path / "data", tmp_path / "dest"
    with running_server(data) as server, httpx.Client(base_url=server.url) as http:
        assert http.post("/v1/agents/default/wake", json={"message": "hi"}).status_code == 200
        dest.mkdir()
        (dest / "keep.txt").write_text("mine")
        refused = backup(data, dest)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "not an empty directory" in refused.stderr
        assert sorted(p.name for p in dest.iterdir()) == ["keep.txt"]
        empty = tmp_path / "empty"
        empty.mkdir()
        assert backup(data, empty).returncode == 0
