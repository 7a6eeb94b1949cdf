"""Functions offered as tools by tests/test_pyfunc.py."""

from __future__ import annotations

import asyncio
import enum
import threading
from typing import Annotated, Any, Literal, Optional


class Colour(enum.Enum):
    RED = "red"
    GREEN = "green"


def forecast(
    city: str,
    days: int = 3,
    units: Literal["metric", "imperial"] = "metric",
    detailed: bool = False,
    hours: Optional[list[int]] = None,
    extra: dict[str, float] | None = None,
) -> str:
    """Weather forecast for a city.

    Longer explanation that is not part of the description.

    Args:
        city: City name, e.g. "Paris".
        days (int): How many days ahead,
            at most 10.
        units: Unit system.

    Returns:
        The forecast.
    """
    return f"{city}: sunny for {days} days ({units}, detailed={detailed}, hours={hours}, extra={extra})"


async def paint(colour: Colour, note: Annotated[str, "A note for the painter."] = "", anything: Any = None) -> dict:
    """Paint the wall
    in one colour."""
    await asyncio.sleep(0)
    return {"colour": colour.value, "is_enum": isinstance(colour, Colour), "note": note}


def where() -> str:
    """Name the thread this runs in."""
    return threading.current_thread().name


def fail(message: str) -> str:
    """Always fails."""
    raise ValueError(message)


def numbers(values: list[float], scale: float = 1.0) -> list[float]:
    """Scale numbers."""
    return [v * scale for v in values]


def no_doc(x: int) -> int:
    return x


def no_hints(x):
    """Has no hints."""
    return x


def star_args(*values: int) -> int:
    """Variadic."""
    return sum(values)


def odd_type(x: complex) -> str:
    """Complex numbers are not JSON."""
    return str(x)


def bad_keys(x: dict[int, str]) -> str:
    """Integer keys are not JSON."""
    return str(x)


NOT_CALLABLE = 42
