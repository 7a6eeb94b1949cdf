"""mcpServers JSON files as MCP sources: `[tools.mcp] import = ...` and `toolgate mcp import`."""

from __future__ import annotations

import asyncio
import json
import sys
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway import cli
from gateway.config import settings_from_dict
from gateway.errors import ConfigError, Problems
from gateway.tools.base import SourceContext
from gateway.tools.mcp import McpSource, ServerSpec, build_all, import_toml
from gateway.tools.registry import build_sources
from tests.tools.mcp.test_mcp import SECRET, SERVER, HttpServer, call

STDIO = {"command": sys.executable, "args": [SERVER, "--transport", "stdio"]}


@pytest.fixture
async def servers() -> AsyncIterator[tuple[HttpServer, HttpServer]]:
    http, sse = HttpServer("http"), HttpServer("sse")
    await asyncio.gather(http.start(), sse.start())
    try:
        yield http, sse
    finally:
        await asyncio.gather(http.stop(), sse.stop())


def write(path: Path, document: Any) -> Path:
    path.write_text(json.dumps(document, indent=2))
    return path


def specs(sources: list[McpSource]) -> dict[str, ServerSpec]:
    return {source.name: source.spec for source in sources}


async def test_an_imported_file_makes_working_sources(
    tmp_path: Path, servers: tuple[HttpServer, HttpServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    http, sse = servers
    monkeypatch.setenv("TOOLGATE_MCP_TOKEN", SECRET)
    (tmp_path / "conf").mkdir()
    write(
        tmp_path / "conf" / "mcp.json",
        {
            "mcpServers": {
                "local": {**STDIO, "env": {"GREETING": "hello", "TOKEN": "${TOOLGATE_MCP_TOKEN}"}},
                "remote": {"url": http.url, "type": "http", "headers": {"Authorization": "Bearer ${TOOLGATE_MCP_TOKEN}"}},
                "legacy": {"url": sse.url, "type": "sse", "headers": {"X-Key": "k1"}, "autoApprove": ["echo"]},
                "inferred": {"url": http.url, "prefix": True, "tools": ["add"]},
                "off": {**STDIO, "disabled": True},
            },
            "globalShortcut": "Ctrl+Space",  # a Claude Desktop config's other settings are not ours
        },
    )
    problems = Problems(str(tmp_path / "conf" / "toolgate.toml"))
    sources = build_all({"import": "mcp.json"}, problems, "tools.mcp")
    assert problems.lines == []
    found = specs(sources)
    assert sorted(found) == ["inferred", "legacy", "local", "remote"]
    assert found["local"].transport == "stdio" and found["local"].env["TOKEN"] == "${TOOLGATE_MCP_TOKEN}"
    assert (found["remote"].transport, found["legacy"].transport, found["inferred"].transport) == ("http", "sse", "http")
    assert found["inferred"].prefix and found["inferred"].tools == ("add",)
    try:
        await asyncio.gather(*(s.start(SourceContext(environ={"PATH": "/usr/bin:/bin", "TOOLGATE_MCP_TOKEN": SECRET})) for s in sources))
        assert all(s.status().ready for s in sources), [s.status() for s in sources]
        local, remote, legacy, inferred = (next(s for s in sources if s.name == n) for n in ("local", "remote", "legacy", "inferred"))
        assert await call(local, "env", name="GREETING") == "hello"
        assert await call(local, "env", name="TOKEN") == SECRET
        assert await call(remote, "header", name="authorization") == f"Bearer {SECRET}"
        assert await call(legacy, "header", name="x-key") == "k1"
        assert [t.name for t in inferred.tools()] == ["add"]
        assert await call(inferred, "add", a=1, b=2) == "3"
    finally:
        await asyncio.gather(*(asyncio.wait_for(s.stop(), 15) for s in sources))


def test_a_vs_code_file_and_a_list_of_files(tmp_path: Path) -> None:
    write(
        tmp_path / "vscode.json",
        {
            "inputs": [{"type": "promptString", "id": "token", "password": True}],
            "servers": {"files": {"type": "stdio", **STDIO}, "web": {"type": "streamable-http", "url": "http://127.0.0.1:1/mcp"}},
        },
    )
    write(tmp_path / "claude.json", {"mcpServers": {"other": {"command": "uvx", "args": ["mcp-server-time"]}}})
    problems = Problems(str(tmp_path / "toolgate.toml"))
    found = specs(build_all({"import": ["vscode.json", str(tmp_path / "claude.json")]}, problems))
    assert problems.lines == []
    assert found["files"].transport == "stdio" and found["files"].args == tuple(STDIO["args"])
    assert found["web"].transport == "http" and found["other"].command == "uvx"


def test_a_toml_table_wins_over_an_imported_entry(tmp_path: Path) -> None:
    write(tmp_path / "a.json", {"mcpServers": {"files": {"command": "npx"}, "both": {"command": "a"}}})
    write(tmp_path / "b.json", {"mcpServers": {"both": {"command": "b"}}})
    problems = Problems(str(tmp_path / "gw.toml"))
    entries = {"import": ["a.json", "b.json"], "files": {"command": "mine", "enabled": False}}
    assert specs(build_all(entries, problems)) == {"both": ServerSpec(name="both", transport="stdio", command="a")}
    assert problems.lines == [f"{tmp_path / 'b.json'}: mcpServers.both: server 'both' is also imported from {tmp_path / 'a.json'}"]


def test_bad_entries_give_one_problem_line_each(tmp_path: Path) -> None:
    path = write(
        tmp_path / "mcp.json",
        {
            "mcpServers": {
                "nothing": {"args": ["x"]},
                "args": {"command": "npx", "args": "-y server"},
                "env": {"command": "npx", "env": {"PORT": 8080}},
                "kind": {"url": "http://h/mcp", "type": "websocket"},
                "good": {"command": "npx"},
                "mismatch": {"command": "npx", "type": "sse"},
                "import": {"command": "npx"},
                "flag": {"command": "npx", "disabled": "yes"},
                "scalar": "npx server",
            }
        },
    )
    problems = Problems(str(tmp_path / "gw.toml"))
    assert specs(build_all({"import": "mcp.json"}, problems)).keys() == {"good"}
    expected = {
        "nothing": "expected exactly one of command (stdio) or url",
        "args.args": "expected a list of strings",
        "env.env": "expected a table of strings",
        "kind.type": "expected one of stdio, http, streamable-http",
        "mismatch.type": "sse servers need url",
        "import": "'import' cannot name a server",
        "flag.disabled": "expected true or false",
        "scalar": "expected an object",
    }
    assert len(problems.lines) == len(expected), problems.lines
    for key, what in expected.items():
        assert [line for line in problems.lines if line.startswith(f"{path}: mcpServers.{key}: {what}")], (key, problems.lines)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "file not found"),
        ("{not json", "Expecting property name"),
        ('{"other": {}}', "expected a JSON object with one of mcpServers or servers"),
        ('{"mcpServers": {}, "servers": {}}', "expected a JSON object with one of mcpServers or servers"),
        ('{"mcpServers": []}', "mcpServers: expected an object of servers"),
    ],
)
def test_bad_files(tmp_path: Path, content: str | None, expected: str) -> None:
    if content is not None:
        (tmp_path / "mcp.json").write_text(content)
    problems = Problems(str(tmp_path / "gw.toml"))
    assert build_all({"import": "mcp.json"}, problems) == []
    assert len(problems.lines) == 1 and problems.lines[0].startswith(f"{tmp_path / 'mcp.json'}: ")
    assert expected in problems.lines[0]


