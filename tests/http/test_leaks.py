"""Errors tell a caller nothing about what it may not see: another key's runs and sessions
answer exactly as ones that do not exist, and 503s do not show the server's internals."""

from __future__ import annotations

from pathlib import Path

import pytest

from cuelog.http._answers import error_answer
from cuelog.runtime import ActorStopped, CuelogError, LogClosed, MailboxFull
from tests.http.operator_support import bearer, serving

WAITING = '/tool calculator {"expr": "6*7"}'


async def test_another_keys_queued_run_is_a_plain_404(tmp_path: Path) -> None:
    """A run queued in another key's session answers 404 like a run that does not exist: the
    same message (but for the id), naming no session, on every run route."""
    async with serving(tmp_path / "data") as served:
        await served.create_agent("careful", tools=["calculator"], approval="ask")
        _, alice = await served.new_key("read", "chat", "wake", name="alice")
        _, bob = await served.new_key("read", "chat", "wake", name="bob")
        for message in (WAITING, "queued behind it"):
            woke = await served.admin.post(
                "/v1/agents/careful/wake",
                json={"message": message, "session_key": "alice-secret-session", "mode": "async"},
                headers=bearer(alice),
            )
            assert woke.status_code == 202, woke.text
        queued = woke.json()["run_id"]
        seen = await served.admin.get(f"/v1/runs/{queued}", headers=bearer(alice))
        assert seen.json()["status"] == "queued", seen.text
        for method, path in [
            ("GET", "/v1/runs/{}"),
            ("GET", "/v1/runs/{}/events"),
            ("GET", "/v1/runs/{}/timeline"),
            ("POST", "/v1/runs/{}/cancel"),
        ]:
            theirs = await served.admin.request(method, path.format(queued), headers=bearer(bob))
            ghost = "run_" + "0" * 24
            none = await served.admin.request(method, path.format(ghost), headers=bearer(bob))
            assert theirs.status_code == none.status_code == 404, (path, theirs.text)
            assert "alice-secret-session" not in theirs.text
            expected = none.text.replace(ghost, queued)
            assert theirs.text == expected, (path, theirs.text, none.text)


async def test_fork_of_a_session_one_cannot_see_answers_the_same_for_every_at_seq(
    tmp_path: Path,
) -> None:
    """Forking another key's session gives the same 404 whatever `at_seq` is, as for a session
    that does not exist."""
    async with serving(tmp_path / "data") as served:
        _, alice = await served.new_key("read", "chat", "wake", name="alice")
        _, bob = await served.new_key("read", "chat", "wake", name="bob")
        woke = await served.admin.post(
            "/v1/agents/default/wake",
            json={"message": "hi", "session_key": "hers"},
            headers=bearer(alice),
        )
        assert woke.status_code == 200, woke.text
        answers = set()
        for key in ("hers", "nobodys"):
            for at_seq in (0, 1, 5, 10_000):
                forked = await served.admin.post(
                    f"/v1/sessions/{key}/fork", json={"at_seq": at_seq}, headers=bearer(bob)
                )
                assert forked.status_code == 404, forked.text
                answers.add(forked.text.replace(key, "<key>"))
        assert len(answers) == 1, answers


@pytest.mark.parametrize(
    "error",
    [
        ActorStopped("actor session:s1 stopped after 5 failures; call system.restart"),
        MailboxFull("mailbox of run:run_1 is full (256 messages)"),
        LogClosed("the log at /srv/cuelog/data is closed"),
    ],
    ids=["actor-stopped", "mailbox-full", "log-closed"],
)
def test_503_messages_are_generic(error: CuelogError) -> None:
    """A 503 from the runtime says what to do (retry) and nothing about actors, streams or
    paths; the details go to the server log."""
    answer = error_answer(error)
    assert answer.status == 503
    assert answer.headers["Retry-After"]
    for internal in ("session:", "run:", "system.restart", "/srv", "mailbox"):
        assert internal not in answer.message, answer.message
