"""Request bodies of the cuelog API (the OpenAI ones are in `_openai.py`): decoded strictly, so
an unknown field is a 400 naming it."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from cuelog.actors import (
    ID_RE,
    MAX_WEBHOOK_SECRET_CHARS,
    MIN_WEBHOOK_SECRET_CHARS,
    ApprovalPolicy,
    Budget,
    BusyPolicy,
    Scope,
)
from cuelog.http._wire import check_free_json

# What the decoder enforces is also what the OpenAPI document says (msgspec builds both); numbers
# that reach the log are bounded here, so a 2**64 is a 400 naming its field.
Id = Annotated[str, msgspec.Meta(pattern=ID_RE.pattern, max_length=128)]
KeyName = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=r"\S")]
MaxSteps = Annotated[int, msgspec.Meta(ge=1, le=1000)]
MaxTokens = Annotated[int, msgspec.Meta(ge=1, le=1 << 24)]
Temperature = Annotated[float, msgspec.Meta(ge=0, le=2)]
Seq = Annotated[int, msgspec.Meta(ge=0, le=1 << 62)]
UnixSeconds = Annotated[int, msgspec.Meta(ge=0, le=253_402_300_799)]  # up to the year 9999
Budgets = Annotated[list[Budget], msgspec.Meta(max_length=16)]
CallbackUrl = Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]
# Write-only: sealed outside the log, never answered. "" (on PATCH) removes it.
WebhookSecret = Annotated[
    str,
    msgspec.Meta(
        pattern=f"^(.{{{MIN_WEBHOOK_SECRET_CHARS},{MAX_WEBHOOK_SECRET_CHARS}}})?$",
        max_length=MAX_WEBHOOK_SECRET_CHARS,
        description=f"Signs this one's webhook deliveries ({MIN_WEBHOOK_SECRET_CHARS}-"
        f"{MAX_WEBHOOK_SECRET_CHARS} characters); write-only, never shown again. "
        '"" removes it.',
    ),
]
# Free-form JSON (metadata, tool arguments), checked by `check_free_json` after decoding.
FreeJson = Annotated[
    dict[str, Any],
    msgspec.Meta(
        extra_json_schema={"additionalProperties": {"$ref": "#/components/schemas/JsonValue"}}
    ),
]


class AgentPatch(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    name: str | None = None
    provider: str | None = None
    model: str | None = None
    system_prompt: str | None = None
    tools: list[str] | None = None
    approval: ApprovalPolicy | None = None
    tool_approval: dict[str, ApprovalPolicy] | None = None
    max_steps: MaxSteps | None = None
    max_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    callback_url: CallbackUrl | None = None
    webhook_secret: WebhookSecret | None = None
    budgets: Budgets | None = None  # replaces the agent's budgets; [] removes them


class AgentBody(AgentPatch, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A new agent: its id and any AgentPatch fields (the rest take AgentSpec defaults)."""

    id: Id


class WakeBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    message: str
    session_key: Id | None = None
    user_id: str | None = None
    metadata: FreeJson | None = None
    mode: Literal["sync", "async"] = "sync"
    callback_url: CallbackUrl | None = None

    def __post_init__(self) -> None:
        check_free_json(self.metadata, "metadata")


class SessionPatchBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    label: str | None = None
    metadata: FreeJson | None = None
    busy_policy: BusyPolicy | None = None

    def __post_init__(self) -> None:
        check_free_json(self.metadata, "metadata")


class ForkBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    at_seq: Seq
    agent_id: Id | None = None


class KeyBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    name: KeyName
    scopes: Annotated[list[Scope], msgspec.Meta(min_length=1)]
    expires_at: UnixSeconds | None = None
    webhook_secret: WebhookSecret | None = None
    budgets: Budgets = msgspec.field(default_factory=list)


class KeyPatch(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    budgets: Budgets  # replaces the key's budgets; [] removes them


class ApprovalBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    decision: Literal["approve", "deny"]
    args_digest: str
    reason: str = ""


class InvokeBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    name: str
    args: FreeJson = msgspec.field(default_factory=dict)
    dry_run: bool = False

    def __post_init__(self) -> None:
        check_free_json(self.args, "args")


class EmergencyStopBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    hold: bool = False  # also refuse new runs until `POST /v1/emergency-stop/release`
