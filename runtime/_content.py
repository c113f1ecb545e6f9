"""The content store beside the log: immutable blobs named by their sha256 digest.

Payloads too big to sit well in an event (a large tool output) are put here and the event
records only the digest, so an event stays under the log's event-size limit and the log does
not grow with big blobs inline. A blob is durable before `put` returns (in a data dir: temp
file, fsync, rename, fsync of the directory; on PostgreSQL: a committed row), and callers append
the referencing event only after that, so a reference never dangles after a crash. Blobs are
never deleted or rewritten: the same bytes always have the same name, so a second `put` of them
is a no-op.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path
from typing import Final, Protocol, final

import msgspec
import trio

from cuelog.runtime._errors import LogError
from cuelog.runtime._records import VerifyReport

CONTENT_DIR: Final = "content"
_DIGEST = re.compile(r"[0-9a-f]{64}")


class ContentMissing(LogError):
    """No blob with this digest is in the content store."""


def content_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_digest(digest: str) -> None:
    # The digest becomes a file name: only the exact hex shape may, so no path can escape.
    if not _DIGEST.fullmatch(digest):
        raise ContentMissing(f"{digest!r} is not a content digest (64 lowercase hex digits)")


class ContentStore(Protocol):
    """Blobs by sha256 hex digest, beside one log."""

    async def put(self, data: bytes) -> str:
        """Store `data` durably; return its digest."""
        ...

    async def get(self, digest: str) -> bytes:
        """The blob's bytes; `ContentMissing` if there is none."""
        ...

    async def verify(self) -> tuple[int, str | None]:
        """Re-hash every blob; return how many were checked and the first bad digest, if any."""
        ...

    async def copy_into(self, dest: Path) -> None:
        """Copy every blob into `dest/content/` (a copy of the log's data dir)."""
        ...


@final
class LocalContentStore:
    """Blobs by sha256 hex digest: files under `<data dir>/content/`, or in memory (`None`)."""

    def __init__(self, directory: Path | None, *, readonly: bool = False) -> None:
        self.directory = directory
        self.readonly = readonly
        self._blobs: dict[str, bytes] = {}

    async def put(self, data: bytes) -> str:
        """Store `data` durably; return its digest."""
        digest = content_digest(data)
        if self.directory is None:
            await trio.lowlevel.checkpoint()
            self._blobs[digest] = bytes(data)
            return digest
        if self.readonly:
            raise LogError("the content store is open for reading only")
        directory = self.directory
        await trio.to_thread.run_sync(lambda: write_blob(directory, digest, data))
        return digest

    async def get(self, digest: str) -> bytes:
        check_digest(digest)
        if self.directory is None:
            await trio.lowlevel.checkpoint()
            data = self._blobs.get(digest)
        else:
            path = self.directory / digest
            data = await trio.to_thread.run_sync(lambda: _read_blob(path))
        if data is None:
            raise ContentMissing(f"content {digest} is not in the content store")
        return data

    async def verify(self) -> tuple[int, str | None]:
        """Re-hash every blob; return how many were checked and the first bad digest, if any."""
        if self.directory is None:
            for checked, (digest, data) in enumerate(sorted(self._blobs.items()), 1):
                await trio.lowlevel.checkpoint()
                if content_digest(data) != digest:
                    return checked, digest
            return len(self._blobs), None
        directory = self.directory
        return await trio.to_thread.run_sync(lambda: _verify_dir(directory))

    async def copy_into(self, dest: Path) -> None:
        """Copy every blob into `dest/content/` (a copy of the log's data dir)."""
        target = dest / CONTENT_DIR
        if self.directory is None:
            blobs = dict(self._blobs)

            def write_all() -> None:
                for digest, data in blobs.items():
                    write_blob(target, digest, data, sync=False)

            await trio.to_thread.run_sync(write_all)
            return
        source = self.directory
        await trio.to_thread.run_sync(lambda: _copy_dir(source, target))


def write_blob(directory: Path, digest: str, data: bytes, *, sync: bool = True) -> None:
    path = directory / digest
    if path.is_file():
        return
    directory.mkdir(parents=True, exist_ok=True)
    # Unique per write: two runs storing the same output at once must not share a temp file.
    tmp = directory / f".{digest}.{os.urandom(8).hex()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        if sync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if sync:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _read_blob(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _verify_dir(directory: Path) -> tuple[int, str | None]:
    if not directory.is_dir():
        return 0, None
    checked = 0
    for path in sorted(directory.iterdir()):
        if not _DIGEST.fullmatch(path.name):
            continue  # a temp file a crash left behind: never referenced
        checked += 1
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        if h.hexdigest() != path.name:
            return checked, path.name
    return checked, None


def _copy_dir(source: Path, target: Path) -> None:
    if not source.is_dir():
        return
    target.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if _DIGEST.fullmatch(path.name):
            shutil.copyfile(path, target / path.name)


async def with_content_check(report: VerifyReport, store: ContentStore | None) -> VerifyReport:
    """`report` of the chain, extended by re-hashing every blob of `store`."""
    if store is None:
        return report
    checked, bad = await store.verify()
    if bad is None or not report.ok:
        return msgspec.structs.replace(report, content_checked=checked, bad_content=bad)
    return msgspec.structs.replace(
        report,
        ok=False,
        reason=f"content blob {bad} does not match its digest",
        content_checked=checked,
        bad_content=bad,
    )
