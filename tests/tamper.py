"""Edit a closed log's LMDB file directly, as an attacker with disk access would."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import lmdb


class Raw(NamedTuple):
    """A write transaction on the log's LMDB file and its named databases."""

    txn: Any
    events: Any
    streams: Any
    meta: Any


@contextmanager
def tampered(path: Path) -> Iterator[Raw]:
    """Edit the closed log directly; the edits commit when the block ends."""
    env = lmdb.open(str(path), max_dbs=8)
    try:
        dbs = [env.open_db(name) for name in (b"events", b"streams", b"meta")]
        with env.begin(write=True) as txn:
            yield Raw(txn, *dbs)
    finally:
        env.close()
