"""Domain events: everything agents, sessions and runs record. The log is their only state.

Streams: `agent:<id>`, `session:<key>`, `run:<id>`. New fields go at the end with defaults; a
changed shape bumps `__schema__` and registers an upcaster on `DOMAIN_CODEC`.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

import msgspec

from cuelog.actors._messages import ChatMessage, ToolCall, ToolSpec, Usage
from cuelog.runtime import Event, EventCodec, RecordedEvent, event_type

ApprovalPolicy = Literal["auto", "ask", "reject"]
BusyPolicy = Literal["enqueue", "reject", "interrupt"]
# Calendar periods (UTC) start over at their boundary; rolling ones count the last 24 hours,
# 7 or 30 days, by the hour.
BudgetPeriod = Literal["day", "week", "month", "24h", "7d", "30d"]


class Budget(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A spending limit for an agent or an API key: tokens and/or cost (priced from
    `[prices]`) per period. A run is refused at its start once either is reached."""

    period: BudgetPeriod
    max_tokens: Annotated[int, msgspec.Meta(ge=1, le=1 << 62)] | None = None
    max_cost: Annotated[float, msgspec.Meta(gt=0, le=1e15)] | None = None

    def __post_init__(self) -> None:
        if self.max_tokens is None and self.max_cost is None:
            raise ValueError("a budget needs max_tokens, max_cost or both")


