"""The LOG argument every command that reads a log takes: a data dir or a log URL."""

from __future__ import annotations

from pathlib import Path

import click

from cuelog.runtime import LogError, parse_log_location

Location = str | Path


class LogLocationType(click.ParamType[Location]):
    """A data dir (which must exist), `lmdb:///path` or `postgresql://…`; never `memory:`."""

    name = "LOG"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> Location:
        if isinstance(value, Path):
            value = str(value)
        assert isinstance(value, str)
        try:
            where = parse_log_location(value)
        except LogError as exc:
            self.fail(str(exc), param, ctx)
        if where.backend == "memory":
            self.fail("a memory: log lives inside one process; name a data dir or URL", param, ctx)
        if where.backend == "postgresql":
            return value
        assert where.path is not None
        if not where.path.is_dir():
            self.fail(f"no log directory at {where.path}", param, ctx)
        return where.path


def shown(location: Location) -> str:
    """The location as it may be printed (a URL without its password)."""
    return parse_log_location(location).redacted


LOG = click.argument("data_dir", metavar="LOG", type=LogLocationType())
