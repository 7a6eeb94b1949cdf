"""``calculate``: arithmetic by walking the ``ast``, never ``eval``.

Every step is bounded so that no expression can hang the process: the text
length, the size of any integer (checked *before* a power is computed) and the
magnitude of floats (Python raises ``OverflowError`` itself).
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

from gateway.tools.base import Tool, ToolError
from gateway.tools.builtin import Options

MAX_INT_BITS = 4096  # about 1230 decimal digits

PARAMETERS = {
    "type": "object",
    "properties": {
        "expression": {
            "type": "string",
            "description": "Arithmetic such as '2 * (3 + 4) ** 2 / sqrt(2)'. Operators + - * / // % **; "
            "functions sqrt abs round min max floor ceil log exp sin cos tan; constants pi e.",
        }
    },
    "required": ["expression"],
    "additionalProperties": False,
}

Number = int | float


def _power(base: Number, exp: Number) -> Number:
    if isinstance(base, int) and isinstance(exp, int) and exp > 0 and abs(base) > 1:
        if exp * math.log2(abs(base)) > MAX_INT_BITS:
            raise ToolError("result too large")
    result = base**exp
    if isinstance(result, complex):
        raise ToolError("result is not a real number")
    return result


def _log(x: Number, base: Number = math.e) -> float:
    return math.log(x, base)


def _round(x: Number, digits: int = 0) -> Number:
    if not isinstance(digits, int) or abs(digits) > 100:
        raise ToolError("round() takes a whole number of digits between -100 and 100")
    return round(x, digits) if digits else round(x)


BINARY: dict[type, Callable[[Any, Any], Number]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: _power,
}
UNARY: dict[type, Callable[[Any], Number]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}

# name -> (function, fewest arguments, most arguments)
FUNCTIONS: dict[str, tuple[Callable[..., Number], int, int]] = {
    "sqrt": (math.sqrt, 1, 1),
    "abs": (abs, 1, 1),
    "round": (_round, 1, 2),
    "min": (lambda *xs: min(xs), 1, 100),
    "max": (lambda *xs: max(xs), 1, 100),
    "floor": (math.floor, 1, 1),
    "ceil": (math.ceil, 1, 1),
    "log": (_log, 1, 2),
    "exp": (math.exp, 1, 1),
    "sin": (math.sin, 1, 1),
    "cos": (math.cos, 1, 1),
    "tan": (math.tan, 1, 1),
}
CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e}


def _checked(value: Number) -> Number:
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise ToolError("result too large")
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError("result is not a finite number")
    return value


def _eval(node: ast.AST) -> Number:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return _checked(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
        return _checked(BINARY[type(node.op)](_eval(node.left), _eval(node.right)))
    if isinstance(node, ast.UnaryOp) and type(node.op) in UNARY:
        return UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.Name) and node.id in CONSTANTS:
        return CONSTANTS[node.id]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS:
        func, fewest, most = FUNCTIONS[node.func.id]
        if node.keywords or not fewest <= len(node.args) <= most:
            raise ToolError(f"{node.func.id}() takes {fewest}{'' if fewest == most else f' to {most}'} argument(s)")
        return _checked(func(*(_eval(arg) for arg in node.args)))
    raise ToolError(f"not allowed in an expression: {_describe(node)}")


def _describe(node: ast.AST) -> str:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitXor):
        return "'^' (use ** for powers)"
    if isinstance(node, ast.Name):
        return f"unknown name {node.id!r}"
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        return f"unknown function {node.func.id!r}"
    return type(node).__name__


def evaluate(expression: str, *, max_length: int = 1000) -> Number:
    """The value of ``expression``; ``ToolError`` for anything but bounded arithmetic."""
    if len(expression) > max_length:
        raise ToolError(f"expression too long (over {max_length} characters)")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ToolError(f"syntax error in expression: {exc.msg}") from None
    except (RecursionError, MemoryError):
        raise ToolError("expression too deeply nested") from None
    try:
        return _eval(tree)
    except ZeroDivisionError:
        raise ToolError("division by zero") from None
    except OverflowError:
        raise ToolError("result too large") from None
    except RecursionError:
        raise ToolError("expression too deeply nested") from None
    except (ValueError, TypeError) as exc:
        raise ToolError(f"math error: {exc}") from None


def format_number(value: Number) -> str:
    if isinstance(value, float):
        return format(value, ".15g")  # 0.1 + 0.2 reads as 0.3, not 0.30000000000000004
    return str(value)


class Calculate(Tool):
    annotations = {"readOnlyHint": True, "idempotentHint": True, "openWorldHint": False}

    def __init__(self, *, max_length: int = 1000) -> None:
        super().__init__("calculate", "Evaluate an arithmetic expression exactly and safely.", PARAMETERS)
        self.max_length = max_length

    async def call(self, arguments: dict[str, Any]) -> str:
        expression = arguments.get("expression")
        if not isinstance(expression, str) or not expression.strip():
            raise ToolError("expression must be a non-empty string")
        return format_number(evaluate(expression, max_length=self.max_length))


def build(opts: Options) -> Calculate | None:
    max_length = opts.number("max_length", 1000, integer=True)
    return Calculate(max_length=max_length) if opts.finish() else None
