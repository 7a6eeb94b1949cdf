"""Functions offered as tools by tests/tools/test_pyfunc.py."""

from __future__ import annotations

import asyncio
import enum
import functools
import threading
from typing import Annotated, Any, Literal, Optional

from gateway.tools.base import ToolError

RELEASE = threading.Event()  # lets every hung call of `hang` return


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


def hang(seconds: float = 30.0) -> str:
    """Block this thread until the test releases it."""
    RELEASE.wait(seconds)
    return "released"


def leak(key: str, told: bool = False) -> str:
    """Fail with a secret in the message."""
    if told:
        raise ToolError(f"bad key {key}")
    raise RuntimeError(f"bad key {key}")


def exits(code: int) -> str:
    """Raise SystemExit on the worker thread."""
    raise SystemExit(code)


def big() -> dict:
    """Return what JSON cannot hold as a number."""
    return {1: 2**70}


def _plain(func):
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        return func(*args, **kwargs)

    return wrapper


@_plain
async def shout(word: str) -> str:
    """Say it loud (an async function behind a plain decorator)."""
    return word.upper()


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
