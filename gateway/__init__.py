"""toolgate: an OpenAI-compatible gateway that runs the tool loop for clients that cannot.

    from gateway import create_app, load_config
    app = create_app(load_config("config/toolgate.toml", os.environ))
"""

from gateway.app import create_app
from gateway.config import Settings, load_config
from gateway.tools.base import Tool, ToolError, ToolSource

__all__ = ["Settings", "Tool", "ToolError", "ToolSource", "create_app", "load_config"]
__version__ = "0.1.0"
