"""Log locations: a data dir, lmdb:///path, memory: or postgresql://, and a clear refusal for the
rest."""

from __future__ import annotations

from pathlib import Path

import pytest

from cuelog.runtime import LogError, LogLocation, parse_log_location


@pytest.mark.parametrize(
    ("location", "parsed"),
    [
        ("data", LogLocation("lmdb", Path("data"))),
        ("./run:1/data", LogLocation("lmdb", Path("run:1/data"))),
        (Path("/srv/log"), LogLocation("lmdb", Path("/srv/log"))),
        ("lmdb:///srv/my%20log", LogLocation("lmdb", Path("/srv/my log"))),
        ("memory:", LogLocation("memory")),
        (
            "postgresql://u:pw@db:5433/log",
            LogLocation("postgresql", url="postgresql://u:pw@db:5433/log"),
        ),
        ("postgres://db/log", LogLocation("postgresql", url="postgres://db/log")),
    ],
)
def test_known_locations_name_their_backend(location: str | Path, parsed: LogLocation) -> None:
    """Paths and lmdb:/// URLs are LMDB data dirs; `memory:` is the in-memory log; postgresql://
    and postgres:// URLs are PostgreSQL databases."""
    assert parse_log_location(location) == parsed


@pytest.mark.parametrize(
    ("location", "message"),
    [
        ("postgresql://user:secret@db:port/cuelog", "bad port"),
        ("lmdb://relative/path", "lmdb:///absolute/path"),
        ("memory:shared", "exactly 'memory:'"),
        ("s3://bucket/log", "unknown log scheme 's3'"),
    ],
)
def test_other_locations_are_refused_clearly(location: str, message: str) -> None:
    """Unsupported or malformed locations raise LogError saying why, never leaking a password."""
    with pytest.raises(LogError, match=message) as caught:
        parse_log_location(location)
    assert "secret" not in str(caught.value)


def test_a_postgresql_location_never_shows_its_password() -> None:
    """The parsed location's repr and `redacted` form hide the URL's password."""
    where = parse_log_location("postgresql://cuelog:secret@db.internal/log?sslmode=require")
    assert where.redacted == "postgresql://cuelog:***@db.internal/log?sslmode=require"
    assert "secret" not in repr(where)
