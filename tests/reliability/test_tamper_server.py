"""Tampering with data dirs that a real `cuelog serve` wrote is caught by `cuelog verify`.

One module fixture runs a server (wakes, one with a calculator tool call, anchors through
POST /v1/audit/anchor with the key file outside the data dir), stops it cleanly, keeps a copy of
the data dir from halfway, and then every test edits its own copy of the final data dir with
py-lmdb, as someone with disk access would, and runs the CLI on it.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from cuelog.runtime import Anchor, RecordedEvent, VerifyReport, open_event_log
from tests.support import CUELOG, start_server
from tests.tamper import Raw, tampered

KEY = "tamper-admin-key-0123456789abcdef"
HEADERS = {"Authorization": f"Bearer {KEY}"}
ANCHOR_KEY = b"server-anchor-key-kept-outside-the-data-dir"
_U64 = struct.Struct(">Q")


@dataclass
class Written:
    """The final data dir, a shorter copy from halfway, the anchor key file and the anchors."""

    data: Path
    older: Path
    key_file: Path
    older_anchor: dict[str, Any]
    anchor: dict[str, Any]
    events: list[RecordedEvent]


def wake(http: httpx.Client, message: str) -> None:
    response = http.post("/v1/agents/default/wake", json={"message": message})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "completed", response.text


def anchor(http: httpx.Client) -> dict[str, Any]:
    response = http.post("/v1/audit/anchor")
    assert response.status_code == 200, response.text
    sealed: dict[str, Any] = response.json()
    return sealed


def serve_round(data: Path, config: Path, messages: list[str]) -> dict[str, Any]:
    """Start the server, wake once per message, anchor the head, stop with SIGTERM."""
    server = start_server(data, "--api-key", KEY, "--config", str(config))
    try:
        with httpx.Client(base_url=server.url, headers=HEADERS, timeout=30) as http:
            for message in messages:
                wake(http, message)
            sealed = anchor(http)
    finally:
        assert server.terminate() == 0
    return sealed


def read_events(data: Path) -> list[RecordedEvent]:
    async def read() -> list[RecordedEvent]:
        async with open_event_log(data, readonly=True) as log:
            return log.read_all(limit=log.head().seq)

    return trio.run(read)


# The read models fold the log again where they are missing; their store's map is a sparse
# file of 1 GiB that a plain copy would write out in full.
_READ_MODELS = shutil.ignore_patterns("projections")


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Written:
    root = tmp_path_factory.mktemp("server-tamper")
    key_file = root / "anchor.key"
    key_file.write_bytes(ANCHOR_KEY)
    config = root / "cuelog.toml"
    config.write_text(f'[log]\nanchor_key_file = "{key_file}"\n')
    data = root / "data"
    older_anchor = serve_round(data, config, ["hello", '/tool calculator {"expr": "2+2"}'])
    older = root / "older"
    shutil.copytree(data, older, ignore=_READ_MODELS)
    final_anchor = serve_round(data, config, ["second visit", "third visit", "fourth visit"])
    return Written(data, older, key_file, older_anchor, final_anchor, read_events(data))


@pytest.fixture
def copy(written: Written, tmp_path: Path) -> Path:
    target = tmp_path / "data"
    shutil.copytree(written.data, target, ignore=_READ_MODELS)
    (target / "writer.lock").unlink(missing_ok=True)
    return target


def cli_verify(data: Path, key_file: Path | None = None) -> subprocess.CompletedProcess[str]:
    args = [CUELOG, "verify", str(data)]
    if key_file is not None:
        args += ["--anchor-key-file", str(key_file)]
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def assert_tampered(data: Path, seq: int, key_file: Path | None = None) -> str:
    result = cli_verify(data, key_file)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"TAMPERED at seq {seq}:" in result.stdout, result.stdout
    return result.stdout


def seq_of(written: Written, event_type: str) -> int:
    return next(e.seq for e in written.events if e.type == event_type)


def index_key(event: RecordedEvent) -> bytes:
    return event.stream.encode() + b"\x00" + struct.pack(">I", event.version)


def test_the_server_written_data_dir_verifies_with_its_anchor(written: Written) -> None:
    """Untouched, the server's data dir verifies with the anchor key, anchored at its head."""
    result = cli_verify(written.data, written.key_file)
    assert result.returncode == 0, result.stdout + result.stderr
    head = written.events[-1].seq
    assert written.anchor["seq"] == head
    assert f"anchored at seq {head}" in result.stdout
    assert seq_of(written, "ToolCallCompleted") < written.older_anchor["seq"] < head


