"""Large tool outputs go to the content store beside the log, by digest, and come back whole."""

from __future__ import annotations

import hashlib
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Final

import msgspec
import pytest

from cuelog.actors import (
    AgentSpec,
    ChatMessage,
    EchoModel,
    Invalid,
    ToolRegistry,
    check_runs,
    open_domain,
)
from cuelog.actors._content import resolve_messages, store_media
from cuelog.actors._events import ToolCallCompleted
from cuelog.actors._messages import MediaPart
from cuelog.actors._replay import _same_event
from cuelog.actors._run import RunSettings
from cuelog.runtime import (
    ContentMissing,
    LocalContentStore,
    open_event_log,
)
from tests.actors.domain_support import as_record, decoded, runtime_at, tool_line, user
from tests.postgres import fresh_database

BIG: Final = 2 * 1024 * 1024 + 17  # over the log's 1 MiB event limit
AGENT: Final = AgentSpec(name="big", tools=["big"])


class BigTool:
    """A test tool whose output is `size` characters, different in every position."""

    name = "big"
    description = "returns a large text"
    parameters: dict[str, Any] = {"type": "object", "properties": {}}

    async def run(self, args: dict[str, Any]) -> str:
        return big_text()


class MidTool(BigTool):
    """A 100 kB output: over the default content threshold, well under the event limit."""

    name = "mid"

    async def run(self, args: dict[str, Any]) -> str:
        return big_text()[: 100 * 1024]


