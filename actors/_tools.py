"""The tool protocol, argument checking, and `invoke_tool`, which turns every failure into a
`ToolError` the run hands back to the model as a tool message."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final, Protocol, TypeVar, final

import msgspec
import trio

from cuelog.actors._errors import ToolError
from cuelog.actors._messages import ToolSpec

T = TypeVar("T")


class Tool(Protocol):
    """A callable capability offered to models. `run` raises ToolError for expected failures."""

    @property
    def name(self) -> str: ...

    @property
    def description(self) -> str: ...

    @property
    def parameters(self) -> dict[str, Any]:
        """JSON schema of the arguments object."""
        ...

    async def run(self, args: dict[str, Any]) -> str: ...


def tool_spec(tool: Tool) -> ToolSpec:
    """What a model is told about `tool`."""
    return ToolSpec(name=tool.name, description=tool.description, parameters=tool.parameters)


def args_schema(args_type: type[msgspec.Struct]) -> dict[str, Any]:
    """The inline JSON schema of an arguments struct (no `$ref`, unknown fields refused)."""
    _, components = msgspec.json.schema_components([args_type], ref_template="#/{name}")
    schema = dict(components[args_type.__name__])
    schema.pop("title", None)
    return schema


def decode_args(tool_name: str, args: dict[str, Any], args_type: type[T]) -> T:
    """Check `args` against the tool's struct; unknown fields and wrong types are ToolErrors."""
    try:
        return msgspec.convert(args, args_type)
    except msgspec.ValidationError as exc:
        raise ToolError(f"{tool_name}: invalid arguments: {exc}") from None


_args_object = msgspec.json.Decoder(dict[str, Any])


def parse_tool_arguments(tool_name: str, arguments: str) -> dict[str, Any]:
    """Decode the JSON text of a model's tool call into an arguments object."""
    try:
        return _args_object.decode(arguments or "{}")
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ToolError(f"{tool_name}: arguments are not a JSON object: {exc}") from None


async def invoke_tool(tool: Tool, args: dict[str, Any], timeout: float) -> str:
    """Run `tool` for at most `timeout` seconds; any failure or timeout raises ToolError."""
    with trio.move_on_after(timeout) as scope:
        try:
            return await tool.run(args)
        except ToolError:
            raise
        except Exception as exc:  # a tool's bug must reach the model as text, not crash the run
            raise ToolError(f"{tool.name}: failed: {type(exc).__name__}: {exc}") from exc
    assert scope.cancelled_caught
    raise ToolError(f"{tool.name}: timed out after {_seconds(timeout)} s")


def _seconds(value: float) -> str:
    return str(int(value)) if math.isfinite(value) and value == int(value) else f"{value:g}"


# -- clock -----------------------------------------------------------------------------------


class NoArgs(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """No arguments."""


def _utc_now() -> datetime:
    return datetime.now(UTC)


@final
class ClockTool:
    """The current UTC time; `now` is injectable for tests and replays."""

    name: Final = "clock"
    description: Final = "Current date and time in UTC, ISO 8601 (e.g. 2024-05-01T12:00:00Z)."
    parameters: Final = args_schema(NoArgs)

    def __init__(self, now: Callable[[], datetime] = _utc_now) -> None:
        self._now = now

    async def run(self, args: dict[str, Any]) -> str:
        decode_args(self.name, args, NoArgs)
        await trio.lowlevel.checkpoint()
        moment = self._now().astimezone(UTC)
        return moment.isoformat(timespec="seconds").replace("+00:00", "Z")
