"""Debugging from the audit log: timelines, state at any seq, re-execution, fork and export."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lmdb
import msgspec
import pytest
import trio

from cuelog.actors import (
    DOMAIN_CODEC,
    ChatMessage,
    EchoModel,
    ModelRequested,
    RunActor,
    RunSettings,
    SessionState,
    ToolRegistry,
    check_runs,
    fold_session,
    open_domain,
    recorded_runs,
)
from cuelog.runtime import Event, open_event_log
from tests.support import CUELOG

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "fixtures" / "golden"


@pytest.fixture
def golden(tmp_path: Path) -> Path:
    """A private copy of the golden data dir (opening a log writes its lock file)."""
    copy = tmp_path / "golden"
    copy.mkdir()
    shutil.copy(GOLDEN / "data.mdb", copy / "data.mdb")
    return copy


def cuelog(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CUELOG, *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


def test_golden_runs_replay_without_divergence(golden: Path) -> None:
    """`cuelog replay --check` re-executes every recorded golden run and finds no divergence."""
    result = cuelog("replay", golden, "--check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "8 run(s) re-executed" in result.stdout
    assert "no divergence" in result.stdout


class ChattierRunActor(RunActor):
    """A deliberately changed decide step: it counts one message too many."""

    async def decide(self, state: Any, command: Any) -> Sequence[Event]:
        events = await super().decide(state, command)
        return [
            msgspec.structs.replace(e, message_count=e.message_count + 1)
            if isinstance(e, ModelRequested)
            else e
            for e in events
        ]


async def test_changed_decide_is_reported_at_the_first_differing_seq(golden: Path) -> None:
    """A changed decide step yields a divergence naming the seq of the first ModelRequested."""
    async with open_event_log(golden, readonly=True) as log:
        runs = recorded_runs(log)
        divergences = await check_runs(log, runs, run_actor=ChattierRunActor)
        assert len(divergences) == len(runs)
        first = min(divergences, key=lambda d: d.recorded_seq or 0)
        events = log.read_stream(f"run:{first.run_id}")
        expected = next(e.seq for e in events if e.type == "ModelRequested")
        assert first.recorded_seq == expected
        assert first.recorded is not None and first.replayed is not None
        assert first.recorded["type"] == first.replayed["type"] == "ModelRequested"
        assert (
            first.replayed["data"]["message_count"] == first.recorded["data"]["message_count"] + 1
        )


def test_check_cli_exits_1_and_shows_both_events(golden: Path) -> None:
    """A run whose recorded tool output was altered diverges: exit 1 with both events printed."""
    env = lmdb.open(str(golden), max_dbs=8)
    events = env.open_db(b"events")
    with env.begin(write=True) as txn:
        for key, value in txn.cursor(db=events):
            if b"ModelRequested" in value and b"message_count\x01" in value:
                # The record now says the model saw two messages; today's code sends one.
                txn.put(key, value.replace(b"message_count\x01", b"message_count\x02"), db=events)
                break
    env.close()
    result = cuelog("replay", golden, "--check")
    assert result.returncode == 1, result.stdout
    assert (
        "DIVERGED" in result.stdout
        and "recorded:" in result.stdout
        and "replayed:" in result.stdout
    )


def test_timeline_of_a_session_includes_its_runs(golden: Path) -> None:
    """`cuelog replay --session` lists the session's events and its runs' events in seq order."""
    everything = [
        json.loads(line) for line in cuelog("replay", golden, "--all", "--json").stdout.splitlines()
    ]
    session = next(e["stream"] for e in everything if e["type"] == "SessionCreated")
    key = session.removeprefix("session:")
    rows = [
        json.loads(line)
        for line in cuelog("replay", golden, "--session", key, "--json").stdout.splitlines()
    ]
    seqs = [row["seq"] for row in rows]
    assert seqs == sorted(seqs)
    assert {row["stream"].split(":")[0] for row in rows} == {"session", "run"}
    assert all(set(row) == {"seq", "time", "actor", "stream", "type", "summary"} for row in rows)
    assert cuelog("replay", golden).returncode == 2


def test_state_at_every_seq_matches_an_independent_fold(golden: Path) -> None:
    """`cuelog state --at SEQ` equals folding the session's events up to SEQ, at every seq."""
    everything = [
        json.loads(line) for line in cuelog("replay", golden, "--all", "--json").stdout.splitlines()
    ]
    key = next(e["stream"] for e in everything if e["type"] == "SessionCreated").removeprefix(
        "session:"
    )
    state = SessionState()
    for row in everything:
        if row["stream"] != f"session:{key}":
            continue
        raw = trio.run(_read_payload, golden, row["seq"])
        state = fold_session(state, raw)
        shown = json.loads(
            cuelog("state", golden, "--session", key, "--at", str(row["seq"])).stdout
        )
        assert shown == json.loads(msgspec.json.encode(state))


async def _read_payload(path: Path, seq: int) -> Event:
    async with open_event_log(path, readonly=True) as log:
        event = log.read_event(seq)
        assert event is not None
        return DOMAIN_CODEC.decode(event.type, event.data)


