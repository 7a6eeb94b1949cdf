"""Token usage as hosts report it: summed over the upstream calls of one request."""

from __future__ import annotations

from typing import Any


def add_usage(total: dict[str, Any] | None, usage: Any) -> dict[str, Any] | None:
    """Sum token counts, nested details included."""
    if not isinstance(usage, dict):
        return total
    if total is None:
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in usage.items()}
    for key, value in usage.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)) and isinstance(total.get(key, 0), (int, float)):
            total[key] = total.get(key, 0) + value
        elif isinstance(value, dict):
            total[key] = add_usage(total.get(key) if isinstance(total.get(key), dict) else None, value)
    return total
