"""`toolgate check`, run as a user runs it: a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import gateway

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "config" / "toolgate.toml"
_SCRIPT = Path(sys.executable).with_name("toolgate")
# The installed console script, as a user runs it; `python -m gateway` where it is missing.
TOOLGATE = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "gateway"]

SECRETS = {
    "TOOLGATE_UPSTREAM_API_KEY": "sk-upstream-d3adb33f",
    "TOOLGATE_API_KEYS": "client-key-c0ffee,client-key-2",
    "OTHER_KEY": "sk-other-f00d",
}


def toolgate(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TOOLGATE_")}
    return subprocess.run(
        [*TOOLGATE, *args],
        env={**clean, **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def resolved(stdout: str) -> dict:
    """The JSON document `check` prints before the tools list."""
    return json.JSONDecoder().raw_decode(stdout)[0]


def test_check_on_the_shipped_config():
    result = toolgate("check", "--config", str(SHIPPED))
    assert result.returncode == 0, result.stderr
    config = resolved(result.stdout)
    assert config["path"] == str(SHIPPED)
    assert config["upstreams"]["default"]["type"] == "openai"
    assert set(config["models"]) == {"toolgate", "toolgate-plain"}
    tools_section = result.stdout.split("\ntools:", 1)[1]
    assert "builtin: calculate, current_time" in tools_section
    [line] = [line for line in tools_section.splitlines() if line.startswith("model toolgate ->")]
    assert "calculate" in line and "current_time" in line


def test_check_uses_the_default_path_and_env_overrides():
    result = toolgate("check", env={"TOOLGATE_UPSTREAM_URL": "http://localhost:11434/v1/", "TOOLGATE_UPSTREAM_TYPE": "ollama"})
    assert result.returncode == 0, result.stderr
    config = resolved(result.stdout)
    assert config["path"] == "config/toolgate.toml"
    assert config["upstreams"]["default"]["url"] == "http://localhost:11434"
    assert config["upstreams"]["default"]["type"] == "ollama"


def test_secrets_set_via_env_never_appear(tmp_path):
    config = tmp_path / "toolgate.toml"
    config.write_text(
        SHIPPED.read_text()
        + textwrap.dedent(
            """
            [upstreams.other]
            url = "https://api.example.com/v1"
            api_key_env = "OTHER_KEY"
            headers = { "x-extra" = "header-value-5ec7e7" }
            """
        )
    )
    result = toolgate("check", "--config", str(config), env=SECRETS)
    assert result.returncode == 0, result.stderr
    for secret in [*SECRETS.values(), "client-key-c0ffee", "header-value-5ec7e7"]:
        assert secret not in result.stdout and secret not in result.stderr
    described = resolved(result.stdout)
    assert described["upstreams"]["default"]["api_key"] == "***"
    assert described["upstreams"]["other"]["api_key"] == "***"
    assert described["auth"] == {"api_keys": 2}


def test_bad_config_exits_2_with_one_line_per_problem(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text(
        textwrap.dedent(
            """
            [server]
            port = "eighty"
            [loop]
            on_max_rounds = "explode"
            [upstreams.default]
            url = "http://x/v1"
            api_key = "sk-in-the-file-123"
            """
        )
    )
    result = toolgate("check", "--config", str(config))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3, result.stderr
    assert all(line.startswith(f"{config}: ") for line in lines)
    assert sorted(line.split(": ")[1] for line in lines) == ["loop.on_max_rounds", "server.port", "upstreams.default.api_key"]
    assert "sk-in-the-file-123" not in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_config_file_exits_2(tmp_path):
    missing = tmp_path / "nope.toml"
    result = toolgate("check", "--config", str(missing))
    assert result.returncode == 2
    assert result.stderr.strip() == f"{missing}: file not found"


def test_unset_api_key_env_exits_2(tmp_path):
    config = tmp_path / "toolgate.toml"
    config.write_text('[upstreams.default]\nurl = "http://x/v1"\napi_key_env = "NOT_SET_ANYWHERE_42"\n')
    result = toolgate("check", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"{config}: upstreams.default.api_key_env: environment variable NOT_SET_ANYWHERE_42 is not set"
    ]


def test_bad_env_override_exits_2():
    result = toolgate("check", "--config", str(SHIPPED), env={"TOOLGATE_PORT": "http"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"{SHIPPED}: TOOLGATE_PORT: expected a port number, got 'http'"]


def test_the_container_refuses_to_start_without_an_upstream():
    # The image sets TOOLGATE_REQUIRE_UPSTREAM: a deployment that forgot its URL must not serve the demo.
    env = {"TOOLGATE_REQUIRE_UPSTREAM": "1"}
    result = toolgate("serve", "--config", str(SHIPPED), "--port", "1", env=env)
    assert result.returncode == 2
    assert "no upstream URL is set" in result.stderr and "--demo" in result.stderr


def test_version():
    result = toolgate("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"toolgate {gateway.__version__}"


def test_init_writes_the_shipped_starter_which_passes_check(tmp_path):
    target = tmp_path / "conf" / "toolgate.toml"
    result = toolgate("init", str(target), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"toolgate check --config {target}" in result.stdout
    assert target.read_bytes() == SHIPPED.read_bytes()  # what init writes is what the repository ships
    checked = toolgate("check", "--config", str(target), cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert "model toolgate -> default/gpt-4o-mini: current_time, calculate" in checked.stdout


def test_init_defaults_to_where_serve_looks_and_never_overwrites(tmp_path):
    first = toolgate("init", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    written = tmp_path / "config" / "toolgate.toml"
    assert "toolgate check\n" in first.stdout
    written.write_text("# mine\n")
    again = toolgate("init", cwd=tmp_path)
    assert again.returncode == 1
    assert again.stderr.strip() == "config/toolgate.toml: already exists; not overwritten (name another path, or remove it first)"
    assert written.read_text() == "# mine\n"