def test_an_edited_tool_result_is_caught(written: Written, copy: Path) -> None:
    """Changing the recorded calculator result's bytes fails verify at that event's seq."""
    seq = seq_of(written, "ToolCallCompleted")
    with tampered(copy) as db:
        value = bytes(db.txn.get(_U64.pack(seq), db=db.events))
        assert b"calculator" in value[64:]
        db.txn.put(_U64.pack(seq), value.replace(b"calculator", b"calculatoR"), db=db.events)
    assert "payload edited" in assert_tampered(copy, seq)


def test_a_removed_event_is_caught(written: Written, copy: Path) -> None:
    """Deleting the tool call request from the server's log fails verify at its seq."""
    seq = seq_of(written, "ToolCallRequested")
    with tampered(copy) as db:
        assert db.txn.delete(_U64.pack(seq), db=db.events)
    assert "removed" in assert_tampered(copy, seq)


def test_swapped_events_are_caught(written: Written, copy: Path) -> None:
    """Swapping the stored tool call request and its result fails verify at the first of them."""
    seq = seq_of(written, "ToolCallRequested")
    assert written.events[seq].type == "ToolCallCompleted"  # events[seq] is seq + 1
    with tampered(copy) as db:
        first = bytes(db.txn.get(_U64.pack(seq), db=db.events))
        second = bytes(db.txn.get(_U64.pack(seq + 1), db=db.events))
        db.txn.put(_U64.pack(seq), second, db=db.events)
        db.txn.put(_U64.pack(seq + 1), first, db=db.events)
    assert "swapped" in assert_tampered(copy, seq)


def rechain_from(db: Raw, start: int, head: int) -> None:
    """Recompute prev and hash from `start` to the head, as a careful forger would."""
    import hashlib

    prev = bytes(db.txn.get(_U64.pack(start - 1), db=db.events)[:32])
    for seq in range(start, head + 1):
        body = bytes(db.txn.get(_U64.pack(seq), db=db.events)[64:])
        digest = hashlib.sha256(prev + body).digest()
        db.txn.put(_U64.pack(seq), digest + prev + body, db=db.events)
        prev = digest


def test_a_rechained_edit_is_caught_only_by_the_anchor(written: Written, copy: Path) -> None:
    """An edited tool result with every later hash recomputed passes the chain alone but fails
    verify with the anchor key at the anchored seq."""
    seq = seq_of(written, "ToolCallCompleted")
    head = written.events[-1].seq
    with tampered(copy) as db:
        value = bytes(db.txn.get(_U64.pack(seq), db=db.events))
        db.txn.put(_U64.pack(seq), value.replace(b"calculator", b"calculatoR"), db=db.events)
        rechain_from(db, seq, head)
    without_key = cli_verify(copy)
    assert without_key.returncode == 0, without_key.stdout  # the chain alone cannot tell
    assert "rewritten" in assert_tampered(copy, head, written.key_file)


def test_a_truncated_tail_is_caught_by_the_anchor(written: Written, copy: Path) -> None:
    """Cutting the last 5 events (and their index entries) passes the chain but fails verify
    with the anchor key at the first missing seq."""
    cut = written.events[-1].seq - 4
    with tampered(copy) as db:
        for event in written.events:
            if event.seq >= cut:
                assert db.txn.delete(index_key(event), db=db.streams)
                assert db.txn.delete(_U64.pack(event.seq), db=db.events)
    assert cli_verify(copy).returncode == 0  # a clean cut: only the anchor can tell
    assert "truncated" in assert_tampered(copy, cut, written.key_file)


