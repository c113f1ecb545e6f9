"""The outbox follows the log from a checkpoint: runs that settle while it is not running (a
crash, a restart) are delivered when it starts again, once, and an agent's default callback
applies to every run of that agent."""

from __future__ import annotations

import msgspec
import trio

from cuelog.actors import AgentSpec, Domain, WebhookSettings, open_domain, open_webhooks
from cuelog.actors._webhooks import CHECKPOINT
from cuelog.runtime import EventLog, open_event_log
from tests.actors.domain_support import make_settings, user
from tests.http.webhook_receiver import SECRET, Receiver, receiver

SETTINGS = WebhookSettings(secret=SECRET, allow_private=True, backoff_base=0.05)


async def run_once(domain: Domain, agent: str, text: str) -> str:
    sent = await domain.send(agent, [user(text)])
    await domain.wait_run(sent.run_id)
    return sent.run_id


async def delivered_runs(hook: Receiver, count: int) -> list[str]:
    with trio.fail_after(20):
        while True:
            got = hook.successes()
            if len(got) >= count:
                return [msgspec.json.decode(r.body)["data"]["run_id"] for r in got]
            await trio.sleep(0.02)


async def test_runs_settled_while_the_outbox_was_down_are_delivered_once() -> None:
    """An agent with a default callback: a run settled before the outbox ever ran, and runs
    settled between two outbox lifetimes, are each delivered exactly once (the checkpoint and
    the at-most-once queuing per settling event)."""
    with receiver() as hook:
        hooked = {"hooked": AgentSpec(name="hooked", callback_url=hook.url)}
        async with (
            open_event_log("memory:") as log,
            open_domain(log, make_settings(), agents=hooked) as domain,
        ):
            first = await run_once(domain, "hooked", "before any outbox")
            quiet = await run_once(domain, "default", "no callback")
            async with open_webhooks(domain, SETTINGS):
                assert await delivered_runs(hook, 1) == [first]
                second = await run_once(domain, "hooked", "while up")
                assert await delivered_runs(hook, 2) == [first, second]
            assert log.load_snapshot(CHECKPOINT) is not None
            third = await run_once(domain, "hooked", "while down")
            async with open_webhooks(domain, SETTINGS):
                assert await delivered_runs(hook, 3) == [first, second, third]
                await trio.sleep(0.3)  # time for a wrong second delivery to show
            assert len(hook.received) == 3
            assert quiet not in await delivered_runs(hook, 3)
            assert _deliveries(log) == 3


def _deliveries(log: EventLog) -> int:
    return len(log.list_streams("delivery:", limit=100))
