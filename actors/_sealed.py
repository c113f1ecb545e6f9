"""Secrets sealed for the log: AES-GCM under data keys kept outside the log.

Each owner (a provider, an MCP server, a webhook signer) gets a data key of its own; destroying
the key (on delete, or when the secrets change) leaves the log with ciphertext nobody can open.
The keys live in a key file next to an LMDB log (`KeyFile`), or in a table beside a PostgreSQL log
(`SharedKeys`), where every process sharing the log finds them.
"""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path
from typing import Protocol, final

import msgspec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cuelog.actors._errors import Invalid

_keys_decoder = msgspec.json.Decoder(dict[str, str])


class DataKeys(Protocol):
    """Where data keys are kept: read one, make one, destroy one."""

    def get(self, key_id: str) -> bytes | None: ...

    def add(self) -> tuple[str, bytes]: ...

    def destroy(self, key_id: str) -> None: ...


class KeyStore(Protocol):
    """A table of data keys beside the log (`cuelog.runtime._postgres_keys.PostgresKeyStore`)."""

    def get(self, key_id: str) -> bytes | None: ...

    def put(self, key_id: str, key: bytes) -> None: ...

    def delete(self, key_id: str) -> None: ...

    def ids(self) -> set[str]: ...


def _new_key() -> tuple[str, bytes]:
    return "pk_" + secrets.token_hex(8), AESGCM.generate_key(bit_length=256)


@final
class SharedKeys:
    """Data keys in a table beside the log, so every process sharing the log opens what any of
    them sealed; each call is one statement, committed before it returns."""

    def __init__(self, store: KeyStore) -> None:
        self._store = store

    def get(self, key_id: str) -> bytes | None:
        return self._store.get(key_id)

    def add(self) -> tuple[str, bytes]:
        key_id, key = _new_key()
        self._store.put(key_id, key)
        return key_id, key

    def destroy(self, key_id: str) -> None:
        self._store.delete(key_id)

    def take_over(self, key_file: KeyFile) -> int:
        """Move the keys of a key file (a server's from before its log was shared) into the
        table, then out of the file, so a key destroyed later is gone from both; return how
        many moved."""
        held = self._store.ids()
        moved = 0
        for key_id, key in key_file.items():
            if key_id not in held:
                self._store.put(key_id, key)
                moved += 1
            key_file.destroy(key_id)
        return moved


@final
class KeyFile:
    """Data keys by id, in a JSON file (mode 0600) that every change rewrites atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._keys: dict[str, bytes] = {}
        if path.exists():
            try:
                stored = _keys_decoder.decode(path.read_bytes())
            except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise Invalid(f"provider key file {path} is unreadable: {exc}") from None
            self._keys = {key_id: base64.b64decode(key) for key_id, key in stored.items()}

    def get(self, key_id: str) -> bytes | None:
        return self._keys.get(key_id)

    def items(self) -> list[tuple[str, bytes]]:
        return list(self._keys.items())

    def add(self) -> tuple[str, bytes]:
        key_id, key = _new_key()
        self._keys[key_id] = key
        self._write()
        return key_id, key

    def destroy(self, key_id: str) -> None:
        if self._keys.pop(key_id, None) is not None:
            self._write()

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        stored = {key_id: base64.b64encode(key).decode() for key_id, key in self._keys.items()}
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, msgspec.json.encode(stored))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _aad(owner: str, key_id: str) -> bytes:
    """Binds a ciphertext to its owner and key: one cannot be moved onto another."""
    return f"cuelog:{owner}:{key_id}".encode()


def seal(key: bytes, owner: str, key_id: str, plain: bytes) -> str:
    """AES-GCM with a fresh nonce; base64 of nonce + ciphertext."""
    nonce = secrets.token_bytes(12)
    return base64.b64encode(nonce + AESGCM(key).encrypt(nonce, plain, _aad(owner, key_id))).decode()


def open_sealed(key: bytes, owner: str, key_id: str, sealed: str) -> bytes:
    """The plaintext; raises InvalidTag for a wrong key, owner or a tampered ciphertext."""
    raw = base64.b64decode(sealed)
    return AESGCM(key).decrypt(raw[:12], raw[12:], _aad(owner, key_id))
