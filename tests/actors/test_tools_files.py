"""The `files` tool stays inside its sandbox: no absolute paths, no `..`, no symlink escapes."""

from __future__ import annotations

import os
import threading
from collections import Counter
from pathlib import Path

import pytest
import trio

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


async def test_a_directory_swapped_for_a_symlink_never_leads_outside(sandbox: Path) -> None:
    """While a thread swaps `d` between a real directory and a symlink to outside, hundreds of
    reads of `d/secret.txt` return the inside file or a refusal, never the outside one."""
    outside = sandbox.parent / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("top secret")
    (sandbox / "d").mkdir()
    (sandbox / "d" / "secret.txt").write_text("inside")
    os.symlink(outside, sandbox / "parked-link")
    stop = threading.Event()

    def swap() -> None:
        d, parked_dir, parked_link = sandbox / "d", sandbox / "parked-dir", sandbox / "parked-link"
        while not stop.is_set():
            os.rename(d, parked_dir)
            os.rename(parked_link, d)  # d is now a symlink to outside
            os.rename(d, parked_link)
            os.rename(parked_dir, d)  # d is a real directory again

    tool = FilesTool(sandbox)
    outcomes: Counter[str] = Counter()
    swapper = threading.Thread(target=swap)
    swapper.start()
    try:
        with trio.move_on_after(2):
            while True:
                try:
                    text = await tool.run({"op": "read", "path": "d/secret.txt"})
                except ToolError:
                    outcomes["refused"] += 1
                else:
                    outcomes[text] += 1
    finally:
        stop.set()
        swapper.join()
    assert outcomes["top secret"] == 0, f"reads escaped the sandbox: {outcomes}"
    assert outcomes["inside"] and outcomes["refused"], outcomes  # the race was really run


async def test_the_sandbox_quota_bounds_all_files_together(sandbox: Path) -> None:
    """Writes that would take the sandbox past `quota_bytes` are refused; files under it stay."""
    tool = FilesTool(sandbox, max_file_bytes=100, quota_bytes=250)
    for name in ("a", "b"):
        await tool.run({"op": "write", "path": f"dir/{name}.txt", "content": "x" * 100})
    with pytest.raises(ToolError, match="250-byte quota"):
        await tool.run({"op": "write", "path": "c.txt", "content": "y" * 60})
    assert not (sandbox / "c.txt").exists()
    await tool.run({"op": "write", "path": "c.txt", "content": "y" * 50})
    assert (sandbox / "c.txt").read_text() == "y" * 50


async def test_hard_links_and_special_files_are_refused(sandbox: Path) -> None:
    """A hard link (which can reach outside) and a FIFO are neither read nor written."""
    os.link(sandbox.parent / "secret.txt", sandbox / "hard.txt")
    os.mkfifo(sandbox / "pipe")
    tool = FilesTool(sandbox)
    for op, path in [("read", "hard.txt"), ("write", "hard.txt"), ("read", "pipe")]:
        with pytest.raises(ToolError):
            await tool.run({"op": op, "path": path, "content": "pwned"})
    assert (sandbox.parent / "secret.txt").read_text() == "top secret"
