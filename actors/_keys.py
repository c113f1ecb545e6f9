"""API keys as events: `KeyCreated` (only the secret's sha256), `KeyBudgetsSet` and `KeyRevoked`
on stream `keys`.

The store folds the stream once at start and keeps the fold current as it appends, so a revoked
key is refused on its very next request. `cuelog keys` works on a data dir offline.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Sequence
from typing import Final, Literal, final, get_args

import msgspec

from cuelog.actors._errors import Invalid
from cuelog.actors._events import DOMAIN_CODEC, Budget, KeyBudgetsSet, KeyCreated, KeyRevoked
from cuelog.actors._names import KEYS_STREAM
from cuelog.runtime import EventLog

Scope = Literal["read", "chat", "wake", "approve", "admin"]
SCOPES: Final[tuple[str, ...]] = get_args(Scope)
KEY_PREFIX: Final = "cue_"


def key_digest(secret: str) -> str:
    """What is stored of a key: the sha256 of its secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What is shown about a key: never its secret."""

    id: str
    name: str
    scopes: list[str]
    created_at: int
    expires_at: int | None
    revoked: bool = False
    object: str = "api_key"
    budgets: list[Budget] = msgspec.field(default_factory=list)

    def usable(self, now: float) -> bool:
        return not self.revoked and (self.expires_at is None or self.expires_at > now)


@final
class KeyStore:
    """Every key ever issued, folded from the `keys` stream."""

    def __init__(self, log: EventLog) -> None:
        self._log = log
        self._by_id: dict[str, KeyInfo] = {}
        self._by_digest: dict[str, str] = {}
        for record in log.read_stream(KEYS_STREAM):
            self._apply(DOMAIN_CODEC.decode(record.type, record.data), record.ts // 1_000_000)

    def _apply(self, event: object, ts: int) -> None:
        if isinstance(event, KeyCreated):
            self._by_id[event.key_id] = KeyInfo(
                id=event.key_id,
                name=event.name,
                scopes=event.scopes,
                created_at=ts,
                expires_at=event.expires_at,
                budgets=event.budgets,
            )
            self._by_digest[event.digest] = event.key_id
        elif isinstance(event, KeyRevoked) and event.key_id in self._by_id:
            self._by_id[event.key_id] = msgspec.structs.replace(
                self._by_id[event.key_id], revoked=True
            )
        elif isinstance(event, KeyBudgetsSet) and event.key_id in self._by_id:
            self._by_id[event.key_id] = msgspec.structs.replace(
                self._by_id[event.key_id], budgets=event.budgets
            )

    def lookup(self, digest: str) -> KeyInfo | None:
        """The key with this secret digest, if it is neither revoked nor expired."""
        key_id = self._by_digest.get(digest)
        info = self._by_id.get(key_id) if key_id else None
        if info is None or not info.usable(time.time()):
            return None
        return info

    def any_issued(self) -> bool:
        return bool(self._by_id)

    def all(self) -> list[KeyInfo]:
        return sorted(self._by_id.values(), key=lambda k: (k.created_at, k.id))

    def get(self, key_id: str) -> KeyInfo | None:
        return self._by_id.get(key_id)

    async def create(
        self,
        name: str,
        scopes: Sequence[str],
        *,
        expires_at: int | None = None,
        budgets: Sequence[Budget] = (),
        actor: str | None = None,
    ) -> tuple[KeyInfo, str]:
        """Issue a key; return its info and the secret, which is never stored or shown again."""
        if not name.strip() or len(name) > 200:
            raise Invalid("name must be 1-200 characters", param="name")
        unknown = sorted(set(scopes) - set(SCOPES))
        if unknown or not scopes:
            raise Invalid(f"scopes must be some of {', '.join(SCOPES)}; got {scopes}", "scopes")
        if expires_at is not None and expires_at <= time.time():
            raise Invalid(
                "expires_at must be in the future (seconds since the Unix epoch)", "expires_at"
            )
        secret = KEY_PREFIX + secrets.token_urlsafe(24)  # 192 random bits
        key_id = "key_" + secrets.token_hex(8)
        event = KeyCreated(
            key_id=key_id,
            name=name,
            scopes=sorted(set(scopes)),
            digest=key_digest(secret),
            expires_at=expires_at,
            budgets=list(budgets),
        )
        [record] = await self._log.append(KEYS_STREAM, [event], actor=actor)
        self._apply(event, record.ts // 1_000_000)
        return self._by_id[key_id], secret

    async def revoke(self, key_id: str, *, actor: str | None = None) -> KeyInfo | None:
        info = self._by_id.get(key_id)
        if info is None:
            return None
        if not info.revoked:
            event = KeyRevoked(key_id=key_id)
            [record] = await self._log.append(KEYS_STREAM, [event], actor=actor)
            self._apply(event, record.ts // 1_000_000)
        return self._by_id[key_id]

    async def set_budgets(
        self, key_id: str, budgets: Sequence[Budget], *, actor: str | None = None
    ) -> KeyInfo | None:
        """Replace a key's budgets; None if there is no such key."""
        if key_id not in self._by_id:
            return None
        event = KeyBudgetsSet(key_id=key_id, budgets=list(budgets))
        [record] = await self._log.append(KEYS_STREAM, [event], actor=actor)
        self._apply(event, record.ts // 1_000_000)
        return self._by_id[key_id]
