"""The public surface is curated, and data flows one way between modules."""

from __future__ import annotations

import ast
from pathlib import Path

import gateway

PACKAGE = Path(gateway.__file__).parent


def test_exported_members():
    assert sorted(gateway.__all__) == ["Settings", "Tool", "ToolError", "ToolSource", "create_app", "load_config"]
    for name in gateway.__all__:
        assert getattr(gateway, name) is not None


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def _module(name: str) -> set[str]:
    return _imports(PACKAGE / f"{name}.py")


def test_the_loop_knows_neither_starlette_nor_httpx():
    for name in ("loop", "events", "assemble", "sse"):
        imported = _module(name)
        assert not {m for m in imported if m.split(".")[0] in ("starlette", "httpx", "aiohttp", "uvicorn")}, name


def test_only_upstream_speaks_to_the_llm_host():
    for path in PACKAGE.glob("*.py"):
        if path.stem == "transports":
            continue
        assert not {m for m in _imports(path) if m.split(".")[0] in ("httpx_aiohttp", "aiohttp")}, path.name


def test_flow_is_one_way():
    # Lower layers never import the ones above them.
    above = {
        "wire": {"gateway.routes", "gateway.pump", "gateway.loop", "gateway.app"},
        "loop": {"gateway.routes", "gateway.pump", "gateway.chat_render", "gateway.app"},
        "upstream": {"gateway.loop", "gateway.routes", "gateway.pump", "gateway.app"},
        "pump": {"gateway.routes", "gateway.app", "gateway.loop", "gateway.upstream", "gateway.chat_render"},
        "chat_render": {"gateway.routes", "gateway.app", "gateway.loop", "gateway.upstream", "gateway.pump"},
        "assemble": {"gateway.loop", "gateway.upstream", "gateway.routes", "gateway.app"},
        "config": {"gateway.routes", "gateway.app", "gateway.loop", "gateway.upstream"},
    }
    for name, forbidden in above.items():
        assert not _module(name) & forbidden, name
    for path in (PACKAGE / "tools").rglob("*.py"):
        assert not {m for m in _imports(path) if m in ("gateway.loop", "gateway.routes", "gateway.app", "gateway.pump")}, path