@pytest.mark.parametrize("value", [3, "", ["a.json", ""], {"file": "a.json"}])
def test_import_must_name_files(value: Any) -> None:
    problems = Problems("gw.toml")
    assert build_all({"import": value}, problems) == []
    assert problems.lines == ["gw.toml: tools.mcp.import: expected a JSON file name, or a list of them"]


def test_toml_tables_are_still_checked() -> None:
    problems = Problems("gw.toml")
    assert build_all({"s": "npx", "t": {"command": 3}}, problems) == []
    assert problems.lines == ["gw.toml: tools.mcp.s: expected a table", "gw.toml: tools.mcp.t.command: expected a non-empty string, got 3"]


def test_cli_prints_toml_that_loads_back_to_the_same_specs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(
        tmp_path / "mcp.json",
        {
            "mcpServers": {
                "files": {"command": "npx", "args": ["-y", "@scope/server", "C:\\data", 'quote "q"'], "env": {"TOKEN": "${FILES_TOKEN}", "Ünï": "\x7f\t"}},
                "search": {"url": "https://mcp.example.com/mcp?k=v", "type": "http", "headers": {"Authorization": "Bearer sk-in-file"}},
                "old.server": {"url": "https://old.example.com/sse", "type": "sse", "timeout_s": 2.5, "disabled": True},
                "empty env": {"command": "uvx", "env": {}},
            }
        },
    )
    with pytest.raises(SystemExit) as exit_:
        cli.main(["mcp", "import", str(path)])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "[tools.mcp.files]" in out and '"${FILES_TOKEN}"' in out and "sk-in-file" in out
    tables = tomllib.loads(out)["tools"]["mcp"]
    assert list(tables) == ["files", "search", "old.server", "empty env"]
    assert tables["old.server"] == {"transport": "sse", "url": "https://old.example.com/sse", "timeout_s": 2.5, "enabled": False}
    from_toml, from_json = Problems("t"), Problems(str(tmp_path / "gw.toml"))
    assert specs(build_all(tables, from_toml)) == specs(build_all({"import": "mcp.json"}, from_json))
    assert from_toml.lines == from_json.lines == []
    assert import_toml(str(path)) == out


def test_cli_reports_problems_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "mcp.json", {"mcpServers": {"a": {"command": "npx", "args": "x"}, "b": {}}})
    with pytest.raises(SystemExit) as exit_:
        cli.main(["mcp", "import", str(path)])
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        f"{path}: mcpServers.a.args: expected a list of strings, got a string",
        f"{path}: mcpServers.b: expected exactly one of command (stdio) or url (streamable HTTP or SSE)",
    ]
    with pytest.raises(ConfigError):
        import_toml(str(tmp_path / "missing.json"))


def _registry_imports() -> bool:
    problems = Problems("gw.toml")
    build_sources({"mcp": {"import": []}}, problems)
    return problems.lines == []


@pytest.mark.skipif(not _registry_imports(), reason="gateway/tools/registry.py does not hand [tools.mcp] to build_all yet")
def test_the_config_loader_imports(tmp_path: Path) -> None:
    write(tmp_path / "mcp.json", {"mcpServers": {"files": {"command": "npx"}, "bad": {"command": "npx", "env": {"A": 1}}}})
    raw = {"upstreams": {"default": {"url": "http://127.0.0.1:1/v1"}}, "tools": {"mcp": {"import": "mcp.json"}}}
    with pytest.raises(ConfigError) as failed:
        settings_from_dict(raw, {}, str(tmp_path / "toolgate.toml"))
    assert failed.value.problems == [f"{tmp_path / 'mcp.json'}: mcpServers.bad.env: expected a table of strings, got a table of integers"]
    write(tmp_path / "mcp.json", {"mcpServers": {"files": {"command": "npx"}}})
    settings = settings_from_dict(raw, {}, str(tmp_path / "toolgate.toml"))
    assert [source.name for source in settings.sources] == ["files"]