def big_text() -> str:
    line = "".join(chr(ord("a") + i % 26) for i in range(63)) + "\n"
    text = "".join(f"{i:08d}{line}" for i in range(BIG // 72 + 1))
    return text[:BIG]


def settings() -> RunSettings:
    return RunSettings(
        providers={"echo": EchoModel()}, tools=ToolRegistry([BigTool()], enabled=["big"])
    )


async def test_a_tool_output_over_the_event_limit_completes_its_run(tmp_path: Path) -> None:
    """A 2 MiB tool output completes its run: the event keeps a digest and a preview, every
    event stays small, the blob is on disk by digest, and the model and views get it whole."""
    expected = big_text()
    digest = hashlib.sha256(expected.encode()).hexdigest()
    async with runtime_at(tmp_path / "log", settings(), agents={"big": AGENT}) as rt:
        sent = await rt.send("big", [tool_line("big", "{}")])
        view = await rt.wait_run(sent.run_id)
        assert view.status == "completed", view.error
        # The echo model answers with the sha256 of the tool result it was sent: all of it.
        assert f"{len(expected)} characters, sha256 {digest}" in view.content
        [done] = decoded(rt.log, f"run:{sent.run_id}", ToolCallCompleted)
        assert done.output_digest == digest and done.output_size == len(expected)
        assert done.output == expected[:256]
        assert (tmp_path / "log" / "content" / digest).read_bytes() == expected.encode()
        assert max(len(r.data) for r in rt.log.read_all(0, 10_000)) < 16 * 1024
        [tool] = [m for m in view.messages if m.role == "tool"]
        assert tool.content == expected and tool.content_digest is None
        session = await rt.get_session(sent.session_key)
        assert [m.content for m in session.messages if m.role == "tool"] == [expected]
        report = await rt.log.verify()
        assert report.ok and report.content_checked == 1


async def test_a_stored_output_survives_a_reopen_and_reruns_clean(tmp_path: Path) -> None:
    """After the log is closed and opened again the run's view and the session still give the
    whole output, a later turn sends it to the model again, and `rerun` re-executes it clean."""
    expected = big_text()
    async with runtime_at(tmp_path / "log", settings(), agents={"big": AGENT}) as rt:
        sent = await rt.send("big", [tool_line("big", "{}")])
        assert (await rt.wait_run(sent.run_id)).status == "completed"
    async with runtime_at(tmp_path / "log", settings(), agents={"big": AGENT}) as rt:
        view = await rt.get_run(sent.run_id)
        assert [m.content for m in view.messages if m.role == "tool"] == [expected]
        again = await rt.send("big", [tool_line("big", "{}")], session_key=sent.session_key)
        assert (await rt.wait_run(again.run_id)).status == "completed"
        runs = [sent.run_id, again.run_id]
    async with open_event_log(tmp_path / "log", readonly=True) as log:
        assert await check_runs(log, runs) == []


async def test_a_rerun_with_another_content_threshold_finds_no_divergence(tmp_path: Path) -> None:
    """A log recorded with one `log.content_threshold` reruns clean with another: an output
    stored by digest and the same output inline are the same event; a different output is not."""
    mid = AgentSpec(name="mid", tools=["mid"])
    tools = ToolRegistry([MidTool()], enabled=["mid"])
    recorded = RunSettings(providers={"echo": EchoModel()}, tools=tools)
    async with runtime_at(tmp_path / "log", recorded, agents={"mid": mid}) as rt:
        sent = await rt.send("mid", [tool_line("mid", "{}")])
        assert (await rt.wait_run(sent.run_id)).status == "completed"
        [done] = decoded(rt.log, f"run:{sent.run_id}", ToolCallCompleted)
        assert done.output_digest is not None  # 100 kB: over the default threshold
    async with open_event_log(tmp_path / "log", readonly=True) as log:
        assert await check_runs(log, [sent.run_id], content_threshold=512 * 1024) == []
    inline = ToolCallCompleted(call_id="c1", name="big", output=big_text())
    stored = ToolCallCompleted(
        call_id="c1",
        name="big",
        output=big_text()[:256],
        output_digest=hashlib.sha256(big_text().encode()).hexdigest(),
        output_size=BIG,
    )
    other = msgspec.structs.replace(stored, output_digest=hashlib.sha256(b"other").hexdigest())
    assert _same_event(as_record(inline), as_record(stored))
    assert not _same_event(as_record(inline), as_record(other))


async def test_a_corrupted_blob_fails_verify_and_a_missing_one_fails_the_next_run(
    tmp_path: Path,
) -> None:
    """Verify re-hashes the blobs and names a changed one; a later turn whose history names a
    blob that is gone fails with a clear reason instead of sending the model a preview."""
    async with runtime_at(tmp_path / "log", settings(), agents={"big": AGENT}) as rt:
        sent = await rt.send("big", [tool_line("big", "{}")])
        assert (await rt.wait_run(sent.run_id)).status == "completed"
    [blob] = (tmp_path / "log" / "content").iterdir()
    data = bytearray(blob.read_bytes())
    data[1000] ^= 1
    blob.write_bytes(bytes(data))
    async with open_event_log(tmp_path / "log", readonly=True) as log:
        report = await log.verify()
        assert not report.ok and report.bad_content == blob.name
        assert report.reason is not None and blob.name in report.reason
    blob.unlink()
    async with runtime_at(tmp_path / "log", settings(), agents={"big": AGENT}) as rt:
        later = await rt.send("big", [user("and then?")], session_key=sent.session_key)
        view = await rt.wait_run(later.run_id)
        assert view.status == "failed"
        assert view.error is not None and f"content {blob.name} is not in" in view.error


@pytest.mark.parametrize("backend", ["memory", "postgres"])
async def test_memory_and_postgresql_logs_store_large_outputs_too(backend: str) -> None:
    """On the `memory:` log (blobs in memory) and the PostgreSQL log (blobs in its database) a
    large output is stored by digest, resolves whole, reruns clean and is verified."""
    with ExitStack() as stack:
        location = "memory:" if backend == "memory" else stack.enter_context(fresh_database())
        async with (
            open_event_log(location) as log,
            open_domain(log, settings(), agents={"big": AGENT}) as rt,
        ):
            sent = await rt.send("big", [tool_line("big", "{}")])
            view = await rt.wait_run(sent.run_id)
            assert view.status == "completed", view.error
            [tool] = [m for m in view.messages if m.role == "tool"]
            assert tool.content == big_text()
            assert max(len(r.data) for r in log.read_all(0, 10_000)) < 16 * 1024
            report = await log.verify()
            assert report.ok and report.content_checked == 1
            assert await check_runs(log, [sent.run_id]) == []


async def test_a_caller_cannot_name_a_content_digest(tmp_path: Path) -> None:
    """A message that names a content digest is refused as invalid before anything is written."""
    async with runtime_at(tmp_path / "log", settings(), agents={"big": AGENT}) as rt:
        head = rt.log.head().seq
        forged = ChatMessage(role="user", content="hi", content_digest="0" * 64)
        with pytest.raises(Invalid) as refused:
            await rt.send("big", [forged])
        assert refused.value.param == "messages.0.content_digest"
        assert rt.log.head().seq == head


async def test_media_bytes_are_stored_once_and_read_back_for_the_model(tmp_path: Path) -> None:
    """Inline media bytes go to the store (the message keeps digest and size); resolving the
    messages for a model reads the bytes back; a lost blob fails the resolve."""
    store = LocalContentStore(tmp_path / "content")
    picture = bytes(range(256)) * 8
    message = ChatMessage(
        role="user",
        content="look",
        parts=[MediaPart(kind="image", media_type="image/png", data=picture)],
    )
    [stored] = await store_media([message], store)
    [part] = stored.parts or []
    assert part.data is None and part.size == len(picture)
    assert part.digest == hashlib.sha256(picture).hexdigest()
    [resolved] = await resolve_messages([stored], [store])
    assert (resolved.parts or [])[0].data == picture
    with pytest.raises(ContentMissing):
        await resolve_messages([stored], [LocalContentStore(tmp_path / "other")])
