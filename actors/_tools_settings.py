"""Built-in tool settings changed while the server runs: on or off, the `files` tool's sandbox
and the `http_fetch` allow-list. Changes are events on stream `tools`, applied over the config
file's settings at every start, so the last change made through the API wins."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final, final

import msgspec
import structlog

from cuelog.actors._errors import Invalid, NotFound, ToolError
from cuelog.actors._events import DOMAIN_CODEC, ToolSettings, ToolSettingsChanged
from cuelog.actors._names import TOOLS_STREAM
from cuelog.actors._tools import Tool
from cuelog.actors._tools_files import FilesTool
from cuelog.actors._tools_net import AddressPolicy, HttpFetchTool, public_addresses_only
from cuelog.actors._tools_registry import ToolRegistry, ToolsConfig
from cuelog.runtime import EventLog

log = structlog.get_logger("cuelog.tools")

# The settings each built-in takes besides `enabled`.
SETTINGS: Final = {"files": {"files_root"}, "http_fetch": {"allow_hosts"}}
_HOST_PATTERN: Final = re.compile(
    r"(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
)
MAX_ALLOW_HOSTS: Final = 256


class ToolSettingsView(msgspec.Struct, frozen=True, kw_only=True):
    """A built-in as it is configured now."""

    name: str
    enabled: bool
    files_root: str | None = None
    allow_hosts: list[str] | None = None


@final
class BuiltinTools:
    """Applies `tools` stream events to the registry at start, and records and applies new ones."""

    def __init__(
        self,
        event_log: EventLog,
        registry: ToolRegistry,
        config: ToolsConfig,
        *,
        address_policy: AddressPolicy = public_addresses_only,
    ) -> None:
        self._log = event_log
        self._registry = registry
        self._config = config
        self._policy = address_policy
        self._settings: dict[str, ToolSettings] = {}
        for record in event_log.read_stream(TOOLS_STREAM):
            event = DOMAIN_CODEC.decode(record.type, record.data)
            if not isinstance(event, ToolSettingsChanged):
                continue
            try:
                self._install(event.name, event.settings, self._prepare(event.name, event.settings))
            except (Invalid, ToolError) as exc:  # e.g. a sandbox dir that can no longer be made
                log.warning("tool_settings_not_applied", tool=event.name, error=str(exc))

    def _known(self, name: str) -> None:
        if self._registry.builtin(name) is None and name not in SETTINGS:
            raise NotFound(f"no built-in tool {name!r}")

    def view(self, name: str) -> ToolSettingsView:
        self._known(name)
        settings = self._settings.get(name, ToolSettings())
        enabled = self._registry.builtin(name) is not None and self._registry.is_enabled(name)
        if name == "files":
            root = settings.files_root or self._config.files_root
            return ToolSettingsView(name=name, enabled=enabled, files_root=root)
        if name == "http_fetch":
            hosts = settings.allow_hosts
            if hosts is None:
                hosts = self._config.http_fetch.allow_hosts
            return ToolSettingsView(name=name, enabled=enabled, allow_hosts=list(hosts))
        return ToolSettingsView(name=name, enabled=enabled)

    async def change(
        self, name: str, patch: ToolSettings, *, actor: str | None = None
    ) -> ToolSettingsView:
        """Check, record, then apply a change; a refused change records and changes nothing."""
        self._known(name)
        current = self._settings.get(name, ToolSettings())
        changes = {k: v for k, v in msgspec.structs.asdict(patch).items() if v is not None}
        merged = msgspec.structs.replace(current, **changes)
        tool = self._prepare(name, merged)
        event = ToolSettingsChanged(name=name, settings=merged)
        await self._log.append(TOOLS_STREAM, [event], actor=actor)
        self._install(name, merged, tool)
        return self.view(name)

    def _prepare(self, name: str, settings: ToolSettings) -> Tool | None:
        """The newly configured tool (None: keep the one there is); raises Invalid."""
        allowed = SETTINGS.get(name, set())
        for field in ("files_root", "allow_hosts"):
            if getattr(settings, field) is not None and field not in allowed:
                raise Invalid(f"{name} has no setting {field}", param=field)
        if name == "files":
            root = settings.files_root or self._config.files_root
            if root is None:
                if settings.enabled:
                    raise Invalid("the files tool needs files_root first", param="files_root")
                return None
            path = Path(root)
            if not path.is_absolute():
                raise Invalid("files_root must be an absolute path", param="files_root")
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise Invalid(f"cannot make {root}: {exc.strerror}", param="files_root") from None
            return FilesTool(
                path,
                max_file_bytes=self._config.files_max_bytes,
                quota_bytes=self._config.files_quota_bytes,
            )
        if name == "http_fetch" and settings.allow_hosts is not None:
            hosts = settings.allow_hosts
            bad = [h for h in hosts if len(h) > 253 or not _HOST_PATTERN.fullmatch(h)]
            if bad or len(hosts) > MAX_ALLOW_HOSTS:
                raise Invalid(
                    f"allow_hosts takes up to {MAX_ALLOW_HOSTS} host names or *.domain "
                    f"patterns; not: {', '.join(bad)}",
                    param="allow_hosts",
                )
            fetch = msgspec.structs.replace(self._config.http_fetch, allow_hosts=list(hosts))
            return HttpFetchTool(fetch, address_policy=self._policy)
        return None

    def _install(self, name: str, settings: ToolSettings, tool: Tool | None) -> None:
        if tool is not None:
            self._registry.put(tool)
        if settings.enabled is not None and self._registry.builtin(name) is not None:
            self._registry.set_enabled(name, settings.enabled)
        self._settings[name] = settings
