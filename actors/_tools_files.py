"""The `files` tool (off by default): read, write and list files inside one sandbox directory.

Paths are relative, may not contain `..`, and must still be inside the sandbox after every
symlink is resolved; the final open refuses to follow a symlink, so a link swapped in after the
check cannot redirect it either.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath
from typing import Any, Final, Literal, final

import msgspec
import trio

from cuelog.actors._errors import ToolError
from cuelog.actors._tools import args_schema, decode_args

MAX_FILE_BYTES: Final = 1024 * 1024
MAX_LIST_ENTRIES: Final = 1000


class FilesArgs(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """`op` read|write|list, a path relative to the sandbox, and `content` for write."""

    op: Literal["read", "write", "list"]
    path: str = "."
    content: str | None = None


@final
class FilesTool:
    """Files confined to `root`; `max_file_bytes` caps each read and write."""

    name: Final = "files"
    description: Final = (
        "Read, write or list files in a sandbox directory. Paths are relative to the sandbox. "
        'Examples: {"op": "list"}, {"op": "read", "path": "notes.txt"}, '
        '{"op": "write", "path": "notes.txt", "content": "hello"}.'
    )
    parameters: Final = args_schema(FilesArgs)

    def __init__(self, root: Path, *, max_file_bytes: int = MAX_FILE_BYTES) -> None:
        self._root = root.resolve()
        self._max = max_file_bytes

    async def run(self, args: dict[str, Any]) -> str:
        parsed = decode_args(self.name, args, FilesArgs)
        if parsed.op == "write" and parsed.content is None:
            raise ToolError("files: write needs `content`")
        return await trio.to_thread.run_sync(self._run_sync, parsed)

    def _run_sync(self, args: FilesArgs) -> str:
        target = self._confine(args.path)
        try:
            if args.op == "read":
                return self._read(target, args.path)
            if args.op == "write":
                assert args.content is not None
                return self._write(target, args.path, args.content)
            return self._list(target, args.path)
        except FileNotFoundError:
            raise ToolError(f"files: {args.path!r} does not exist") from None
        except IsADirectoryError:
            raise ToolError(f"files: {args.path!r} is a directory") from None
        except NotADirectoryError:
            raise ToolError(f"files: {args.path!r} is not a directory") from None
        except OSError as exc:
            raise ToolError(f"files: {args.path!r}: {exc.strerror or exc}") from None

    def _confine(self, path: str) -> Path:
        if "\x00" in path:
            raise ToolError("files: path contains a NUL byte")
        relative = PurePosixPath(path)
        if relative.is_absolute() or path.startswith("\\"):
            raise ToolError(f"files: {path!r} is absolute; use a path relative to the sandbox")
        if ".." in relative.parts or "\\" in path:
            raise ToolError(f"files: {path!r} may not contain `..` or backslashes")
        resolved = (self._root / relative).resolve()
        if not resolved.is_relative_to(self._root):
            raise ToolError(f"files: {path!r} leads outside the sandbox (through a symlink)")
        return resolved

    def _read(self, target: Path, shown: str) -> str:
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if stat.S_ISDIR(info.st_mode):
                raise IsADirectoryError
            if info.st_size > self._max:
                raise ToolError(
                    f"files: {shown!r} is {info.st_size} bytes, over the {self._max}-byte limit"
                )
            data = handle.read(self._max + 1)
        if len(data) > self._max:
            raise ToolError(f"files: {shown!r} is over the {self._max}-byte limit")
        return data.decode("utf-8", "replace")

    def _write(self, target: Path, shown: str, content: str) -> str:
        data = content.encode()
        if len(data) > self._max:
            raise ToolError(f"files: content is {len(data)} bytes, over the {self._max}-byte limit")
        if target == self._root:
            raise IsADirectoryError
        target.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
        fd = os.open(target, flags, 0o644)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        return f"wrote {len(data)} bytes to {shown}"

    def _list(self, target: Path, shown: str) -> str:
        entries = sorted(os.scandir(target), key=lambda e: e.name)
        lines = []
        for entry in entries[:MAX_LIST_ENTRIES]:
            if entry.is_symlink():
                lines.append(f"{entry.name}@")
            elif entry.is_dir(follow_symlinks=False):
                lines.append(f"{entry.name}/")
            else:
                lines.append(f"{entry.name} ({entry.stat(follow_symlinks=False).st_size} bytes)")
        if len(entries) > MAX_LIST_ENTRIES:
            lines.append(f"... and {len(entries) - MAX_LIST_ENTRIES} more")
        return "\n".join(lines) if lines else f"{shown} is empty"
