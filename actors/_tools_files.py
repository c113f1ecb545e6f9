"""The `files` tool (off by default): read, write and list files inside one sandbox directory.

Paths are relative and may not contain `..`. Every path is walked one component at a time from
an open descriptor of the sandbox (`openat` with `O_NOFOLLOW`, `O_DIRECTORY`), never by name
from the top: a symlink met on the way is read and resolved here, inside the sandbox, and a
directory swapped for a symlink between two steps cannot redirect the walk, because each step
opens the next name relative to the directory already open. Files with more than one hard link
are refused (a hard link can reach outside). `max_file_bytes` caps each read and write, and
`quota_bytes` the sandbox's total.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path, PurePosixPath
from typing import Any, Final, Literal, final

import msgspec
import trio

from cuelog.actors._errors import ToolError
from cuelog.actors._tools import args_schema, decode_args

MAX_FILE_BYTES: Final = 1024 * 1024
QUOTA_BYTES: Final = 64 * 1024 * 1024
MAX_LIST_ENTRIES: Final = 1000
MAX_LINKS: Final = 40  # symlinks followed in one path, as the kernel's own limit

_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class FilesArgs(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """`op` read|write|list, a path relative to the sandbox, and `content` for write."""

    op: Literal["read", "write", "list"]
    path: str = "."
    content: str | None = None


class _Escape(Exception):
    """The path leads outside the sandbox."""


@final
class FilesTool:
    """Files confined to `root`; `max_file_bytes` caps each read and write, `quota_bytes` all
    the sandbox's files together."""

    name: Final = "files"
    description: Final = (
        "Read, write or list files in a sandbox directory. Paths are relative to the sandbox. "
        'Examples: {"op": "list"}, {"op": "read", "path": "notes.txt"}, '
        '{"op": "write", "path": "notes.txt", "content": "hello"}.'
    )
    parameters: Final = args_schema(FilesArgs)

    def __init__(
        self, root: Path, *, max_file_bytes: int = MAX_FILE_BYTES, quota_bytes: int = QUOTA_BYTES
    ) -> None:
        self._root = root.resolve()
        self._max = max_file_bytes
        self._quota = quota_bytes

    async def run(self, args: dict[str, Any]) -> str:
        parsed = decode_args(self.name, args, FilesArgs)
        if parsed.op == "write" and parsed.content is None:
            raise ToolError("files: write needs `content`")
        return await trio.to_thread.run_sync(self._run_sync, parsed)

    def _run_sync(self, args: FilesArgs) -> str:
        parts = self._parts(args.path)
        shown = args.path
        try:
            if args.op == "read":
                return self._read(parts, shown)
            if args.op == "write":
                assert args.content is not None
                return self._write(parts, shown, args.content)
            return self._list(parts, shown)
        except _Escape:
            raise ToolError(
                f"files: {shown!r} leads outside the sandbox (through a symlink)"
            ) from None
        except FileNotFoundError:
            raise ToolError(f"files: {shown!r} does not exist") from None
        except IsADirectoryError:
            raise ToolError(f"files: {shown!r} is a directory") from None
        except NotADirectoryError:
            raise ToolError(f"files: {shown!r} is not a directory") from None
        except OSError as exc:
            raise ToolError(f"files: {shown!r}: {exc.strerror or exc}") from None

    def _parts(self, path: str) -> list[str]:
        if "\x00" in path:
            raise ToolError("files: path contains a NUL byte")
        relative = PurePosixPath(path)
        if relative.is_absolute() or path.startswith("\\"):
            raise ToolError(f"files: {path!r} is absolute; use a path relative to the sandbox")
        if ".." in relative.parts or "\\" in path:
            raise ToolError(f"files: {path!r} may not contain `..` or backslashes")
        return [part for part in relative.parts if part != "."]

    # -- the walk ------------------------------------------------------------------------------

    def _walk(
        self, parts: list[str], *, leaf: bool, create: bool = False
    ) -> tuple[int, str | None]:
        """Open the directory that holds the path's last component and return its descriptor
        and that component's name (None when the path names a directory: then the descriptor
        is that directory). With `leaf`, the last component is left for the caller to open
        (with `O_NOFOLLOW`); a symlink there is resolved first. With `create`, missing
        directories on the way are made. The caller closes the descriptor."""
        todo = list(parts)
        stack = [os.open(self._root, _DIR_FLAGS)]
        links = 0
        try:
            while todo:
                name = todo.pop(0)
                if name in ("", "."):
                    continue
                if name == "..":  # only from a symlink's target
                    if len(stack) == 1:
                        raise _Escape
                    os.close(stack.pop())
                    continue
                if leaf and not todo:
                    target = self._link_target(stack[-1], name)
                    if target is None:
                        fd = stack.pop()
                        return fd, name
                else:
                    try:
                        stack.append(self._open_dir(stack[-1], name, create=create))
                        continue
                    except OSError as exc:
                        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                            raise
                        target = self._link_target(stack[-1], name)
                        if target is None:
                            raise NotADirectoryError from None
                links += 1
                if links > MAX_LINKS:
                    raise OSError(errno.ELOOP, "too many levels of symbolic links")
                link = PurePosixPath(target)
                if link.is_absolute():
                    if not Path(link).is_relative_to(self._root):
                        raise _Escape
                    while len(stack) > 1:
                        os.close(stack.pop())
                    link = PurePosixPath(Path(link).relative_to(self._root))
                todo[:0] = list(link.parts)
            fd = stack.pop()
            return fd, None
        finally:
            for fd in stack:
                os.close(fd)

    @staticmethod
    def _open_dir(parent: int, name: str, *, create: bool) -> int:
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise
            with contextlib.suppress(FileExistsError):  # made meanwhile: open what is there
                os.mkdir(name, 0o755, dir_fd=parent)
            return os.open(name, _DIR_FLAGS, dir_fd=parent)

    @staticmethod
    def _link_target(parent: int, name: str) -> str | None:
        """The symlink's target, or None when `name` is not a symlink (or does not exist)."""
        try:
            return os.readlink(name, dir_fd=parent)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOENT):
                return None
            raise

    def _open_leaf(self, parts: list[str], flags: int, *, create: bool = False) -> int:
        parent, name = self._walk(parts, leaf=True, create=create)
        try:
            if name is None:
                raise IsADirectoryError
            try:
                fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=parent)
            except OSError as exc:
                if exc.errno == errno.ELOOP:  # a symlink swapped in after the walk looked
                    raise _Escape from None
                raise
        finally:
            os.close(parent)
        info = os.fstat(fd)
        problem: OSError | None = None
        if stat.S_ISDIR(info.st_mode):
            problem = IsADirectoryError()
        elif not stat.S_ISREG(info.st_mode):
            problem = OSError(errno.EPERM, "not a regular file")
        elif info.st_nlink > 1:
            problem = OSError(errno.EPERM, "the file has other hard links")
        if problem is not None:
            os.close(fd)
            raise problem
        return fd

    # -- operations ----------------------------------------------------------------------------

    def _read(self, parts: list[str], shown: str) -> str:
        fd = self._open_leaf(parts, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > self._max:
                raise ToolError(
                    f"files: {shown!r} is {size} bytes, over the {self._max}-byte limit"
                )
            data = handle.read(self._max + 1)
        if len(data) > self._max:
            raise ToolError(f"files: {shown!r} is over the {self._max}-byte limit")
        return data.decode("utf-8", "replace")

    def _write(self, parts: list[str], shown: str, content: str) -> str:
        data = content.encode()
        if len(data) > self._max:
            raise ToolError(f"files: content is {len(data)} bytes, over the {self._max}-byte limit")
        if not parts:
            raise IsADirectoryError
        used = self._used_bytes()
        if used + len(data) > self._quota:
            raise ToolError(
                f"files: writing {len(data)} bytes would pass the sandbox's {self._quota}-byte "
                f"quota ({used} bytes used)"
            )
        fd = self._open_leaf(parts, os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK, create=True)
        with os.fdopen(fd, "wb") as handle:
            os.ftruncate(handle.fileno(), 0)  # only once it is known to be a regular file
            handle.write(data)
        return f"wrote {len(data)} bytes to {shown}"

    def _used_bytes(self) -> int:
        """Bytes of regular files in the sandbox (links not followed)."""
        root = os.open(self._root, _DIR_FLAGS)
        try:
            total = 0
            for _, _, files, dir_fd in os.fwalk(".", dir_fd=root, follow_symlinks=False):
                for name in files:
                    try:
                        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if stat.S_ISREG(info.st_mode):
                        total += info.st_size
            return total
        finally:
            os.close(root)

    def _list(self, parts: list[str], shown: str) -> str:
        fd, name = self._walk(parts, leaf=False)
        assert name is None
        try:
            entries = sorted(os.scandir(fd), key=lambda e: e.name)
            lines = []
            for entry in entries[:MAX_LIST_ENTRIES]:
                if entry.is_symlink():
                    lines.append(f"{entry.name}@")
                elif entry.is_dir(follow_symlinks=False):
                    lines.append(f"{entry.name}/")
                else:
                    lines.append(
                        f"{entry.name} ({entry.stat(follow_symlinks=False).st_size} bytes)"
                    )
        finally:
            os.close(fd)
        if len(entries) > MAX_LIST_ENTRIES:
            lines.append(f"... and {len(entries) - MAX_LIST_ENTRIES} more")
        return "\n".join(lines) if lines else f"{shown} is empty"
