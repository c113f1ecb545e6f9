"""The PostgreSQL log's data keys: the keys that seal the secrets recorded in the log (provider
API keys, MCP env and header values, webhook signing secrets), in a table beside the log.

Every process sharing the log opens what any of them sealed. The table is outside the chain:
deleting a key's row leaves the log with ciphertext nobody can open, and neither the log's
events nor a copy of them (`cuelog copy`, an export) carry a key. A database backup does carry
both; see docs/operations.md.

The calls are synchronous, one round trip each on a connection of their own, like the log's
reads: keys are read when a secret's event is applied and written when a secret is set.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from typing import Any, Final, final

import psycopg

from cuelog.runtime._errors import LogError, LogUnavailable

CREATE_TABLE: Final = """CREATE TABLE IF NOT EXISTS cuelog_data_keys (
    key_id text COLLATE "C" PRIMARY KEY,
    key bytea NOT NULL)"""


@final
class PostgresKeyStore:
    """Data keys by id in `cuelog_data_keys`."""

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]], *, readonly: bool) -> None:
        self._connect = connect
        self.readonly = readonly
        self._conn: psycopg.Connection[Any] | None = None

    def get(self, key_id: str) -> bytes | None:
        rows = self._execute("SELECT key FROM cuelog_data_keys WHERE key_id = %s", [key_id])
        return bytes(rows[0][0]) if rows else None

    def put(self, key_id: str, key: bytes) -> None:
        """Store a new key (committed before this returns); an id taken already is an error."""
        self._writable()
        self._execute("INSERT INTO cuelog_data_keys (key_id, key) VALUES (%s, %s)", [key_id, key])

    def delete(self, key_id: str) -> None:
        self._writable()
        self._execute("DELETE FROM cuelog_data_keys WHERE key_id = %s", [key_id])

    def ids(self) -> set[str]:
        return {str(key_id) for (key_id,) in self._execute("SELECT key_id FROM cuelog_data_keys")}

    def _writable(self) -> None:
        if self.readonly:
            raise LogError("the data keys are open for reading only")

    def _execute(self, sql: str, params: list[object] | None = None) -> list[tuple[Any, ...]]:
        """One statement (autocommit); reconnect once if the connection was lost."""
        for attempt in (1, 2):
            conn = self._conn
            if conn is None or conn.closed:
                conn = self._conn = self._connect()
            try:
                cur = conn.execute(sql, params)
                return cur.fetchall() if cur.description is not None else []
            except psycopg.OperationalError as exc:
                self.close()
                if attempt == 2:
                    reason = str(exc).strip().splitlines()
                    raise LogUnavailable(
                        f"the data keys are unreachable: {reason[0] if reason else exc}"
                    ) from None
            except psycopg.Error as exc:
                raise LogError(f"data key statement failed: {exc}") from None
        raise AssertionError("unreachable")

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with suppress(psycopg.Error):
                conn.close()
