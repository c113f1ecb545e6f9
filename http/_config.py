"""`cuelog serve` configuration: a TOML file, then `CUELOG_<SECTION>_<KEY>` env vars, then flags.

Every key is listed in docs/configuration.md. An invalid value is one clear line naming the key.
"""

from __future__ import annotations

import math
import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import msgspec

from cuelog.actors import ID_RULE, AgentSpec, ApprovalPolicy, is_valid_id
from cuelog.runtime import ClusterConfig, CuelogError

T = TypeVar("T")


class ConfigError(CuelogError):
    """A setting is invalid; the message names it."""


class ServerSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: int = 8088
    api_key: str | None = None
    auto_approve: bool = False
    enabled_tools: list[str] = msgspec.field(default_factory=lambda: ["clock", "calculator"])
    max_body_bytes: int = 1 << 20
    request_timeout: float = 120.0
    graceful_timeout: float = 10.0
    rate_limit: float = 0.0  # requests per second per API key; 0 turns it off
    rate_burst: int = 20
    ip_rate_limit: float = 0.0  # requests per second per client address; 0 turns it off
    # Failed authentications (a wrong key, or a missing scope) per client address: a burst of
    # `auth_failure_burst`, then this many a second; beyond, 429 before the key is looked at.
    auth_failure_rate: float = 1.0
    auth_failure_burst: int = 20
    max_streams_per_key: int = 64  # open SSE streams per key; 0 is unlimited
    stall_timeout: float = 60.0  # drop a connection whose client takes no data for this long
    keep_alive_timeout: float = 75.0  # close a connection idle between requests this long
    max_connections: int = 1024  # open connections; beyond it 503 (lowered to fit the fd limit)
    max_live_actors: int = 10_000  # actors in memory; the least recently used idle one goes
    passivate_after: float = 300.0  # seconds an idle actor stays in memory
    # Browser origins allowed to call the API (CORS, with preflight); "*" allows any.
    cors_origins: list[str] = msgspec.field(default_factory=list)


class LogSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    data_dir: Path = Path("data")
    # Where the log lives when it is not the LMDB data dir: `lmdb:///path` or `memory:` (a log
    # that lives as long as the process, for tests and demos). Set, it wins over data_dir.
    url: str | None = None
    sync: bool = True
    max_size: int = 1 << 40
    anchor_key_file: Path | None = None
    max_event_bytes: int = 1 << 20  # the largest event; bigger input is refused with 413
    content_threshold: int = 64 << 10  # a tool output over this many bytes is stored by digest
    # Keep the read models (runs list, sessions catalog, usage, costs, traces, budgets) live
    # beside the log. Off, their routes answer 503, budgets refuse runs they apply to, and
    # start-up folds every session; `cuelog projections` still builds them from the log.
    read_models: bool = True
    # Who applies the log to the read models of an LMDB data dir: "auto" (the server, until
    # they take a noticeable share of a core, then a projector process beside it, on another
    # core), "process" (a projector process from the start) or "inline" (always the server).
    projector: Literal["auto", "process", "inline"] = "auto"


class ModelSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    provider: str = "echo"
    base_url: str | None = None
    api_key_env: str | None = None
    name: str = "echo-1"


class ToolsSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # The approval a `POST /v1/tools/invoke` call runs under (no agent's policy applies to it).
    invoke_approval: ApprovalPolicy = "ask"
    files_root: Path | None = None  # the `files` tool's sandbox dir (created if missing)
    files_max_bytes: int = 1 << 20  # largest file the `files` tool reads or writes
    files_quota_bytes: int = 64 << 20  # all files in the sandbox together, checked on write
    # Hosts `http_fetch` may fetch from (`example.com`, `*.example.com`); empty: any public host.
    http_fetch_allow_hosts: list[str] = msgspec.field(default_factory=list)


class McpSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    ping_interval: float = 15.0  # seconds between health pings of a connected MCP server
    ping_timeout: float = 10.0  # a ping (or a connect) unanswered this long restarts the server


class ProvidersSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # The data keys that seal provider API keys; never in the log. Default: in the data dir.
    key_file: Path | None = None


class ModelsSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # Other names a request's `model` may use for an agent, e.g. {"dotcraft" = "default"}.
    aliases: dict[str, str] = msgspec.field(default_factory=dict)


class LoopsSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    enabled: bool = True  # run the scheduler; off, the loop routes answer 503
    # A slot found due later than this many seconds (the server was down) is missed: the loop's
    # `missed` policy says whether it still gets one run.
    misfire_grace: float = 60.0


class WebhooksSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # Signs every delivery (HMAC-SHA256); without it, a callback_url is refused.
    secret: str | None = None
    allow_private: bool = False  # let callbacks go to loopback and private addresses
    retry_window: float = 86_400.0  # seconds after queuing that retries stop (a dead letter)
    backoff_base: float = 2.0  # seconds before the first retry; doubled each time, with jitter
    backoff_max: float = 3_600.0  # the longest wait between attempts
    timeout: float = 10.0  # one attempt, connect to answer


class OtelSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # OTLP over HTTP (protobuf) traces URL, e.g. http://127.0.0.1:4318/v1/traces; off when unset.
    endpoint: str | None = None
    headers: dict[str, str] = msgspec.field(default_factory=dict)  # sent with every export
    service_name: str = "cuelog"
    timeout: float = 10.0  # one export request, in seconds


class ClusterSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # This process's name among the processes sharing one PostgreSQL log; set, sessions and
    # runs are leased to one process at a time (see docs/operations.md).
    node: str | None = None
    lease_ttl: float = 10.0  # seconds a lease lasts unrenewed: a dead node's actors move then
    renew_interval: float = 3.0  # seconds between renewals (and looks for dead nodes' work)
    # The address other nodes reach this one at (http://host:port); default: server.host:port.
    advertise: str | None = None


