"""Tool protocol helpers, the clock and calculator tools, and the registry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

from cuelog.actors._errors import ToolError
from cuelog.actors._tools import ClockTool, invoke_tool, parse_tool_arguments
from cuelog.actors._tools_calculator import CalculatorTool, calculate
from cuelog.actors._tools_registry import ToolRegistry, ToolsConfig


class SlowTool:
    name = "slow"
    description = "sleeps"
    parameters: dict[str, Any] = {"type": "object"}

    async def run(self, args: dict[str, Any]) -> str:
        await trio.sleep(args.get("seconds", 100))
        return "done"


class BuggyTool:
    name = "buggy"
    description = "raises"
    parameters: dict[str, Any] = {"type": "object"}

    async def run(self, args: dict[str, Any]) -> str:
        raise KeyError("oops")


async def test_invoke_tool_times_out_with_a_clear_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A tool slower than its timeout raises ToolError naming the tool and the limit."""
    start = trio.current_time()
    with pytest.raises(ToolError, match=r"slow: timed out after 5 s"):
        await invoke_tool(SlowTool(), {}, timeout=5)
    assert trio.current_time() - start == pytest.approx(5)
    assert await invoke_tool(SlowTool(), {"seconds": 1}, timeout=5) == "done"


async def test_invoke_tool_turns_a_crash_into_tool_error() -> None:
    """An unexpected exception inside a tool becomes a ToolError with its type and message."""
    with pytest.raises(ToolError, match="buggy: failed: KeyError: 'oops'"):
        await invoke_tool(BuggyTool(), {}, timeout=5)


