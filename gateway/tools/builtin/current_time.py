"""``current_time``: the date, time and weekday in an IANA time zone."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway.tools.base import Tool, ToolError
from gateway.tools.builtin import Options

PARAMETERS = {
    "type": "object",
    "properties": {
        "timezone": {
            "type": "string",
            "description": "IANA time zone name such as 'Europe/Berlin' or 'America/New_York'.",
        }
    },
    "additionalProperties": False,
}


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def zone(name: str) -> ZoneInfo:
    """The zone called ``name``; ``ToolError`` naming it if there is none."""
    try:
        return ZoneInfo(name)
    # ValueError: malformed keys ("../x", ""); OSError: a directory such as "Europe".
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ToolError(f"unknown time zone {name!r}; use an IANA name such as 'Europe/Paris'") from None


class CurrentTime(Tool):
    annotations = {"readOnlyHint": True, "openWorldHint": False}

    def __init__(self, default_timezone: str = "UTC", *, now: Callable[[], datetime] = _utcnow) -> None:
        super().__init__(
            "current_time",
            f"The current date, time and weekday. Time zone defaults to {default_timezone}.",
            PARAMETERS,
        )
        self.default_timezone = default_timezone
        self._now = now

    async def call(self, arguments: dict[str, Any]) -> str:
        name = arguments.get("timezone") or self.default_timezone
        if not isinstance(name, str):
            raise ToolError("timezone must be a string")
        local = self._now().astimezone(zone(name))
        label = name if local.tzname() == name else f"{name}, {local.tzname()}"
        return f"{local.isoformat(timespec='seconds')} {local:%A} ({label})"


def build(opts: Options) -> CurrentTime | None:
    default = opts.string("default_timezone", "UTC")
    if default is not None:
        try:
            zone(default)
        except ToolError:
            opts.problem("default_timezone", f"unknown time zone {default!r}; expected an IANA name")
    return CurrentTime(default) if opts.finish() and default is not None else None
