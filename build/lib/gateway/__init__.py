"""toolgate: an OpenAI-compatible gateway that runs the tool loop for clients that cannot.

    from gateway import create_app, load_config
    app = create_app(load_config("config/toolgate.toml", os.environ))

Importing the package loads nothing heavy: each name is imported on first use, so
`import gateway.loop` does not bring in the web server or the HTTP clients.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.app import create_app
    from gateway.config import Settings, load_config
    from gateway.tools.base import Tool, ToolError, ToolSource

__all__ = ["Settings", "Tool", "ToolError", "ToolSource", "create_app", "load_config"]
__version__ = "0.1.0"

_HOMES = {
    "create_app": "gateway.app",
    "Settings": "gateway.config",
    "load_config": "gateway.config",
    "Tool": "gateway.tools.base",
    "ToolError": "gateway.tools.base",
    "ToolSource": "gateway.tools.base",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'gateway' has no attribute {name!r}")
    value = getattr(import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
