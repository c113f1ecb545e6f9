"""JSON logs carry exceptions as structured fields: one JSON object per line, no text traceback."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = """
import structlog
from cuelog.runtime import configure_logging

configure_logging(json=True)
try:
    {}["missing"]
except KeyError as exc:
    structlog.get_logger("t").error("it broke", exc_info=exc)
"""


def test_an_exception_is_one_json_line_with_a_structured_traceback() -> None:
    """A logged exception is a single JSON line whose `exception` field lists type, message
    and frames (the multi-line text traceback is gone)."""
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, timeout=60
    )
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    entry = json.loads(lines[0])
    assert entry["event"] == "it broke"
    [failure] = entry["exception"]
    assert failure["exc_type"] == "KeyError"
    assert failure["frames"], failure
