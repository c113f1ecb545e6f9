"""Agents' and keys' webhook secrets: sealed in the log under data keys of the key file, read
back after a restart, gone (and their key destroyed) when cleared, and harmless when the key
file lost their key; a server without its own secret starts sending once one is set."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
import trio

from cuelog.actors import (
    AgentSpec,
    Invalid,
    KeyFile,
    SharedKeys,
    WebhookSettings,
    agent_signer,
    key_signer,
    open_domain,
    open_webhooks,
)
from cuelog.actors._webhook_secrets import WebhookSecrets
from cuelog.runtime import open_event_log, shared_data_keys
from tests.actors.domain_support import make_settings, user
from tests.http.webhook_receiver import receiver
from tests.postgres import fresh_database

AGENT_SECRET = "agent-secret-0123456789-abcdef"


async def test_secrets_are_sealed_and_survive_a_restart_until_cleared(tmp_path: Path) -> None:
    """The log holds only ciphertext; a new store over the same log and key file reads the
    secret back; clearing it destroys its data key; a store whose key file lost the key has
    no secret for that owner (a wider one signs)."""
    keys_path = tmp_path / "keys.json"
    async with open_event_log(tmp_path / "data") as log:
        store = WebhookSecrets(log, KeyFile(keys_path))
        await store.set(agent_signer("a"), AGENT_SECRET)
        await store.set(key_signer("key_1"), "another-secret-value")
        with pytest.raises(Invalid):
            await store.set(agent_signer("a"), "short")
        raw = b"".join(bytes(r.data) for r in log.read_stream("webhook_secrets"))
        assert AGENT_SECRET.encode() not in raw and b"another-secret" not in raw

        again = WebhookSecrets(log, KeyFile(keys_path))
        assert again.get(agent_signer("a")) == AGENT_SECRET
        assert again.get(key_signer("key_1")) == "another-secret-value"

        stored = msgspec.json.decode(keys_path.read_bytes())
        await again.clear(agent_signer("a"))
        assert again.get(agent_signer("a")) is None
        left = msgspec.json.decode(keys_path.read_bytes())
        assert len(left) == len(stored) - 1
        assert WebhookSecrets(log, KeyFile(keys_path)).get(agent_signer("a")) is None

        keys_path.unlink()
        lost = WebhookSecrets(log, KeyFile(keys_path))
        assert lost.get(key_signer("key_1")) is None and not lost.any()


async def test_an_outbox_without_a_server_secret_starts_when_an_agent_secret_is_set(
    tmp_path: Path,
) -> None:
    """With no webhooks.secret the sender waits; once an agent has a secret, that agent's
    default callback is delivered, signed with it."""
    with receiver(secret=AGENT_SECRET) as hook:
        hooked = {"hooked": AgentSpec(name="hooked", callback_url=hook.url)}
        async with (
            open_event_log("memory:") as log,
            open_domain(log, make_settings(), agents=hooked) as domain,
            open_webhooks(
                domain, WebhookSettings(allow_private=True), key_file=KeyFile(tmp_path / "k.json")
            ) as webhooks,
        ):
            sent = await domain.send("hooked", [user("hello")])
            await domain.wait_run(sent.run_id)
            await trio.sleep(0.2)
            assert hook.received == []
            await webhooks.set_secret(agent_signer("hooked"), AGENT_SECRET)
            with trio.fail_after(20):
                while True:
                    if hook.successes():
                        break
                    await trio.sleep(0.02)
            [got] = hook.successes()
            assert got.signed and got.headers["Cuelog-Signer"] == "agent:hooked"


async def test_secrets_sealed_by_one_process_open_in_another_sharing_a_postgres_log(
    tmp_path: Path,
) -> None:
    """Two processes' stores on one PostgreSQL log, their data keys in the table beside it: a
    key file's keys move into the table (and out of the file); a secret set through one is
    read by the other once it catches up (or follows); changes through both leave one key per
    owner in the table (each destroys the key its change retired)."""
    keys_path = tmp_path / "keys.json"
    with fresh_database() as url:
        async with open_event_log(url) as first_log, open_event_log(url) as second_log:
            old_file = KeyFile(keys_path)
            before = WebhookSecrets(first_log, old_file)
            await before.set(key_signer("key_1"), "sealed-under-a-key-file")
            table = shared_data_keys(first_log)
            assert table is not None and not table.ids()
            first_keys = SharedKeys(table)
            assert first_keys.take_over(KeyFile(keys_path)) == 1
            assert msgspec.json.decode(keys_path.read_bytes()) == {}
            second_table = shared_data_keys(second_log)
            assert second_table is not None
            first = WebhookSecrets(first_log, first_keys)
            second = WebhookSecrets(second_log, SharedKeys(second_table))
            assert second.get(key_signer("key_1")) == "sealed-under-a-key-file"

            changed = trio.Event()
            second.on_change = changed.set
            async with trio.open_nursery() as nursery:
                nursery.start_soon(second.follow)
                await first.set(agent_signer("a"), AGENT_SECRET)
                with trio.fail_after(10):
                    await changed.wait()
                nursery.cancel_scope.cancel()
            assert second.get(agent_signer("a")) == AGENT_SECRET
            await second.set(agent_signer("a"), "set-through-the-second-one")
            await first.set(agent_signer("a"), "set-through-the-first-again")  # catches up
            await second.clear(key_signer("key_1"))
            first.catch_up()
            second.catch_up()
            for store in (first, second):
                assert store.get(agent_signer("a")) == "set-through-the-first-again"
                assert store.get(key_signer("key_1")) is None
            assert len(table.ids()) == 1
