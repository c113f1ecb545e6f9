"""One name per concept: stream names, ids and run statuses, used by every module of the domain.

Streams are `<kind>:<id>`; an actor's stream is its address written that way, so the kernel and
these helpers agree.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final, Literal

AGENT: Final = "agent"
SESSION: Final = "session"
RUN: Final = "run"
LOOP: Final = "loop"
WEBHOOK: Final = "webhook"
DELIVERY: Final = "delivery"

KEYS_STREAM: Final = "keys"
MCP_STREAM: Final = "mcp"
PROVIDERS_STREAM: Final = "providers"
TOOLS_STREAM: Final = "tools"
WEBHOOK_SECRETS_STREAM: Final = "webhook_secrets"
SYSTEM_STREAM: Final = "system"

# Agent, session, run, key and approval ids: what a client may choose and a URL path may carry.
ID_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
ID_RULE: Final = (
    "1-128 characters of letters, digits and . _ : @ - (starting with a letter or digit)"
)

RunStatus = Literal["queued", "running", "waiting_approval", "completed", "failed", "cancelled"]
TERMINAL: Final = frozenset({"completed", "failed", "cancelled"})


def is_valid_id(value: str) -> bool:
    # fullmatch: the pattern's `$` would also accept a final newline.
    return ID_RE.fullmatch(value) is not None


def agent_stream(agent_id: str) -> str:
    return f"{AGENT}:{agent_id}"


def session_stream(key: str) -> str:
    return f"{SESSION}:{key}"


def run_stream(run_id: str) -> str:
    return f"{RUN}:{run_id}"


def loop_stream(loop_id: str) -> str:
    return f"{LOOP}:{loop_id}"


def webhook_stream(run_id: str) -> str:
    return f"{WEBHOOK}:{run_id}"


def delivery_stream(delivery_id: str) -> str:
    return f"{DELIVERY}:{delivery_id}"


def idempotency_stream(scope: str, key: str) -> str:
    """A claim's stream: the key is hashed so any client-chosen text makes a valid name."""
    return "idem:" + hashlib.sha256(f"{scope}\x00{key}".encode()).hexdigest()[:40]


def stream_prefix(kind: str) -> str:
    """What every stream of `kind` starts with: list them with `log.list_streams(prefix)`."""
    return f"{kind}:"


def stream_id(stream: str, kind: str) -> str:
    """The id part of `<kind>:<id>`."""
    return stream.removeprefix(f"{kind}:")
