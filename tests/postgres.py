"""A fresh PostgreSQL database per test on the local server (127.0.0.1:5432, trust auth).

Each database is created from `template0`, named `cuelog_test_<random>` and dropped afterwards,
even while connections to it remain (`WITH (FORCE)`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

import psycopg

SERVER: Final = os.environ.get("CUELOG_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")


def admin() -> psycopg.Connection[tuple[object, ...]]:
    """A connection to the server's `postgres` database, for creating and dropping others."""
    return psycopg.connect(f"{SERVER}/postgres", autocommit=True, connect_timeout=5)


@contextmanager
def fresh_database() -> Iterator[str]:
    """Create an empty database; yield its URL; drop it."""
    name = f"cuelog_test_{os.urandom(6).hex()}"
    with admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    try:
        yield f"{SERVER}/{name}"
    finally:
        with admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run_sql(url: str, sql: str, params: list[object] | None = None) -> list[tuple[object, ...]]:
    """Run one statement on the database at `url` (autocommit) and return its rows, if any."""
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description is not None else []
