"""cuelog.actors: agents, sessions, runs, tools, model providers and approvals as actors, and the
`Domain` that the layers above (HTTP, the command line) use for every write and read."""

from cuelog.actors._agent import AgentView as AgentView
from cuelog.actors._budgets import Budgets as Budgets
from cuelog.actors._budgets import BudgetUse as BudgetUse
from cuelog.actors._commands import ADMIN as ADMIN
from cuelog.actors._commands import Caller as Caller
from cuelog.actors._commands import RunView as RunView
from cuelog.actors._domain import Domain as Domain
from cuelog.actors._domain import IdempotencyKey as IdempotencyKey
from cuelog.actors._domain import open_domain as open_domain
from cuelog.actors._errors import BudgetExceeded as BudgetExceeded
from cuelog.actors._errors import Conflict as Conflict
from cuelog.actors._errors import IdempotencyKeyReused as IdempotencyKeyReused
from cuelog.actors._errors import InputTooLarge as InputTooLarge
from cuelog.actors._errors import Invalid as Invalid
from cuelog.actors._errors import ModelError as ModelError
from cuelog.actors._errors import NotFound as NotFound
from cuelog.actors._errors import ToolError as ToolError
from cuelog.actors._errors import Unavailable as Unavailable
from cuelog.actors._events import ASSISTANT_DELTA as ASSISTANT_DELTA
from cuelog.actors._events import DOMAIN_CODEC as DOMAIN_CODEC
from cuelog.actors._events import DOMAIN_EVENTS as DOMAIN_EVENTS
from cuelog.actors._events import RUN_CANCELLED as RUN_CANCELLED
from cuelog.actors._events import RUN_COMPLETED as RUN_COMPLETED
from cuelog.actors._events import RUN_FAILED as RUN_FAILED
from cuelog.actors._events import TERMINAL_EVENTS as TERMINAL_EVENTS
from cuelog.actors._events import AgentSpec as AgentSpec
from cuelog.actors._events import ApprovalPolicy as ApprovalPolicy
from cuelog.actors._events import AssistantDelta as AssistantDelta
from cuelog.actors._events import AssistantMessage as AssistantMessage
from cuelog.actors._events import Budget as Budget
from cuelog.actors._events import BudgetPeriod as BudgetPeriod
from cuelog.actors._events import BusyPolicy as BusyPolicy
from cuelog.actors._events import KeyCreated as KeyCreated
from cuelog.actors._events import LoopSpec as LoopSpec
from cuelog.actors._events import LoopTrigger as LoopTrigger
from cuelog.actors._events import McpServerConfig as McpServerConfig
from cuelog.actors._events import ModelRequested as ModelRequested
from cuelog.actors._events import RequestOptions as RequestOptions
from cuelog.actors._events import RunCancelled as RunCancelled
from cuelog.actors._events import RunCompleted as RunCompleted
from cuelog.actors._events import RunFailed as RunFailed
from cuelog.actors._events import RunStarted as RunStarted
from cuelog.actors._events import ToolSettings as ToolSettings
from cuelog.actors._idempotency import MAX_KEY_LENGTH as MAX_IDEMPOTENCY_KEY_LENGTH
from cuelog.actors._idempotency import Claim as Claim
from cuelog.actors._idempotency import request_digest as request_digest
from cuelog.actors._keys import KEY_PREFIX as KEY_PREFIX
from cuelog.actors._keys import SCOPES as SCOPES
from cuelog.actors._keys import KeyInfo as KeyInfo
from cuelog.actors._keys import KeyStore as KeyStore
from cuelog.actors._keys import Scope as Scope
from cuelog.actors._keys import key_digest as key_digest
from cuelog.actors._loops import FireView as FireView
from cuelog.actors._loops import Loops as Loops
from cuelog.actors._loops import LoopView as LoopView
from cuelog.actors._loops import open_loops as open_loops
from cuelog.actors._messages import ChatMessage as ChatMessage
from cuelog.actors._messages import MediaPart as MediaPart
from cuelog.actors._messages import Role as Role
from cuelog.actors._messages import ToolCall as ToolCall
from cuelog.actors._messages import ToolSpec as ToolSpec
from cuelog.actors._messages import Usage as Usage
from cuelog.actors._models import Finished as Finished
from cuelog.actors._models import FinishReason as FinishReason
from cuelog.actors._models import ModelChunk as ModelChunk
from cuelog.actors._models import ModelProvider as ModelProvider
from cuelog.actors._models import ModelRequest as ModelRequest
from cuelog.actors._models import TextDelta as TextDelta
from cuelog.actors._models import ToolCallChunk as ToolCallChunk
from cuelog.actors._models_echo import EchoModel as EchoModel
from cuelog.actors._models_openai import OpenAIConfig as OpenAIConfig
from cuelog.actors._models_openai import OpenAIModel as OpenAIModel
from cuelog.actors._names import ID_RE as ID_RE
from cuelog.actors._names import ID_RULE as ID_RULE
from cuelog.actors._names import TERMINAL as TERMINAL
from cuelog.actors._names import RunStatus as RunStatus
from cuelog.actors._names import is_valid_id as is_valid_id
from cuelog.actors._providers import ProviderConfig as ProviderConfig
from cuelog.actors._providers import Providers as Providers
from cuelog.actors._providers import ProviderSecrets as ProviderSecrets
from cuelog.actors._providers import ProviderState as ProviderState
from cuelog.actors._providers import VerifyResult as VerifyResult
from cuelog.actors._read_models import ReadModels as ReadModels
from cuelog.actors._read_models import domain_projections as domain_projections
from cuelog.actors._read_models import open_read_models as open_read_models
from cuelog.actors._readers import RunEvent as RunEvent
from cuelog.actors._readers import TimelineRow as TimelineRow
from cuelog.actors._readers import run_recorded as run_recorded
from cuelog.actors._replay import Divergence as Divergence
from cuelog.actors._replay import check_runs as check_runs
from cuelog.actors._replay import recorded_runs as recorded_runs
from cuelog.actors._run import RunActor as RunActor
from cuelog.actors._run import RunRegistry as RunRegistry
from cuelog.actors._run import RunSettings as RunSettings
from cuelog.actors._run import RunState as RunState
from cuelog.actors._run import fold_run as fold_run
from cuelog.actors._runs_catalog import RunFilter as RunFilter
from cuelog.actors._runs_catalog import RunRow as RunRow
from cuelog.actors._sealed import DataKeys as DataKeys
from cuelog.actors._sealed import KeyFile as KeyFile
from cuelog.actors._sealed import SharedKeys as SharedKeys
from cuelog.actors._session import Sent as Sent
from cuelog.actors._session import SessionView as SessionView
from cuelog.actors._session_fold import SessionState as SessionState
from cuelog.actors._session_fold import fold_session as fold_session
from cuelog.actors._session_fold import session_state_at as session_state_at
from cuelog.actors._timeline import event_data as event_data
from cuelog.actors._timeline import is_run_event as is_run_event
from cuelog.actors._timeline import payload as payload
from cuelog.actors._timeline import summary as summary
from cuelog.actors._timeline import timeline_events as timeline_events
from cuelog.actors._tools import Tool as Tool
from cuelog.actors._tools import invoke_tool as invoke_tool
from cuelog.actors._tools import parse_tool_arguments as parse_tool_arguments
from cuelog.actors._tools import tool_spec as tool_spec
from cuelog.actors._tools_mcp import McpServers as McpServers
from cuelog.actors._tools_mcp import McpServerState as McpServerState
from cuelog.actors._tools_net import HttpFetchConfig as HttpFetchConfig
from cuelog.actors._tools_registry import ToolRegistry as ToolRegistry
from cuelog.actors._tools_registry import ToolsConfig as ToolsConfig
from cuelog.actors._tools_settings import BuiltinTools as BuiltinTools
from cuelog.actors._tools_settings import ToolSettingsView as ToolSettingsView
from cuelog.actors._trace_export import TraceExport as TraceExport
from cuelog.actors._trace_export import TraceSink as TraceSink
from cuelog.actors._traces import Span as Span
from cuelog.actors._traces import Trace as Trace
from cuelog.actors._traces import fold_trace as fold_trace
from cuelog.actors._traces import trace_id as trace_id
from cuelog.actors._usage import DIMENSIONS as USAGE_DIMENSIONS
from cuelog.actors._usage import Dimension as UsageDimension
from cuelog.actors._usage import UsageFilter as UsageFilter
from cuelog.actors._usage import UsageTotals as UsageTotals
from cuelog.actors._webhook_secrets import MAX_SECRET_CHARS as MAX_WEBHOOK_SECRET_CHARS
from cuelog.actors._webhook_secrets import MIN_SECRET_CHARS as MIN_WEBHOOK_SECRET_CHARS
from cuelog.actors._webhook_secrets import agent_signer as agent_signer
from cuelog.actors._webhook_secrets import key_signer as key_signer
from cuelog.actors._webhooks import Attempt as Attempt
from cuelog.actors._webhooks import Delivery as Delivery
from cuelog.actors._webhooks import DeliveryStatus as DeliveryStatus
from cuelog.actors._webhooks import Webhooks as Webhooks
from cuelog.actors._webhooks import WebhookSettings as WebhookSettings
from cuelog.actors._webhooks import open_webhooks as open_webhooks
from cuelog.actors._webhooks import signature as webhook_signature