async def test_invoke_tool_does_not_swallow_outer_cancellation(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Cancelling the caller cancels the tool; it is not reported as a tool timeout."""
    with trio.move_on_after(1) as outer:
        await invoke_tool(SlowTool(), {}, timeout=10)
    assert outer.cancelled_caught


def test_parse_tool_arguments_requires_a_json_object() -> None:
    """Model-produced argument text must decode to an object; anything else is a ToolError."""
    assert parse_tool_arguments("calculator", '{"expr": "1"}') == {"expr": "1"}
    assert parse_tool_arguments("clock", "") == {}
    for bad in ("[1]", "{oops", "3"):
        with pytest.raises(ToolError, match="calculator: arguments are not a JSON object"):
            parse_tool_arguments("calculator", bad)


async def test_clock_returns_injected_time_in_utc_iso8601() -> None:
    """The clock converts the injected time to UTC and formats it as ISO 8601 with Z."""
    paris = timezone(timedelta(hours=2))
    tool = ClockTool(now=lambda: datetime(2024, 5, 1, 14, 30, 5, 123, tzinfo=paris))
    assert await tool.run({}) == "2024-05-01T12:30:05Z"
    real = datetime.fromisoformat(await ClockTool().run({}))
    assert abs(real - datetime.now(UTC)) < timedelta(minutes=1)


async def test_clock_rejects_unknown_arguments() -> None:
    """Arguments the clock does not define are refused, not ignored."""
    with pytest.raises(ToolError, match=r"clock: invalid arguments: .*unknown field `tz`"):
        await ClockTool().run({"tz": "CET"})


@pytest.mark.parametrize(
    ("expr", "result"),
    [
        ("2 + 2", 4),
        ("(2 + 3) * sqrt(16)", 20.0),
        ("7 // 2 + 7 % 3", 4),
        ("-2 ** 2", -4),
        ("2 ** -2", 0.25),
        ("10 / 4", 2.5),
        ("abs(-3) + round(2.567, 2) + min(4, 1, 9) + max(1, 2)", 8.57),
        ("round(2.5)", 2),
        ("2 ** 1000 // 2 ** 999", 2),
    ],
)
def test_calculator_evaluates_arithmetic(expr: str, result: float) -> None:
    """Numbers, the six operators, unary minus, parentheses and the five functions work."""
    assert calculate(expr) == pytest.approx(result)


@pytest.mark.parametrize(
    ("expr", "reason"),
    [
        ("1 / 0", "division by zero"),
        ("5 % 0", "division by zero"),
        ("2 ** 1001", "exponent is over 1000"),
        ("9 ** 9 ** 9", "exponent is over 1000"),
        ("(2 ** 1000) ** 1000", "result is too large"),
        ("10.0 ** 400", "result is too large"),
        ("(-8) ** (1 / 3)", "not a real number"),
        ("sqrt(-1)", "sqrt of a negative number"),
        ("x + 1", "unsupported syntax: Name"),
        ("__import__('os').system('true')", "unknown function"),
        ("open('x')", "unknown function"),
        ("(1).real", "unsupported syntax: Attribute"),
        ("'a' * 3", "only numbers"),
        ("True + 1", "only numbers"),
        ("[1, 2]", "unsupported syntax: List"),
        ("lambda: 1", "unsupported syntax: Lambda"),
        ("max()", r"max takes 1\+"),
        ("round(1, -100000)", "round digits"),
        ("-" * 500 + "1", "nested too deeply"),
        ("1 +", "not an arithmetic expression"),
        ("1" + " + 1" * 250, "over 1000 characters"),
    ],
)
def test_calculator_refuses_unsafe_or_unbounded_input(expr: str, reason: str) -> None:
    """Names, attributes, other calls, huge powers and bad math give a ToolError with a reason."""
    with pytest.raises(ToolError, match=reason):
        calculate(expr)


async def test_calculator_tool_validates_arguments_and_formats_result() -> None:
    """The tool takes exactly {"expr": str} and answers the repr of the number."""
    tool = CalculatorTool()
    assert await tool.run({"expr": "0.1 + 0.2"}) == "0.30000000000000004"
    assert tool.parameters["additionalProperties"] is False
    assert tool.parameters["required"] == ["expr"]
    with pytest.raises(ToolError, match="unknown field `code`"):
        await tool.run({"expr": "1", "code": "x"})
    with pytest.raises(ToolError, match="Expected `str`"):
        await tool.run({"expr": 1})


async def test_registry_enables_clock_and_calculator_by_default() -> None:
    """The default registry offers clock and calculator, knows http_fetch, refuses the rest."""
    registry = ToolRegistry.builtins()
    assert registry.names() == ["clock", "calculator", "http_fetch"]
    assert registry.enabled() == ["clock", "calculator"]
    assert [s.name for s in registry.specs()] == ["clock", "calculator"]
    assert [s.name for s in registry.specs(["calculator", "http_fetch"])] == ["calculator"]
    assert await registry.invoke("calculator", {"expr": "6 * 7"}) == "42"
    with pytest.raises(ToolError, match="'http_fetch' is disabled"):
        await registry.invoke("http_fetch", {"url": "https://example.com"})
    with pytest.raises(ToolError, match="no tool named 'rm'"):
        registry.get("rm")


def test_registry_config_enables_files_only_with_a_root(tmp_path: Path) -> None:
    """Enabling files needs files_root; with it, files is known and enabled."""
    with pytest.raises(ToolError, match="files_root"):
        ToolRegistry.builtins(ToolsConfig(enabled=["files"]))
    registry = ToolRegistry.builtins(
        ToolsConfig(enabled=["files", "clock"], files_root=str(tmp_path), timeouts={"files": 2})
    )
    assert registry.enabled() == ["files", "clock"]
    assert "files" in registry.names()
    assert registry.timeout_of("files") == 2 and registry.timeout_of("clock") == 30
    with pytest.raises(ToolError, match="unknown tools enabled: shell"):
        ToolRegistry.builtins(ToolsConfig(enabled=["shell"]))


def test_tools_config_decodes_from_plain_data() -> None:
    """A TOML-shaped dict converts to ToolsConfig; unknown keys are refused."""
    config = msgspec.convert(
        {"enabled": ["clock"], "files_root": "/srv/sandbox", "http_fetch": {"max_bytes": 10}},
        ToolsConfig,
    )
    assert config.files_root == "/srv/sandbox" and config.http_fetch.max_bytes == 10
    with pytest.raises(msgspec.ValidationError, match="unknown field `shell`"):
        msgspec.convert({"shell": True}, ToolsConfig)
