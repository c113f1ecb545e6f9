"""The `files` tool stays inside its sandbox: no absolute paths, no `..`, no symlink escapes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cuelog.actors._errors import ToolError
from cuelog.actors._tools_files import FilesTool


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    root = tmp_path / "sandbox"
    root.mkdir()
    (tmp_path / "secret.txt").write_text("top secret")
    return root


async def test_write_read_and_list_inside_the_sandbox(sandbox: Path) -> None:
    """A written file can be read back and is listed with its size; dirs are created."""
    tool = FilesTool(sandbox)
    assert await tool.run({"op": "write", "path": "notes/a.txt", "content": "héllo"}) == (
        "wrote 6 bytes to notes/a.txt"
    )
    assert (sandbox / "notes" / "a.txt").read_text() == "héllo"
    assert await tool.run({"op": "read", "path": "notes/a.txt"}) == "héllo"
    assert await tool.run({"op": "list"}) == "notes/"
    assert await tool.run({"op": "list", "path": "notes"}) == "a.txt (6 bytes)"


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/etc/passwd", "is absolute"),
        ("../secret.txt", "may not contain `..`"),
        ("notes/../../secret.txt", "may not contain `..`"),
        ("a\\..\\b", "backslashes"),
        ("a\x00b", "NUL byte"),
    ],
)
async def test_paths_outside_the_sandbox_are_refused(sandbox: Path, path: str, reason: str) -> None:
    """Absolute paths, `..`, backslashes and NUL bytes are refused for every operation."""
    tool = FilesTool(sandbox)
    for op in ("read", "write", "list"):
        with pytest.raises(ToolError, match=reason):
            await tool.run({"op": op, "path": path, "content": "x"})


async def test_symlink_escapes_are_refused(sandbox: Path) -> None:
    """A symlink (file or dir) pointing outside cannot be read, written through or listed."""
    outside = sandbox.parent
    os.symlink(outside / "secret.txt", sandbox / "link.txt")
    os.symlink(outside, sandbox / "up")
    tool = FilesTool(sandbox)
    for op, path in [
        ("read", "link.txt"),
        ("write", "link.txt"),
        ("read", "up/secret.txt"),
        ("write", "up/new.txt"),
        ("list", "up"),
    ]:
        with pytest.raises(ToolError, match="leads outside the sandbox"):
            await tool.run({"op": op, "path": path, "content": "pwned"})
    assert (outside / "secret.txt").read_text() == "top secret"
    assert not (outside / "new.txt").exists()
    assert sorted((await tool.run({"op": "list"})).splitlines()) == ["link.txt@", "up@"]


async def test_symlink_inside_the_sandbox_is_followed(sandbox: Path) -> None:
    """A symlink whose target is inside the sandbox is allowed."""
    (sandbox / "real.txt").write_text("inside")
    os.symlink(sandbox / "real.txt", sandbox / "alias.txt")
    assert await FilesTool(sandbox).run({"op": "read", "path": "alias.txt"}) == "inside"


async def test_size_caps_on_read_and_write(sandbox: Path) -> None:
    """Reads and writes over max_file_bytes are refused with the sizes in the message."""
    tool = FilesTool(sandbox, max_file_bytes=10)
    (sandbox / "big.txt").write_text("x" * 11)
    with pytest.raises(ToolError, match="is 11 bytes, over the 10-byte limit"):
        await tool.run({"op": "read", "path": "big.txt"})
    with pytest.raises(ToolError, match="content is 11 bytes, over the 10-byte limit"):
        await tool.run({"op": "write", "path": "new.txt", "content": "y" * 11})
    assert not (sandbox / "new.txt").exists()


async def test_bad_arguments_and_missing_files_are_tool_errors(sandbox: Path) -> None:
    """Unknown ops or fields, write without content, and missing paths give clear errors."""
    tool = FilesTool(sandbox)
    with pytest.raises(ToolError, match="invalid arguments"):
        await tool.run({"op": "delete", "path": "a"})
    with pytest.raises(ToolError, match="unknown field `mode`"):
        await tool.run({"op": "read", "path": "a", "mode": "rb"})
    with pytest.raises(ToolError, match="write needs `content`"):
        await tool.run({"op": "write", "path": "a"})
    with pytest.raises(ToolError, match=r"'nope\.txt' does not exist"):
        await tool.run({"op": "read", "path": "nope.txt"})
    with pytest.raises(ToolError, match="is a directory"):
        await tool.run({"op": "read", "path": "."})
