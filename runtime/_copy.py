"""Copying a whole log between backends: same log id, same records, byte for byte.

Into a data dir, the source's own `copy_to` writes it. Into PostgreSQL, an LMDB data dir is read
inside one read transaction (a consistent commit, beside a running writer) and streamed in with
`COPY`; any other source is first copied into a scratch data dir. Either way the copy is then
verified and its head compared with the source's event at that seq.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb
import trio

from cuelog.runtime._content import CONTENT_DIR
from cuelog.runtime._envelope import decode_record
from cuelog.runtime._errors import LogError, LogFormatError
from cuelog.runtime._lmdb import _IDEM, _U32, _U64, READABLE_FORMATS
from cuelog.runtime._open import open_event_log, parse_log_location
from cuelog.runtime._records import Head, VerifyReport


async def copy_log(
    source: str | os.PathLike[str], dest: str | os.PathLike[str]
) -> tuple[Head, VerifyReport]:
    """Copy the log at `source` into `dest` (a new or empty data dir, or an empty PostgreSQL
    database); verify the copy and check its head is the source's. Return both."""
    src = parse_log_location(source)
    dst = parse_log_location(dest)
    if src.backend == "memory" or dst.backend == "memory":
        raise LogError("memory: logs live in one process; copy from or to a data dir or URL")
    if dst.backend == "lmdb":
        assert dst.path is not None
        async with open_event_log(source, readonly=True) as log:
            await log.copy_to(dst.path)
    elif src.backend == "lmdb":
        assert src.path is not None and dst.url is not None
        await _lmdb_into_postgres(src.path, dst.url)
    else:
        assert dst.url is not None
        with tempfile.TemporaryDirectory(prefix="cuelog-copy-") as scratch:
            async with open_event_log(source, readonly=True) as log:
                await log.copy_to(Path(scratch) / "log")
            await _lmdb_into_postgres(Path(scratch) / "log", dst.url)
    async with open_event_log(dest, readonly=True) as copy:
        head = copy.head()
        report = await copy.verify()
    async with open_event_log(source, readonly=True) as log:
        original = log.read_event(head.seq) if head.seq else None
        source_head = log.head()
    if original is None and head.seq:
        raise LogError(f"the copy ends at seq {head.seq}, past the source's end")
    if original is not None and original.hash != head.hash:
        raise LogError(f"the copy's head at seq {head.seq} differs from the source's event")
    if head.seq == 0 and source_head.seq == 0 and source_head.hash != head.hash:
        raise LogError("the copy's genesis differs from the source's: another log id")
    return head, report


async def _lmdb_into_postgres(path: Path, url: str) -> None:
    if not (path / "data.mdb").is_file():
        raise LogFormatError(f"no cuelog log at {path} (data.mdb is missing)")
    await trio.to_thread.run_sync(_import_data_dir, path, url)


def _import_data_dir(path: Path, url: str) -> None:
    from cuelog.runtime._postgres import import_log

    try:
        env: Any = lmdb.open(str(path), readonly=True, max_dbs=8, lock=True)
    except lmdb.Error as exc:
        raise LogFormatError(f"cannot open the log at {path}: {exc}") from exc
    try:
        dbs = [env.open_db(name) for name in (b"events", b"idem", b"snapshots", b"meta")]
        events, idem, snapshots, meta = dbs
        with env.begin() as txn:
            fmt = txn.get(b"format", db=meta)
            if fmt is None or _U32.unpack(fmt)[0] not in READABLE_FORMATS:
                raise LogFormatError(f"{path} is not a cuelog log this version can read")
            idempotency = {
                bytes(k).decode(): (*_IDEM.unpack(v[: _IDEM.size]), bytes(v[_IDEM.size :]))
                for k, v in txn.cursor(db=idem)
            }
            snaps = {
                bytes(k).decode(): (_U32.unpack(v[:4])[0], bytes(v[4:]))
                for k, v in txn.cursor(db=snapshots)
            }
            anchor = txn.get(b"anchor", db=meta)

            def rows() -> Iterator[tuple[int, str, int, bytes]]:
                for key, value in txn.cursor(db=events):
                    stored = bytes(value)
                    event = decode_record(stored)
                    if len(key) != 8 or _U64.unpack(key)[0] != event.seq:
                        raise LogFormatError(f"{path}: a record is out of place; run cuelog verify")
                    yield event.seq, event.stream, event.version, stored

            import_log(
                url,
                log_id=bytes(txn.get(b"log_id", db=meta)),
                records=rows(),
                idempotency=idempotency,
                snapshots=snaps,
                anchor=bytes(anchor) if anchor is not None else None,
                content_dir=path / CONTENT_DIR,
            )
    except lmdb.Error as exc:
        raise LogFormatError(f"cannot read the log at {path}: {exc}") from exc
    finally:
        env.close()
