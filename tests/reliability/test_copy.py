"""`cuelog copy` moves a whole log from LMDB to PostgreSQL and back: same log id, same bytes."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import msgspec
import trio

from cuelog.runtime import RawEvent, open_event_log
from tests.postgres import fresh_database
from tests.support import CUELOG

KEY = b"k" * 32
BLOB = bytes(range(256)) * 1024  # a stored content (a large tool output)


def cuelog(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CUELOG, *map(str, args)], check=False, capture_output=True, text=True, timeout=120
    )


async def write_log(path: Path) -> None:
    async with open_event_log(path) as log:
        for i in range(40):
            await log.append(
                f"s{i % 4}", [RawEvent("T", msgspec.msgpack.encode(i))], idempotency_key=f"k{i}"
            )
        await log.save_snapshot("s1", 10, b"folded")
        await log.anchor(KEY)
        assert log.content is not None
        await log.content.put(BLOB)


async def describe(location: str | Path) -> tuple[object, ...]:
    """Everything a copy must keep: head, records, snapshot, anchor, idempotent replays and
    the content store's blobs."""
    async with open_event_log(location, readonly=True) as log:
        report = await log.verify(anchor_key=KEY)
        assert report.ok, report
        assert report.content_checked == 1 and log.content is not None
        assert await log.content.get(hashlib.sha256(BLOB).hexdigest()) == BLOB
        return (
            log.head(),
            log.read_records(limit=100),
            log.load_snapshot("s1"),
            log.stored_anchor(),
            report.anchored_seq,
        )


def test_a_log_copied_to_postgresql_and_back_is_the_same_log(tmp_path: Path) -> None:
    """LMDB → PostgreSQL → LMDB keeps the head, every record's bytes, snapshots, the anchor,
    idempotency keys and stored contents; exports are identical and the copy takes appends on
    the same chain."""
    source, back = tmp_path / "source", tmp_path / "back"
    trio.run(write_log, source)
    with fresh_database() as url:
        secret_url = url.replace("postgres@", "postgres:s3cret@")
        there = cuelog("copy", source, secret_url)
        assert there.returncode == 0, there.stderr
        assert "40 events copied and verified" in there.stdout
        assert "s3cret" not in there.stdout
        home = cuelog("copy", url, back)
        assert home.returncode == 0, home.stderr
        expected = trio.run(describe, source)
        assert trio.run(describe, url) == expected
        assert trio.run(describe, back) == expected
        exports = [cuelog("export", "--jsonl", where).stdout for where in (source, url, back)]
        assert exports[0] == exports[1] == exports[2] != ""
        assert cuelog("verify", url).returncode == 0

        async def append_again() -> None:
            async with open_event_log(url) as log:
                replay = await log.append(
                    "s0", [RawEvent("T", msgspec.msgpack.encode(0))], idempotency_key="k0"
                )
                assert replay[0].seq == 1  # the key came along: a replay, not a new event
                [after] = await log.append("s0", [RawEvent("T", b"\x01")], expected_version=10)
                last = log.read_event(40)
                assert last is not None
                assert (after.seq, after.prev) == (41, last.hash)

        trio.run(append_again)
        again = cuelog("copy", source, secret_url)
        assert again.returncode == 2
        assert "already holds events" in again.stderr
        assert "s3cret" not in again.stderr
