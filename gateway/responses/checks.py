"""The small validators every part of the request parser shares: each failure is a 400 naming `param`."""

from __future__ import annotations

from typing import Any

from gateway.errors import InvalidRequest


def invalid(message: str, param: str | None) -> InvalidRequest:
    return InvalidRequest(message, param=param)


def optional(raw: dict[str, Any], key: str, kind: type, what: str) -> Any:
    value = raw.get(key)
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool) and kind is not bool):
        raise invalid(f"{key} must be {what}.", key)
    return value


def flag(raw: dict[str, Any], key: str, default: bool) -> bool:
    value = raw.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise invalid(f"{key} must be true or false.", key)
    return value


def number(raw: dict[str, Any], key: str) -> Any:
    value = raw.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise invalid(f"{key} must be a number.", key)
    return value


def names(value: Any, param: str) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise invalid("tool_names must be an array of strings.", param)
    return frozenset(value)
