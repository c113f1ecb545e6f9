"""The `calculator` tool: arithmetic parsed with `ast` and evaluated by a whitelist, never eval.

Limits keep any expression cheap: 1000 characters, 100 levels of nesting, exponents up to 1000
in magnitude, integers up to 10 000 bits, finite floats only.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any, Final, final

import msgspec
import trio

from cuelog.actors._errors import ToolError
from cuelog.actors._tools import args_schema, decode_args

MAX_EXPRESSION_CHARS: Final = 1000
MAX_DEPTH: Final = 100
MAX_EXPONENT: Final = 1000
MAX_INT_BITS: Final = 10_000
MAX_ROUND_DIGITS: Final = 100

Number = int | float


class CalculatorArgs(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An arithmetic expression."""

    expr: str


_BINARY: Final[dict[type[ast.operator], Callable[[Any, Any], Any]]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}


class _CalcError(Exception):
    pass


def _sqrt(x: Number) -> Number:
    if x < 0:
        raise _CalcError("sqrt of a negative number")
    return math.sqrt(x)


def _round(x: Number, digits: Number | None = None) -> Number:
    if digits is None:
        return round(x)
    if not isinstance(digits, int) or abs(digits) > MAX_ROUND_DIGITS:
        raise _CalcError(f"round digits must be an integer within ±{MAX_ROUND_DIGITS}")
    return round(x, digits)


_FUNCTIONS: Final[dict[str, tuple[Callable[..., Number], int, int | None]]] = {
    # name: (function, min args, max args)
    "sqrt": (_sqrt, 1, 1),
    "abs": (abs, 1, 1),
    "round": (_round, 1, 2),
    "min": (min, 1, None),
    "max": (max, 1, None),
}


def calculate(expression: str) -> Number:
    """Evaluate `expression`; raises ToolError with a reason a model can act on."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"calculator: expression is over {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ToolError(f"calculator: not an arithmetic expression: {exc.msg}") from None
    except (RecursionError, MemoryError):
        raise ToolError("calculator: expression is nested too deeply") from None
    try:
        return _check(_eval(tree.body, 0))
    except ZeroDivisionError:
        raise ToolError("calculator: division by zero") from None
    except OverflowError:
        raise ToolError("calculator: result is too large") from None
    except _CalcError as exc:
        raise ToolError(f"calculator: {exc}") from None


def _check(value: Any) -> Number:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _CalcError("result is not a real number")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise _CalcError("result is too large")
    if isinstance(value, float) and not math.isfinite(value):
        raise _CalcError("result is too large")
    return value


def _eval(node: ast.expr, depth: int) -> Number:
    if depth > MAX_DEPTH:
        raise _CalcError("expression is nested too deeply")
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise _CalcError(f"only numbers are allowed, not {node.value!r}")
        return _check(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _eval(node.operand, depth + 1)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left = _eval(node.left, depth + 1)
        right = _eval(node.right, depth + 1)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        return _check(_BINARY[type(node.op)](left, right))
    if isinstance(node, ast.Call):
        return _call(node, depth)
    raise _CalcError(f"unsupported syntax: {type(node).__name__}")


def _check_power(base: Number, exponent: Number) -> None:
    if abs(exponent) > MAX_EXPONENT:
        raise _CalcError(f"exponent is over {MAX_EXPONENT} in magnitude")
    # |base| < 2**bits, so |base**exp| < 2**(bits*exp): refuse before computing a huge integer.
    if not (isinstance(base, int) and isinstance(exponent, int)) or exponent <= 0:
        return
    if abs(base).bit_length() * exponent > MAX_INT_BITS + exponent:
        raise _CalcError("result is too large")


def _call(node: ast.Call, depth: int) -> Number:
    if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS:
        allowed = ", ".join(sorted(_FUNCTIONS))
        raise _CalcError(f"unknown function; allowed: {allowed}")
    if node.keywords:
        raise _CalcError("keyword arguments are not supported")
    function, least, most = _FUNCTIONS[node.func.id]
    count = len(node.args)
    if count < least or (most is not None and count > most):
        raise _CalcError(f"{node.func.id} takes {least}" + ("" if most == least else "+"))
    args = [_eval(arg, depth + 1) for arg in node.args]
    try:
        return _check(function(*args))
    except (TypeError, ValueError) as exc:
        raise _CalcError(f"{node.func.id}: {exc}") from None


@final
class CalculatorTool:
    """Safe arithmetic for models."""

    name: Final = "calculator"
    description: Final = (
        "Evaluate an arithmetic expression: numbers, + - * / // % **, parentheses, "
        "and sqrt, abs, round, min, max. Example: (2 + 3) * sqrt(16)."
    )
    parameters: Final = args_schema(CalculatorArgs)

    async def run(self, args: dict[str, Any]) -> str:
        parsed = decode_args(self.name, args, CalculatorArgs)
        await trio.lowlevel.checkpoint()
        return repr(calculate(parsed.expr))
