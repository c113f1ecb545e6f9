"""Webhook signing secrets of agents and API keys, sealed for the log.

A secret is recorded on stream `webhook_secrets` only as AES-GCM ciphertext under a data key of
its own kept outside the log (with the keys that seal provider and MCP secrets: a key file, or
the table beside a PostgreSQL log), so neither the log nor its export can reveal it. Setting a
new secret or clearing it destroys the old data key. The plaintext lives in memory only, for
signing; no answer ever carries it.

Several processes sharing a PostgreSQL log each hold the secrets: each catches up with the stream
before it signs, and `follow` takes up what the others record as it comes (see `SharedStream`).

A delivery is signed with the most specific secret there is: its agent's, else its API key's,
else the server's `webhooks.secret`. The `Cuelog-Signer` header names which one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, final

from cryptography.exceptions import InvalidTag

from cuelog.actors._errors import Invalid
from cuelog.actors._events import WebhookSecretCleared, WebhookSecretSet
from cuelog.actors._names import WEBHOOK_SECRETS_STREAM
from cuelog.actors._sealed import DataKeys, open_sealed, seal
from cuelog.actors._shared_stream import SharedStream
from cuelog.runtime import EventLog

MIN_SECRET_CHARS: Final = 16
MAX_SECRET_CHARS: Final = 256
SERVER_SIGNER: Final = "server"


def agent_signer(agent_id: str) -> str:
    return f"agent:{agent_id}"


def key_signer(key_id: str) -> str:
    return f"key:{key_id}"


def check_secret(secret: str, param: str = "webhook_secret") -> None:
    if not MIN_SECRET_CHARS <= len(secret) <= MAX_SECRET_CHARS:
        raise Invalid(
            f"{param} must be {MIN_SECRET_CHARS}-{MAX_SECRET_CHARS} characters", param=param
        )


@final
class WebhookSecrets:
    """The secrets by owner (`agent:<id>`, `key:<id>`), folded from their stream at start and
    kept current as they change (here or, sharing a PostgreSQL log, in another process)."""

    def __init__(self, log: EventLog, key_file: DataKeys | None) -> None:
        self._keys = key_file
        self._secrets: dict[str, str] = {}
        self._key_ids: dict[str, str] = {}
        self._stream = SharedStream(log, WEBHOOK_SECRETS_STREAM, self._apply)
        self._stream.catch_up()

    @property
    def on_change(self) -> Callable[[], None] | None:
        """Called after catching up took up a change."""
        return self._stream.on_change

    @on_change.setter
    def on_change(self, callback: Callable[[], None] | None) -> None:
        self._stream.on_change = callback

    def catch_up(self) -> None:
        """Take up what was recorded since (through any process)."""
        self._stream.catch_up()

    async def follow(self) -> None:
        """Take up changes other processes record, as they come (until cancelled)."""
        await self._stream.follow()

    def _apply(self, event: object) -> None:
        if isinstance(event, WebhookSecretSet):
            self._key_ids[event.owner] = event.key_id
            self._secrets.pop(event.owner, None)
            key = self._keys.get(event.key_id) if self._keys is not None else None
            if key is None:
                return  # its key is gone: the owner signs with a wider secret
            try:
                plain = open_sealed(key, _aad_owner(event.owner), event.key_id, event.sealed)
            except (InvalidTag, ValueError):
                return
            self._secrets[event.owner] = plain.decode()
        elif isinstance(event, WebhookSecretCleared):
            self._key_ids.pop(event.owner, None)
            self._secrets.pop(event.owner, None)

    def get(self, owner: str) -> str | None:
        return self._secrets.get(owner)

    def has(self, owner: str) -> bool:
        return owner in self._secrets

    def any(self) -> bool:
        return bool(self._secrets)

    async def set(self, owner: str, secret: str, *, actor: str | None = None) -> None:
        """Seal `secret` under a new data key and record it; the owner's old key is destroyed."""
        check_secret(secret)
        if self._keys is None:
            raise Invalid("this server has no key file to seal webhook secrets", "webhook_secret")
        key_id, key = self._keys.add()
        event = WebhookSecretSet(
            owner=owner,
            key_id=key_id,
            sealed=seal(key, _aad_owner(owner), key_id, secret.encode()),
        )
        recorded = False
        try:
            old = await self._stream.record(event, lambda: self._key_ids.get(owner), actor=actor)
            recorded = True
        finally:
            if not recorded:
                self._keys.destroy(key_id)  # the log refused: the new key seals nothing
        if old is not None:
            self._keys.destroy(old)

    async def clear(self, owner: str, *, actor: str | None = None) -> None:
        """Forget the owner's secret and destroy its key (nothing to do without one)."""
        self.catch_up()
        if owner not in self._key_ids:
            return
        event = WebhookSecretCleared(owner=owner)
        old = await self._stream.record(event, lambda: self._key_ids.get(owner), actor=actor)
        if old is not None and self._keys is not None:
            self._keys.destroy(old)


def _aad_owner(owner: str) -> str:
    return f"webhook:{owner}"
