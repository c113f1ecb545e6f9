"""The registry of built-in tools: which exist, which are enabled, and their specs."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Final, Protocol

import msgspec

from cuelog.actors._errors import ToolError
from cuelog.actors._messages import ToolSpec
from cuelog.actors._tools import ClockTool, Tool, invoke_tool, tool_spec
from cuelog.actors._tools_calculator import CalculatorTool
from cuelog.actors._tools_files import FilesTool
from cuelog.actors._tools_net import (
    AddressPolicy,
    HttpFetchConfig,
    HttpFetchTool,
    public_addresses_only,
)

DEFAULT_ENABLED: Final = ("clock", "calculator")


class ToolSource(Protocol):
    """Tools that come and go while the server runs (MCP servers): the registry asks it by name."""

    def find(self, name: str) -> Tool | None:
        """The tool of that name if it is offered now, else None."""
        ...

    def offered(self) -> Sequence[Tool]:
        """Every tool offered now."""
        ...

    def timeout_of(self, name: str) -> float | None: ...


def granted(name: str, allowed: Iterable[str]) -> bool:
    """Whether an agent's `tools` list grants `name`: by name, or `server.*` for every tool of
    an MCP server."""
    for entry in allowed:
        if entry == name or (entry.endswith(".*") and name.startswith(entry[:-1])):
            return True
    return False


class ToolsConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Which built-ins are on, and their settings. `files` needs `files_root`."""

    enabled: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_ENABLED))
    timeout: float = 30.0
    timeouts: dict[str, float] = msgspec.field(default_factory=dict)
    files_root: str | None = None
    files_max_bytes: int = 1024 * 1024
    files_quota_bytes: int = 64 * 1024 * 1024
    http_fetch: HttpFetchConfig = msgspec.field(default_factory=HttpFetchConfig)


class ToolRegistry:
    """Every known tool by name, the enabled subset, and each tool's timeout."""

    def __init__(
        self,
        tools: Iterable[Tool],
        *,
        enabled: Iterable[str],
        timeout: float = 30.0,
        timeouts: dict[str, float] | None = None,
    ) -> None:
        self._tools = {tool.name: tool for tool in tools}
        self._enabled = list(dict.fromkeys(enabled))
        unknown = [name for name in self._enabled if name not in self._tools]
        if unknown:
            raise ToolError(f"unknown tools enabled: {', '.join(unknown)}")
        self._timeout = timeout
        self._timeouts = dict(timeouts or {})
        self._sources: list[ToolSource] = []

    def attach(self, source: ToolSource) -> None:
        """Offer the tools of `source` (an MCP server set) besides the built-ins."""
        self._sources.append(source)

    def _found(self, name: str) -> Tool | None:
        for source in self._sources:
            tool = source.find(name)
            if tool is not None:
                return tool
        return None

    @classmethod
    def builtins(
        cls,
        config: ToolsConfig | None = None,
        *,
        clock: ClockTool | None = None,
        address_policy: AddressPolicy = public_addresses_only,
    ) -> ToolRegistry:
        """The built-in tools configured by `config` (clock and calculator on by default)."""
        config = config or ToolsConfig()
        tools: list[Tool] = [
            clock or ClockTool(),
            CalculatorTool(),
            HttpFetchTool(config.http_fetch, address_policy=address_policy),
        ]
        if config.files_root is not None:
            tools.append(
                FilesTool(
                    Path(config.files_root),
                    max_file_bytes=config.files_max_bytes,
                    quota_bytes=config.files_quota_bytes,
                )
            )
        elif "files" in config.enabled:
            raise ToolError("the files tool needs a sandbox dir: set tools.files_root")
        return cls(tools, enabled=config.enabled, timeout=config.timeout, timeouts=config.timeouts)

    def builtin(self, name: str) -> Tool | None:
        """A built-in tool, enabled or not (None for unknown names and MCP tools)."""
        return self._tools.get(name)

    def put(self, tool: Tool) -> None:
        """Add a built-in or replace it with a newly configured one (runs already calling the
        old one finish with it)."""
        self._tools[tool.name] = tool

    def set_enabled(self, name: str, enabled: bool) -> None:
        if name not in self._tools:
            raise ToolError(f"no tool named {name!r}")
        if enabled and name not in self._enabled:
            self._enabled.append(name)
        elif not enabled and name in self._enabled:
            self._enabled.remove(name)

    def names(self) -> list[str]:
        """Every known tool, enabled or not."""
        return [*self._tools, *(t.name for s in self._sources for t in s.offered())]

    def enabled(self) -> list[str]:
        return list(self._enabled)

    def is_enabled(self, name: str) -> bool:
        return name in self._enabled or self._found(name) is not None

    def get(self, name: str) -> Tool:
        """An enabled tool; unknown or disabled names raise ToolError."""
        if name not in self._tools:
            found = self._found(name)
            if found is None:
                raise ToolError(f"no tool named {name!r}")
            return found
        if name not in self._enabled:
            raise ToolError(f"tool {name!r} is disabled on this server")
        return self._tools[name]

    def spec_of(self, name: str) -> ToolSpec:
        """The spec of any known tool, enabled or not."""
        if name not in self._tools:
            return tool_spec(self.get(name))
        return tool_spec(self._tools[name])

    def check_args(self, name: str, args: dict[str, Any]) -> str | None:
        """What is wrong with `args` for the tool's schema (top level), or None when they fit."""
        schema = self.spec_of(name).parameters
        properties: dict[str, Any] = schema.get("properties", {})
        missing = [field for field in schema.get("required", []) if field not in args]
        if missing:
            return f"missing required argument(s): {', '.join(missing)}"
        if schema.get("additionalProperties") is False:
            unknown = sorted(set(args) - set(properties))
            if unknown:
                return f"unknown argument(s): {', '.join(unknown)}"
        for field, value in args.items():
            expected = properties.get(field, {}).get("type")
            if expected is not None and not _matches(value, expected):
                return f"argument {field!r} must be of type {expected}"
        return None

    def timeout_of(self, name: str) -> float:
        for source in self._sources:
            timeout = source.timeout_of(name)
            if timeout is not None:
                return timeout
        return self._timeouts.get(name, self._timeout)

    def specs(self, allowed: Iterable[str] | None = None) -> list[ToolSpec]:
        """Specs of enabled tools, limited to `allowed` (an agent's list) when given."""
        wanted = self._enabled if allowed is None else [n for n in allowed if n in self._enabled]
        specs = [tool_spec(self._tools[name]) for name in wanted]
        grants = None if allowed is None else list(allowed)
        for source in self._sources:
            specs.extend(
                tool_spec(tool)
                for tool in source.offered()
                if grants is None or granted(tool.name, grants)
            )
        return specs

    async def invoke(self, name: str, args: dict[str, Any]) -> str:
        """Run an enabled tool with its timeout; every failure raises ToolError."""
        return await invoke_tool(self.get(name), args, self.timeout_of(name))


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
    "null": (type(None),),
}


def _matches(value: Any, expected: str | list[str]) -> bool:
    kinds = [expected] if isinstance(expected, str) else expected
    for kind in kinds:
        types = _JSON_TYPES.get(kind)
        if types is None:
            return True
        if isinstance(value, bool) and kind in {"integer", "number"}:
            continue
        if isinstance(value, types):
            return True
    return False
