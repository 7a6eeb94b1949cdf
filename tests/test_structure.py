"""The public surface is curated, and data flows one way between modules.

Each layer is imported alone in a fresh interpreter, and what it loaded is checked: the
truth about the import graph, lazy and transitive imports included, not the source text.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import gateway

PACKAGE = Path(gateway.__file__).parent
ROOT = PACKAGE.parent

WEB = {"starlette", "uvicorn"}
HTTP = {"aiohttp", "httpx", "httpx_aiohttp"}
ABOVE_THE_LOOP = {"gateway.routes", "gateway.app", "gateway.pump", "gateway.chat_render", "gateway.responses", "gateway.server", "gateway.cli"}
WIRE_FORMATS = {"gateway.codecs", "gateway.assemble", "gateway.upstream", "gateway.transports", "gateway.sse"}

# module -> what importing it alone must not load (top-level packages and gateway modules).
LAYERS: dict[str, set[str]] = {
    "gateway": WEB | HTTP | {"prometheus_client", "jsonschema", "mcp"} | {"gateway.app", "gateway.config", "gateway.tools"},
    "gateway.events": WEB | HTTP | {"gateway.errors", "gateway.config"},
    "gateway.model": WEB | HTTP | {"gateway.loop", "gateway.codecs", "gateway.upstream"},
    # The loop knows neither the web server, nor HTTP, nor any host's wire format.
    "gateway.loop": WEB | HTTP | ABOVE_THE_LOOP | WIRE_FORMATS | {"gateway.wire"},
    "gateway.codecs": WEB | HTTP | ABOVE_THE_LOOP | {"gateway.loop", "gateway.transports", "gateway.tools.toolbox"},
    # The transport is handed in: the client itself loads no HTTP library.
    "gateway.upstream": WEB | HTTP | ABOVE_THE_LOOP | {"gateway.loop", "gateway.codecs", "gateway.assemble", "gateway.model"},
    "gateway.assemble": WEB | HTTP | ABOVE_THE_LOOP | {"gateway.loop", "gateway.upstream", "gateway.codecs"},
    "gateway.config": WEB | HTTP | ABOVE_THE_LOOP | WIRE_FORMATS | {"gateway.loop"},
    "gateway.wire": WEB | HTTP | ABOVE_THE_LOOP | WIRE_FORMATS | {"gateway.loop"},
    "gateway.pump": WEB | HTTP | (ABOVE_THE_LOOP - {"gateway.pump"}) | WIRE_FORMATS | {"gateway.loop"},
    "gateway.chat_render": WEB | HTTP | (ABOVE_THE_LOOP - {"gateway.chat_render"}) | {"gateway.loop", "gateway.upstream", "gateway.codecs"},
    "gateway.tools.toolbox": WEB | HTTP | ABOVE_THE_LOOP | WIRE_FORMATS | {"gateway.loop"},
}


def _loaded(module: str) -> set[str]:
    code = f"import importlib, json, sys; importlib.import_module({module!r}); print(json.dumps(sorted(sys.modules)))"
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]
    return set(json.loads(run.stdout))


@pytest.mark.parametrize("module", sorted(LAYERS))
def test_each_layer_loads_only_what_is_below_it(module):
    loaded = _loaded(module)
    assert module in loaded
    # A forbidden name is matched as a package: "gateway.codecs" also forbids "gateway.codecs.ollama".
    hits = {name for name in loaded for banned in LAYERS[module] if name == banned or name.startswith(banned + ".")}
    assert not hits, f"importing {module} loaded {sorted(hits)}"


def test_the_loop_reaches_the_host_only_through_a_model():
    loaded = _loaded("gateway.loop")
    assert "gateway.model" in loaded
    assert {"gateway.assemble", "gateway.upstream"}.isdisjoint(loaded)


def test_exported_members():
    assert sorted(gateway.__all__) == ["Settings", "Tool", "ToolError", "ToolSource", "create_app", "load_config"]
    code = "import gateway; print(all(getattr(gateway, n) is not None for n in gateway.__all__))"
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.stdout.strip() == "True", run.stderr[-2000:]
    from gateway.config import load_config

    assert gateway.load_config is load_config and set(gateway.__all__) <= set(dir(gateway))
    with pytest.raises(AttributeError):
        gateway.no_such_name  # noqa: B018


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_only_the_transports_name_the_upstream_http_library():
    # Who *may* load aiohttp is a property of the source (the app loads it through transports).
    for path in PACKAGE.rglob("*.py"):
        if path.name == "transports.py" and path.parent == PACKAGE:
            continue
        assert not {m for m in _imports(path) if m.split(".")[0] in ("httpx_aiohttp", "aiohttp")}, path