def test_a_wrong_streams_index_entry_is_caught(written: Written, copy: Path) -> None:
    """The index entry of the tool result pointing at its run's first event fails verify."""
    result = next(e for e in written.events if e.type == "ToolCallCompleted")
    started = next(e for e in written.events if e.stream == result.stream)
    with tampered(copy) as db:
        assert bytes(db.txn.get(index_key(result), db=db.streams)) == _U64.pack(result.seq)
        db.txn.put(index_key(result), _U64.pack(started.seq), db=db.streams)
    output = assert_tampered(copy, result.seq)
    assert f"seq {started.seq}" in output


def verify_with(data: Path, **kwargs: Any) -> VerifyReport:
    async def run() -> VerifyReport:
        async with open_event_log(data, readonly=True) as log:
            return await log.verify(**kwargs)

    return trio.run(run)


def kept_anchor(response: dict[str, Any]) -> Anchor:
    """The anchor from a POST /v1/audit/anchor answer kept outside the data dir."""
    return Anchor(
        response["seq"],
        bytes.fromhex(response["hash"]),
        bytes.fromhex(response["mac"]),
        response["anchored_at"] * 1_000_000,
    )


def test_an_older_copy_put_in_place_is_caught_by_the_kept_anchor(
    written: Written, tmp_path: Path
) -> None:
    """A copy of the data dir from halfway, put in place of the current one, is a valid log
    with a valid anchor of its own; the last anchor kept outside the data dir catches it."""
    data = tmp_path / "data"
    shutil.copytree(written.older, data, ignore=_READ_MODELS)
    (data / "writer.lock").unlink(missing_ok=True)
    older_head = written.older_anchor["seq"]
    # The anchor stored inside the (older) data dir is genuine, so alone it passes...
    result = cli_verify(data, written.key_file)
    assert result.returncode == 0, result.stdout
    assert f"anchored at seq {older_head}" in result.stdout
    # ...and the anchor kept outside, given to `cuelog verify --anchor-file`, catches it.
    kept = tmp_path / "kept-anchor.json"
    kept.write_text(json.dumps(written.anchor))
    caught = subprocess.run(
        [
            CUELOG,
            "verify",
            str(data),
            "--anchor-key-file",
            str(written.key_file),
            "--anchor-file",
            str(kept),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert caught.returncode == 1, caught.stdout + caught.stderr
    assert f"TAMPERED at seq {older_head + 1}" in caught.stdout
    report = verify_with(data, anchor_key=ANCHOR_KEY, anchor=kept_anchor(written.anchor))
    assert not report.ok, report
    assert report.first_bad_seq == older_head + 1, report
    assert "truncated" in (report.reason or ""), report
    # The same kept anchor accepts the real, current data dir.
    assert verify_with(written.data, anchor_key=ANCHOR_KEY, anchor=kept_anchor(written.anchor)).ok


def test_verify_with_jobs_reports_what_one_job_reports(written: Written, copy: Path) -> None:
    """`cuelog verify --jobs N` splits the hashing over N processes: the untouched data dir
    verifies with its anchor, an edited event fails at its seq in the same words as with one
    job, and a job count below 1 is a usage error."""
    head = written.events[-1].seq

    def run(data: Path, *more: str) -> subprocess.CompletedProcess[str]:
        args = [CUELOG, "verify", str(data), "--anchor-key-file", str(written.key_file), *more]
        return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)

    intact = run(written.data, "--jobs", "3")
    assert intact.returncode == 0, intact.stdout + intact.stderr
    assert f"anchored at seq {head}" in intact.stdout
    seq = seq_of(written, "ToolCallCompleted")
    with tampered(copy) as db:
        value = bytes(db.txn.get(_U64.pack(seq), db=db.events))
        db.txn.put(_U64.pack(seq), value.replace(b"calculator", b"calculatoR"), db=db.events)
    one, split = run(copy, "--jobs", "1"), run(copy, "--jobs", "2")
    assert (one.returncode, split.returncode) == (1, 1), one.stdout + split.stdout
    assert f"TAMPERED at seq {seq}:" in split.stdout
    assert split.stdout == one.stdout
    assert run(copy, "--jobs", "0").returncode == 2