class RequestOptions(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What one chat request asked for beyond its agent's definition.

    `client_tools` are functions the client runs itself: offered to the model beside the agent's
    tools (shadowing one of the same name), a call to one ends the run with `tool_calls`.
    `upstream` holds the request's other model fields (seed, stop, response_format...), passed
    as sent to an OpenAI-compatible upstream; `end_user` is who the client acts for.
    """

    client_tools: list[ToolSpec] = msgspec.field(default_factory=list)
    tool_choice: Any = None
    upstream: dict[str, Any] = msgspec.field(default_factory=dict)
    end_user: str | None = None

    def is_client_tool(self, name: str) -> bool:
        return any(tool.name == name for tool in self.client_tools)


class AgentSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What an agent is: its model, prompt, tools and limits. A run's spec also carries what
    the request that started it asked for (`request`); an agent's own spec never does."""

    name: str = ""
    provider: str = "echo"
    model: str = "echo-1"
    system_prompt: str = ""
    tools: list[str] = msgspec.field(default_factory=list)
    approval: ApprovalPolicy = "auto"
    tool_approval: dict[str, ApprovalPolicy] = msgspec.field(default_factory=dict)
    max_steps: int = 8
    max_tokens: int = 1024
    temperature: float | None = None
    request: RequestOptions | None = None
    callback_url: str | None = None  # where its runs' outcomes are delivered by default
    budgets: list[Budget] = msgspec.field(default_factory=list)


# -- agents ------------------------------------------------------------------------------------


class AgentCreated(Event, tag="AgentCreated", frozen=True):
    agent_id: str
    spec: AgentSpec


class AgentUpdated(Event, tag="AgentUpdated", frozen=True):
    spec: AgentSpec


class AgentDeleted(Event, tag="AgentDeleted", frozen=True):
    pass


# -- sessions ----------------------------------------------------------------------------------


class SessionCreated(Event, tag="SessionCreated", frozen=True):
    session_key: str
    agent_id: str
    owner: str | None = None
    busy_policy: BusyPolicy = "enqueue"
    label: str | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    parent_session: str | None = None
    parent_seq: int | None = None
    parent_hash: str | None = None
    history: list[ChatMessage] = msgspec.field(default_factory=list)


class MessageAccepted(Event, tag="MessageAccepted", frozen=True):
    """Messages are in the inbox for a run: durable before they are acknowledged.

    Usually one user message; a stateless chat completion brings its whole conversation.
    """

    run_id: str
    messages: list[ChatMessage]
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    # The agent's definition when the message was sent: the run starts with it without asking
    # the agent again. None in logs written before it travelled with the message.
    spec: AgentSpec | None = None


class RunAssigned(Event, tag="RunAssigned", frozen=True):
    """The session started (or restarted) the run for a queued message."""

    run_id: str


class RunSettled(Event, tag="RunSettled", frozen=True):
    """A run ended; its assistant and tool messages join the history."""

    run_id: str
    status: str
    messages: list[ChatMessage] = msgspec.field(default_factory=list)


class SessionReset(Event, tag="SessionReset", frozen=True):
    pass


class SessionPatched(Event, tag="SessionPatched", frozen=True):
    label: str | None = None
    metadata: dict[str, Any] | None = None
    busy_policy: BusyPolicy | None = None


class SessionDeleted(Event, tag="SessionDeleted", frozen=True):
    pass


# -- runs --------------------------------------------------------------------------------------


class RunStarted(Event, tag="RunStarted", frozen=True):
    """A run began. Its conversation is the history of the session stream `history_stream` as
    of its version `history_version`, then `messages` (the messages this run brought), with the
    agent's system prompt in front. Runs recorded before the reference existed have no
    `history_stream`: their `messages` are the whole conversation, prompt included."""

    run_id: str
    session_key: str
    agent_id: str
    spec: AgentSpec
    messages: list[ChatMessage]
    owner: str | None = None
    history_stream: str | None = None
    history_version: int = 0


class ModelRequested(Event, tag="ModelRequested", frozen=True):
    step: int
    message_count: int
    model: str = ""


class AssistantDelta(Event, tag="AssistantDelta", frozen=True):
    step: int
    text: str


class ToolCallRequested(Event, tag="ToolCallRequested", frozen=True):
    step: int
    call: ToolCall


class ApprovalRequested(Event, tag="ApprovalRequested", frozen=True):
    approval_id: str
    call: ToolCall
    args_digest: str


class ApprovalGranted(Event, tag="ApprovalGranted", frozen=True):
    approval_id: str
    by: str | None = None


class ApprovalDenied(Event, tag="ApprovalDenied", frozen=True):
    approval_id: str
    by: str | None = None
    reason: str = ""


class ToolCallCompleted(Event, tag="ToolCallCompleted", frozen=True):
    """A tool answered. An output over `log.content_threshold` bytes is in the log's content
    store: `output_digest` names it, `output_size` is its size in bytes, and `output` holds only
    its first characters (a preview for readers that do not fetch the whole)."""

    call_id: str
    name: str
    output: str
    output_digest: str | None = None
    output_size: int | None = None


class ToolCallFailed(Event, tag="ToolCallFailed", frozen=True):
    call_id: str
    name: str
    error: str


class AssistantMessage(Event, tag="AssistantMessage", frozen=True):
    step: int
    message: ChatMessage
    finish_reason: str
    usage: Usage = msgspec.field(default_factory=Usage)


class RunCompleted(Event, tag="RunCompleted", frozen=True):
    """The run's answer. `finish_reason` is its last model step's (`length` when the token limit
    cut it); with `tool_calls` it ended calling client functions (`tool_calls`), whose results
    the client sends in its next request."""

    usage: Usage
    content: str
    finish_reason: str = "stop"
    tool_calls: list[ToolCall] | None = None


class RunFailed(Event, tag="RunFailed", frozen=True):
    reason: str
    usage: Usage | None = None


class RunCancelled(Event, tag="RunCancelled", frozen=True):
    reason: str = "cancelled"


# -- idempotent requests -----------------------------------------------------------------------


class RequestClaimed(Event, tag="RequestClaimed", frozen=True):
    """An `Idempotency-Key` was used: what it was used for and the run it created.

    Stream `idem:<digest of scope and key>`; the first claim wins (expected version 0).
    """

    body_digest: str
    route: str
    run_id: str
    session_key: str


# -- operators -------------------------------------------------------------------------------


class KeyCreated(Event, tag="KeyCreated", frozen=True):
    """An API key was issued; only the sha256 of the secret is kept."""

    key_id: str
    name: str
    scopes: list[str]
    digest: str
    expires_at: int | None = None  # seconds since the Unix epoch
    budgets: list[Budget] = msgspec.field(default_factory=list)


class KeyRevoked(Event, tag="KeyRevoked", frozen=True):
    key_id: str


class KeyBudgetsSet(Event, tag="KeyBudgetsSet", frozen=True):
    """A key's budgets replaced (an empty list: none)."""

    key_id: str
    budgets: list[Budget]


class EmergencyStopChanged(Event, tag="EmergencyStopChanged", frozen=True):
    """New runs refused (`stopped`) or allowed again, and every active run cancelled on stop."""

    stopped: bool
    cancelled_runs: int = 0
    # Cluster mode: the node that recorded it, and whether it was a stop (every node cancels its
    # active runs) rather than a release.
    node: str | None = None
    stop: bool = False


# -- MCP servers -------------------------------------------------------------------------------


class McpServerConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How to reach one MCP server: a command on stdio, or a streamable HTTP URL."""

    transport: Literal["stdio", "http"]
    command: str | None = None
    args: list[str] = msgspec.field(default_factory=list)
    env: dict[str, str] = msgspec.field(default_factory=dict)
    url: str | None = None
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    enabled: bool = True
    timeout: float = 60.0  # seconds one tool call may take


class McpServerSaved(Event, tag="McpServerSaved", frozen=True):
    """An MCP server was added or changed (stream `mcp`); the whole config, as it now is. The
    values of `env` and `headers` are blank here: they are only in `sealed` (AES-GCM under key
    `key_id` of the key file kept outside the log)."""

    server_id: str
    config: McpServerConfig
    key_id: str = ""
    sealed: str = ""  # base64 of nonce + ciphertext of {"env": ..., "headers": ...}


class McpServerDeleted(Event, tag="McpServerDeleted", frozen=True):
    server_id: str


# -- model providers ---------------------------------------------------------------------------


class ProviderSaved(Event, tag="ProviderSaved", frozen=True):
    """An OpenAI-compatible upstream was added or changed (stream `providers`). The API key and
    header values are only in `sealed`: AES-GCM under key `key_id` of the key file, which is
    kept outside the log."""

    provider_id: str
    base_url: str
    default_model: str
    connect_timeout: float
    read_timeout: float
    max_retries: int
    header_names: list[str]
    key_id: str
    sealed: str  # base64 of nonce + ciphertext


class ProviderDeleted(Event, tag="ProviderDeleted", frozen=True):
    provider_id: str


# -- built-in tool settings ----------------------------------------------------------------------


class ToolSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A built-in tool's settings changed at run time; None leaves a setting as configured."""

    enabled: bool | None = None
    files_root: str | None = None  # the `files` tool's sandbox
    allow_hosts: list[str] | None = None  # the `http_fetch` tool's allow-list


class ToolSettingsChanged(Event, tag="ToolSettingsChanged", frozen=True):
    """Stream `tools`: the settings of built-in `name` as they now are."""

    name: str
    settings: ToolSettings


# -- loops (scheduled runs) --------------------------------------------------------------------

LoopSessionPolicy = Literal["per_loop", "per_fire"]
MissedPolicy = Literal["skip", "run_once"]


class LoopTrigger(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """When a loop fires: exactly one of a cron expression (in time zone `tz`, UTC when None), a
    fixed interval in seconds, or one time (seconds since the Unix epoch)."""

    cron: str | None = None
    tz: str | None = None
    every: int | None = None
    at: int | None = None


class LoopSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a loop does: the message it sends to an agent, when, and into which session."""

    agent_id: str
    message: str
    trigger: LoopTrigger
    session: LoopSessionPolicy = "per_loop"
    missed: MissedPolicy = "skip"
    end_at: int | None = None  # no slot after this time (seconds since the Unix epoch)
    max_fires: int | None = None  # scheduled fires in all; run-now fires do not count
    callback_url: str | None = None


class LoopCreated(Event, tag="LoopCreated", frozen=True):
    """Stream `loop:<id>`. Slots are counted from `anchor` (seconds since the Unix epoch)."""

    loop_id: str
    spec: LoopSpec
    enabled: bool
    anchor: int


class LoopUpdated(Event, tag="LoopUpdated", frozen=True):
    spec: LoopSpec
    anchor: int


class LoopToggled(Event, tag="LoopToggled", frozen=True):
    """Enabled or disabled; slots are counted from `anchor`, so a loop turned back on does not
    make up for the slots it was off for."""

    enabled: bool
    anchor: int


class LoopDeleted(Event, tag="LoopDeleted", frozen=True):
    pass


class LoopFired(Event, tag="LoopFired", frozen=True):
    """A loop fired for its slot `scheduled_at` (seconds since the Unix epoch), recorded before
    its run `run_id` starts: a slot that has a `LoopFired` never fires again. `manual` fires
    come from `run` (fire now) and are not slots of the schedule."""

    scheduled_at: int
    run_id: str
    session_key: str
    manual: bool = False


class LoopFireFailed(Event, tag="LoopFireFailed", frozen=True):
    """A fired run could not start (its agent is gone, the emergency stop is on, ...)."""

    run_id: str
    reason: str


# -- webhooks (the outbox) ---------------------------------------------------------------------

WebhookOutcome = Literal["delivered", "retry", "failed"]


class WebhookRequested(Event, tag="WebhookRequested", frozen=True):
    """Stream `webhook:<run id>`: when the run settles, POST its outcome to `url`."""

    run_id: str
    url: str


class WebhookQueued(Event, tag="WebhookQueued", frozen=True):
    """Stream `delivery:<id>`, the outbox entry: `body` is sent as is on every attempt. The id
    is the hash of the run's settling event, so a run's outcome is queued once."""

    delivery_id: str
    run_id: str
    url: str
    body: str
    queued_at: float  # seconds since the Unix epoch; retries stop `webhooks.retry_window` after
    # Whose secrets may sign it (the most specific one set at each attempt): the run's agent
    # and the API key the run belongs to. Entries queued before they existed take the server's.
    agent_id: str = ""
    key_id: str | None = None


class WebhookAttempted(Event, tag="WebhookAttempted", frozen=True):
    """One attempt: `delivered` (a 2xx), `retry` (a network error or a retryable status; the
    next attempt is at `next_at`) or `failed` (given up: a dead letter until redelivered)."""

    attempt: int
    outcome: WebhookOutcome
    at: float
    status_code: int | None = None
    error: str | None = None
    next_at: float | None = None


class WebhookRequeued(Event, tag="WebhookRequeued", frozen=True):
    """A dead letter sent again: attempts start over, with a new retry window from `at`."""

    at: float


class WebhookSecretSet(Event, tag="WebhookSecretSet", frozen=True):
    """Stream `webhook_secrets`: deliveries for `owner` (`agent:<id>` or `key:<id>`) are signed
    with the secret in `sealed`, AES-GCM under key `key_id` of the key file (outside the log)."""

    owner: str
    key_id: str
    sealed: str  # base64 of nonce + ciphertext


class WebhookSecretCleared(Event, tag="WebhookSecretCleared", frozen=True):
    """`owner`'s secret is gone (its key destroyed); a wider secret signs again."""

    owner: str


DOMAIN_EVENTS: tuple[type[Event], ...] = (
    AgentCreated,
    AgentUpdated,
    AgentDeleted,
    SessionCreated,
    MessageAccepted,
    RunAssigned,
    RunSettled,
    SessionReset,
    SessionPatched,
    SessionDeleted,
    RunStarted,
    ModelRequested,
    AssistantDelta,
    ToolCallRequested,
    ApprovalRequested,
    ApprovalGranted,
    ApprovalDenied,
    ToolCallCompleted,
    ToolCallFailed,
    AssistantMessage,
    RunCompleted,
    RunFailed,
    RunCancelled,
    RequestClaimed,
    KeyCreated,
    KeyRevoked,
    KeyBudgetsSet,
    EmergencyStopChanged,
    McpServerSaved,
    McpServerDeleted,
    ProviderSaved,
    ProviderDeleted,
    ToolSettingsChanged,
    LoopCreated,
    LoopUpdated,
    LoopToggled,
    LoopDeleted,
    LoopFired,
    LoopFireFailed,
    WebhookRequested,
    WebhookQueued,
    WebhookAttempted,
    WebhookRequeued,
    WebhookSecretSet,
    WebhookSecretCleared,
)

DOMAIN_CODEC = EventCodec(DOMAIN_EVENTS)


class _RecentPayloads:
    """Payloads decoded lately, by (type, data): the read models apply one after another over
    the same batch of events (at most 256), so each event is decoded once for all of them.
    Emptied when it holds 256 events or 4 MiB of their bytes."""

    KEPT: Final = 256
    BYTES: Final = 4 << 20

    def __init__(self) -> None:
        self._payloads: dict[tuple[str, bytes], Event] = {}
        self._bytes = 0

    def __call__(self, event: RecordedEvent) -> Event:
        """The event's payload, as `DOMAIN_CODEC` decodes it (shared: payloads are frozen)."""
        key = (event.type, event.data)
        payload = self._payloads.get(key)
        if payload is None:
            if len(self._payloads) >= self.KEPT or self._bytes >= self.BYTES:
                self._payloads.clear()
                self._bytes = 0
            payload = self._payloads[key] = DOMAIN_CODEC.decode(event.type, event.data)
            self._bytes += len(event.data)
        return payload


decoded: Final = _RecentPayloads()


# Event type names as recorded (`RecordedEvent.type`), derived from the structs' tags.
RUN_ASSIGNED: Final = event_type(RunAssigned)
RUN_SETTLED: Final = event_type(RunSettled)
SESSION_DELETED: Final = event_type(SessionDeleted)
RUN_STARTED: Final = event_type(RunStarted)
APPROVAL_REQUESTED: Final = event_type(ApprovalRequested)
ASSISTANT_DELTA: Final = event_type(AssistantDelta)
ASSISTANT_MESSAGE: Final = event_type(AssistantMessage)
MESSAGE_ACCEPTED: Final = event_type(MessageAccepted)
TOOL_CALL_REQUESTED: Final = event_type(ToolCallRequested)
TOOL_CALL_COMPLETED: Final = event_type(ToolCallCompleted)
RUN_COMPLETED: Final = event_type(RunCompleted)
RUN_FAILED: Final = event_type(RunFailed)
RUN_CANCELLED: Final = event_type(RunCancelled)
TERMINAL_EVENTS: Final = frozenset(event_type(e) for e in (RunCompleted, RunFailed, RunCancelled))