__all__ = [
    "ADMIN",
    "ASSISTANT_DELTA",
    "DOMAIN_CODEC",
    "DOMAIN_EVENTS",
    "ID_RE",
    "ID_RULE",
    "KEY_PREFIX",
    "MAX_IDEMPOTENCY_KEY_LENGTH",
    "MAX_WEBHOOK_SECRET_CHARS",
    "MIN_WEBHOOK_SECRET_CHARS",
    "RUN_CANCELLED",
    "RUN_COMPLETED",
    "RUN_FAILED",
    "SCOPES",
    "TERMINAL",
    "TERMINAL_EVENTS",
    "USAGE_DIMENSIONS",
    "AgentSpec",
    "AgentView",
    "ApprovalPolicy",
    "AssistantDelta",
    "AssistantMessage",
    "Attempt",
    "Budget",
    "BudgetExceeded",
    "BudgetPeriod",
    "BudgetUse",
    "Budgets",
    "BuiltinTools",
    "BusyPolicy",
    "Caller",
    "ChatMessage",
    "Claim",
    "Conflict",
    "DataKeys",
    "Delivery",
    "DeliveryStatus",
    "Divergence",
    "Domain",
    "EchoModel",
    "FinishReason",
    "Finished",
    "FireView",
    "HttpFetchConfig",
    "IdempotencyKey",
    "IdempotencyKeyReused",
    "InputTooLarge",
    "Invalid",
    "KeyCreated",
    "KeyFile",
    "KeyInfo",
    "KeyStore",
    "LoopSpec",
    "LoopTrigger",
    "LoopView",
    "Loops",
    "McpServerConfig",
    "McpServerState",
    "McpServers",
    "MediaPart",
    "ModelChunk",
    "ModelError",
    "ModelProvider",
    "ModelRequest",
    "ModelRequested",
    "NotFound",
    "OpenAIConfig",
    "OpenAIModel",
    "ProviderConfig",
    "ProviderSecrets",
    "ProviderState",
    "Providers",
    "ReadModels",
    "RequestOptions",
    "Role",
    "RunActor",
    "RunCancelled",
    "RunCompleted",
    "RunEvent",
    "RunFailed",
    "RunFilter",
    "RunRegistry",
    "RunRow",
    "RunSettings",
    "RunStarted",
    "RunState",
    "RunStatus",
    "RunView",
    "Scope",
    "Sent",
    "SessionState",
    "SessionView",
    "SharedKeys",
    "Span",
    "TextDelta",
    "TimelineRow",
    "Tool",
    "ToolCall",
    "ToolCallChunk",
    "ToolError",
    "ToolRegistry",
    "ToolSettings",
    "ToolSettingsView",
    "ToolSpec",
    "ToolsConfig",
    "Trace",
    "TraceExport",
    "TraceSink",
    "Unavailable",
    "Usage",
    "UsageDimension",
    "UsageFilter",
    "UsageTotals",
    "VerifyResult",
    "WebhookSettings",
    "Webhooks",
    "agent_signer",
    "check_runs",
    "domain_projections",
    "event_data",
    "fold_run",
    "fold_session",
    "fold_trace",
    "invoke_tool",
    "is_run_event",
    "is_valid_id",
    "key_digest",
    "key_signer",
    "open_domain",
    "open_loops",
    "open_read_models",
    "open_webhooks",
    "parse_tool_arguments",
    "payload",
    "recorded_runs",
    "request_digest",
    "run_recorded",
    "session_state_at",
    "summary",
    "timeline_events",
    "tool_spec",
    "trace_id",
    "webhook_signature",
]