async def test_fork_then_continue_both(tmp_path: Path) -> None:
    """A fork starts with the parent's history at the seq, names parent, seq and hash, and both
    sessions then go on independently."""
    async with open_event_log(tmp_path / "log") as log:
        settings = RunSettings(providers={"echo": EchoModel()}, tools=ToolRegistry.builtins())
        async with open_domain(log, settings) as runtime:
            first = await runtime.send("default", [ChatMessage(role="user", content="one")])
            await runtime.wait_run(first.run_id)
            at_seq = log.head().seq
            second = await runtime.send(
                "default", [ChatMessage(role="user", content="two")], session_key=first.session_key
            )
            await runtime.wait_run(second.run_id)
            fork = await runtime.fork_session(first.session_key, at_seq)
            created = log.read_stream(f"session:{fork.key}")[0]
            payload = msgspec.msgpack.decode(created.data)
            assert payload["parent_session"] == first.session_key
            assert payload["parent_seq"] == at_seq
            assert payload["parent_hash"] == log.read_event(at_seq).hash.hex()  # type: ignore[union-attr]
            assert [m.content for m in fork.messages] == ["one", "Echo: one"]
            third = await runtime.send(
                "default", [ChatMessage(role="user", content="three")], session_key=fork.key
            )
            await runtime.wait_run(third.run_id)
            parent = await runtime.get_session(first.session_key)
            child = await runtime.get_session(fork.key)
            assert [m.content for m in parent.messages][-2:] == ["two", "Echo: two"]
            assert [m.content for m in child.messages] == [
                "one",
                "Echo: one",
                "three",
                "Echo: three",
            ]


def _readme_verifier(tmp_path: Path) -> Path:
    readme = (ROOT / "README.md").read_text()
    match = re.search(r'```python\n("""Verify a `cuelog export.*?)```', readme, re.S)
    assert match, "the README lost its export verifier"
    script = tmp_path / "verify_export.py"
    script.write_text(match.group(1))
    return script


def test_export_and_the_readme_script_agree_with_verify(golden: Path, tmp_path: Path) -> None:
    """The README's stdlib script accepts an intact export, and after a payload edit both it and
    `cuelog verify` reject the log."""
    script = _readme_verifier(tmp_path)
    export = tmp_path / "events.jsonl"
    export.write_text(cuelog("export", golden, "--jsonl").stdout)
    ok = subprocess.run(
        [sys.executable, str(script), str(export)], capture_output=True, text=True, check=False
    )
    assert ok.returncode == 0 and ok.stdout.startswith("ok"), ok.stdout + ok.stderr
    assert cuelog("verify", golden).returncode == 0
    env = lmdb.open(str(golden), max_dbs=8)
    events = env.open_db(b"events")
    with env.begin(write=True) as txn:
        value = txn.get((10).to_bytes(8, "big"), db=events)
        assert value is not None
        txn.put((10).to_bytes(8, "big"), value[:-1] + bytes([value[-1] ^ 1]), db=events)
    env.close()
    verify = cuelog("verify", golden)
    assert verify.returncode == 1 and "seq 10" in verify.stdout
    export.write_text(cuelog("export", golden, "--jsonl").stdout)
    bad = subprocess.run(
        [sys.executable, str(script), str(export)], capture_output=True, text=True, check=False
    )
    assert bad.returncode != 0 and "seq 10" in bad.stderr
    window = cuelog("export", golden, "--jsonl", "--from", "5", "--to", "7").stdout.splitlines()
    assert [json.loads(line)["seq"] for line in window] == [5, 6, 7]


HOSTILE = "oops [/nope] [link=https://x]"


async def _session_with_message(path: Path, content: str) -> str:
    async with open_event_log(path) as log:
        settings = RunSettings(providers={"echo": EchoModel()}, tools=ToolRegistry.builtins())
        async with open_domain(log, settings) as runtime:
            sent = await runtime.send("default", [ChatMessage(role="user", content=content)])
            await runtime.wait_run(sent.run_id)
            return sent.session_key


def _run_in_terminal(*args: str | Path) -> tuple[int, str]:
    """Run the CLI with its stdout on a pseudo-terminal (so rich draws its table); return the
    exit code and what the terminal showed."""
    leader, follower = os.openpty()
    env = {**os.environ, "COLUMNS": "400", "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    with subprocess.Popen(
        [CUELOG, *map(str, args)], stdout=follower, stderr=subprocess.STDOUT, env=env
    ) as proc:
        os.close(follower)
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's other end closed
                break
            if not chunk:
                break
            shown += chunk
        code = proc.wait(timeout=60)
    os.close(leader)
    return code, re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\]8;[^\x1b]*\x1b\\\\", "", shown.decode())


def test_timeline_on_a_terminal_prints_markup_in_messages_literally(tmp_path: Path) -> None:
    """`cuelog timeline --session` drawing its table on a terminal shows a user message with
    rich markup (`[/nope]`, `[link=…]`) as written and exits 0."""
    key = trio.run(_session_with_message, tmp_path / "log", HOSTILE)
    code, shown = _run_in_terminal("timeline", tmp_path / "log", "--session", key)
    assert code == 0, shown
    assert HOSTILE in shown, shown