class Price(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What a model's tokens cost, per million, in the currency of `/v1/costs/summary`."""

    input: float = 0.0
    output: float = 0.0


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    server: ServerSection = msgspec.field(default_factory=ServerSection)
    log: LogSection = msgspec.field(default_factory=LogSection)
    model: ModelSection = msgspec.field(default_factory=ModelSection)
    tools: ToolsSection = msgspec.field(default_factory=ToolsSection)
    providers: ProvidersSection = msgspec.field(default_factory=ProvidersSection)
    mcp: McpSection = msgspec.field(default_factory=McpSection)
    loops: LoopsSection = msgspec.field(default_factory=LoopsSection)
    webhooks: WebhooksSection = msgspec.field(default_factory=WebhooksSection)
    cluster: ClusterSection = msgspec.field(default_factory=ClusterSection)
    agents: dict[str, AgentSpec] = msgspec.field(default_factory=dict)
    models: ModelsSection = msgspec.field(default_factory=ModelsSection)
    prices: dict[str, Price] = msgspec.field(default_factory=dict)
    otel: OtelSection = msgspec.field(default_factory=OtelSection)


_SECTIONS: dict[str, type[msgspec.Struct]] = {
    "server": ServerSection,
    "log": LogSection,
    "model": ModelSection,
    "tools": ToolsSection,
    "providers": ProvidersSection,
    "mcp": McpSection,
    "loops": LoopsSection,
    "webhooks": WebhooksSection,
    "otel": OtelSection,
    "cluster": ClusterSection,
}
_PATH_RE = re.compile(r"at `\$\.?([^`]*)`")
_UNKNOWN_RE = re.compile(r"unknown field `([^`]*)`")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def _key_from_error(message: str, prefix: str = "") -> tuple[str, str]:
    match = _PATH_RE.search(message)
    key = match.group(1).replace("[", ".").replace("]", "").replace("'", "") if match else ""
    text = _PATH_RE.sub("", message).strip(" -")
    unknown = _UNKNOWN_RE.search(message)
    if unknown is not None:
        key = ".".join(k for k in (key, unknown.group(1)) if k)
        text = "unknown key (see docs/configuration.md for the keys there are)"
    return ".".join(k for k in (prefix, key) if k), text


def _path_hook(cls: type, value: Any) -> Any:
    """TOML and env give paths as strings; msgspec has no built-in `Path`."""
    if cls is Path and isinstance(value, str | Path):
        if not str(value).strip():
            raise ValueError("must not be empty")
        return Path(value)
    raise NotImplementedError


def _convert(raw: Any, cls: type[T], prefix: str = "") -> T:
    try:
        return msgspec.convert(raw, cls, strict=False, dec_hook=_path_hook)
    except msgspec.ValidationError as exc:
        key, text = _key_from_error(str(exc), prefix)
        raise ConfigError(f"{key or 'config'}: {text}") from None


def _env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for section, cls in _SECTIONS.items():
        for field in msgspec.structs.fields(cls):
            value = environ.get(f"CUELOG_{section.upper()}_{field.name.upper()}")
            if value is None:
                continue
            out.setdefault(section, {})[field.name] = _parse_env(value, field.type)
    return out


def _parse_env(value: str, annotation: Any) -> Any:
    text = str(annotation)
    if "list" in text:
        return [item.strip() for item in value.split(",") if item.strip()]
    if "bool" in text:
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        return value  # not a boolean: validation names the key
    if "int" in text and value.strip().lstrip("-").isdigit():
        return int(value)
    if "float" in text:
        try:
            return float(value)
        except ValueError:
            return value
    return value


def load_settings(
    config_file: Path | None,
    *,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Merge file < env < flags into validated Settings; raise ConfigError naming the key."""
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    if config_file is None and Path("cuelog.toml").is_file():
        config_file = Path("cuelog.toml")
    if config_file is not None:
        try:
            raw = msgspec.toml.decode(config_file.read_bytes())
        except FileNotFoundError:
            raise ConfigError(f"--config: {config_file} does not exist") from None
        except msgspec.DecodeError as exc:
            raise ConfigError(f"{config_file}: not valid TOML: {exc}") from None
    for layer in (_env_overrides(environ), flags or {}):
        for section, values in layer.items():
            merged = dict(raw.get(section) or {})
            merged.update({k: v for k, v in values.items() if v is not None})
            raw[section] = merged
    # msgspec names a dict entry `[...]`, so each agent table is checked on its own to name it.
    agents = raw.pop("agents", None) or {}
    if not isinstance(agents, dict):
        raise ConfigError("agents: must be a table of [agents.<id>] tables")
    prices = raw.pop("prices", None) or {}
    if not isinstance(prices, dict):
        raise ConfigError("prices: must be a table of [prices.<model>] tables")
    settings = _convert(raw, Settings)
    settings.prices = {
        model: _convert(price, Price, f"prices.{model}") for model, price in prices.items()
    }
    for agent_id, spec in agents.items():
        if isinstance(spec, dict) and "request" in spec:
            raise ConfigError(f"agents.{agent_id}: unknown field `request`")
    settings.agents = {
        agent_id: _convert(spec, AgentSpec, f"agents.{agent_id}")
        for agent_id, spec in agents.items()
    }
    _check(settings)
    return settings


def _check(settings: Settings) -> None:
    for model, price in settings.prices.items():
        for side, value in (("input", price.input), ("output", price.output)):
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"prices.{model}.{side}: must be a number, 0 or more")
    for alias, agent_id in settings.models.aliases.items():
        if not is_valid_id(agent_id):
            raise ConfigError(f"models.aliases.{alias}: must name an agent id ({ID_RULE})")
    server = settings.server
    if not 0 <= server.port <= 65535:
        raise ConfigError(f"server.port: {server.port} is not a TCP port (0-65535)")
    if server.api_key is not None and len(server.api_key) < 16:
        raise ConfigError("server.api_key: use at least 16 characters (128 random bits is best)")
    if server.request_timeout <= 0:
        raise ConfigError("server.request_timeout: must be more than 0 seconds")
    if server.max_live_actors < 1:
        raise ConfigError("server.max_live_actors: must be at least 1")
    if server.passivate_after < 0:
        raise ConfigError("server.passivate_after: must not be negative")
    if server.keep_alive_timeout <= 0:
        raise ConfigError("server.keep_alive_timeout: must be more than 0 seconds")
    if server.max_connections < 1:
        raise ConfigError("server.max_connections: must be at least 1")
    if server.graceful_timeout < 0:
        raise ConfigError("server.graceful_timeout: must be 0 seconds or more")
    if server.auth_failure_rate < 0:
        raise ConfigError("server.auth_failure_rate: must be 0 (off) or more")
    if server.auth_failure_burst < 1:
        raise ConfigError("server.auth_failure_burst: must be at least 1")
    if server.max_body_bytes < 1024:
        raise ConfigError("server.max_body_bytes: must be at least 1024")
    if settings.log.max_event_bytes < 4096:
        raise ConfigError("log.max_event_bytes: must be at least 4096")
    if not 1024 <= settings.log.content_threshold <= settings.log.max_event_bytes // 2:
        raise ConfigError(
            "log.content_threshold: must be at least 1024 and at most half of log.max_event_bytes"
        )
    if settings.model.provider not in {"echo", "openai"}:
        raise ConfigError(f"model.provider: {settings.model.provider!r} is not echo or openai")
    if settings.model.provider == "openai" and not settings.model.base_url:
        raise ConfigError("model.base_url: required when model.provider is openai")
    tools = settings.tools
    if tools.files_max_bytes < 1:
        raise ConfigError("tools.files_max_bytes: must be at least 1")
    if tools.files_quota_bytes < tools.files_max_bytes:
        raise ConfigError("tools.files_quota_bytes: must be at least tools.files_max_bytes")
    for name in ("ping_interval", "ping_timeout"):
        value = getattr(settings.mcp, name)
        if not (math.isfinite(value) and 0 < value <= 3600):
            raise ConfigError(f"mcp.{name}: must be more than 0 and at most 3600 seconds")
    if settings.loops.misfire_grace < 0:
        raise ConfigError("loops.misfire_grace: must be 0 seconds or more")
    hooks = settings.webhooks
    if hooks.secret is not None and len(hooks.secret) < 16:
        raise ConfigError("webhooks.secret: use at least 16 characters (128 random bits is best)")
    for name in ("retry_window", "backoff_base", "backoff_max", "timeout"):
        if getattr(hooks, name) <= 0:
            raise ConfigError(f"webhooks.{name}: must be more than 0 seconds")
    otel = settings.otel
    if otel.endpoint is not None and not otel.endpoint.startswith(("http://", "https://")):
        raise ConfigError("otel.endpoint: must be an http:// or https:// URL")
    if not (math.isfinite(otel.timeout) and otel.timeout > 0):
        raise ConfigError("otel.timeout: must be more than 0 seconds")
    if not otel.service_name.strip():
        raise ConfigError("otel.service_name: must not be empty")
    _check_cluster(settings)
    key_file = settings.log.anchor_key_file
    if key_file is not None:
        data_dir = settings.log.data_dir.resolve()
        if key_file.resolve().is_relative_to(data_dir):
            raise ConfigError("log.anchor_key_file: keep the anchor key outside the data dir")


def _check_cluster(settings: Settings) -> None:
    cluster = settings.cluster
    if cluster.node is None:
        return
    if not (settings.log.url or "").startswith(("postgresql://", "postgres://")):
        raise ConfigError(
            "cluster.node: cluster mode needs the PostgreSQL log (log.url = postgresql://…)"
        )
    try:
        cluster_config(settings)
    except ValueError as exc:
        raise ConfigError(f"cluster: {exc}") from None


def cluster_config(
    settings: Settings, bound: tuple[str, int] | None = None
) -> ClusterConfig | None:
    """The node's cluster settings, or None when it runs alone. Without `cluster.advertise`, the
    address is the one bound (`bound`: host and port of the listening socket), or else the
    configured one; a wildcard host is replaced by this machine's name."""
    cluster = settings.cluster
    if cluster.node is None:
        return None
    host, port = bound or (settings.server.host, settings.server.port)
    if host in {"0.0.0.0", "::", ""}:
        host = socket.gethostname()
    if ":" in host:
        host = f"[{host}]"
    return ClusterConfig(
        node=cluster.node,
        lease_ttl=cluster.lease_ttl,
        renew_interval=cluster.renew_interval,
        advertise=cluster.advertise or f"http://{host}:{port}",
    )
