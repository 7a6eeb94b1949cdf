"""Loading the TOML config: the shipped file, every problem at once, env overrides, secrets."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gateway.config import Secret, Settings, load_config, settings_from_dict
from gateway.errors import ConfigError, Problems

SHIPPED = Path(__file__).resolve().parent.parent / "config" / "toolgate.toml"


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "toolgate.toml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def problems_of(path: str, environ: dict | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, environ or {})
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def problem_for(problems: list[str], key: str) -> str:
    hits = [p for p in problems if f": {key}: " in p]
    assert len(hits) == 1, f"expected one problem for {key}, got {hits} in {problems}"
    return hits[0]


# --- the shipped file ------------------------------------------------------------


def test_shipped_config_loads_as_it_is():
    settings = load_config(SHIPPED, {})
    assert settings.path == str(SHIPPED)
    default = settings.upstreams[settings.server.default_upstream]
    assert default.type == "openai"
    assert default.url == ""  # filled by TOOLGATE_UPSTREAM_URL (or demo mode)
    assert settings.server.host == "127.0.0.1"
    tooled = [m for m in settings.models.values() if {"current_time", "calculate"} <= set(m.tools)]
    assert tooled, "a model alias offering the safe built-ins"
    names = {tool.name for source in settings.sources for tool in source.tools()}
    assert {"current_time", "calculate"} <= names
    assert settings.api_keys == ()


def test_shipped_config_plus_one_env_var_is_a_working_upstream():
    settings = load_config(SHIPPED, {"TOOLGATE_UPSTREAM_URL": "https://api.openai.com/v1/"})
    assert settings.upstreams["default"].url == "https://api.openai.com/v1"


def test_config_path_from_env_and_missing_file(tmp_path):
    path = write(tmp_path, "[server]\nport = 9000\n")
    assert load_config(None, {"TOOLGATE_CONFIG": path}).server.port == 9000
    missing = str(tmp_path / "nope.toml")
    assert problems_of(missing) == [f"{missing}: file not found"]


def test_toml_syntax_error_is_one_problem_naming_the_file(tmp_path):
    path = write(tmp_path, "[server\nport = 1\n")
    problems = problems_of(path)
    assert len(problems) == 1 and problems[0].startswith(f"{path}: ")


def test_empty_file_gives_defaults():
    settings = settings_from_dict({}, {})
    assert settings.server.port == 8080
    assert settings.loop.max_rounds == 8
    assert settings.loop.on_max_rounds == "answer"
    assert list(settings.upstreams) == ["default"]
    assert settings.models == {}


# --- every problem at once ------------------------------------------------------


def test_every_problem_is_listed_at_once_with_file_and_key(tmp_path):
    path = write(
        tmp_path,
        """
        [server]
        port = "eighty"
        progress = "loud"
        keepalive_s = -1
        bogus = 1

        [loop]
        max_rounds = true
        on_max_rounds = "explode"

        [upstreams.default]
        url = "ftp://example.com"
        type = "bedrock"
        retries = "3"
        headers = { x = 1 }

        [[models]]
        name = "a"
        upstream = "nowhere"
        tools = "calculate"
        temperature = 0.2

        [[models]]
        name = "a"

        [extras]
        x = 1

        [tools.builtin.warp_drive]
        """,
    )
    problems = problems_of(path)
    assert all(p.startswith(f"{path}: ") for p in problems)
    expected = {
        "server.port": "an integer",
        "server.progress": "'loud'",
        "server.keepalive_s": "non-negative",
        "server.bogus": "unknown key",
        "loop.max_rounds": "an integer",
        "loop.on_max_rounds": "'explode'",
        "upstreams.default.url": "'ftp://example.com'",
        "upstreams.default.type": "'bedrock'",
        "upstreams.default.retries": "an integer",
        "upstreams.default.headers": "table of strings",
        "models[0].upstream": "upstreams.nowhere",
        "models[0].tools": "list",
        "models[0].temperature": "unknown key",
        "models[1].name": "defined twice",
        "extras": "unknown section",
    }
    for key, what in expected.items():
        assert what in problem_for(problems, key), key
    assert any("warp_drive" in p for p in problems)
    assert len(problems) == len(expected) + 1


def test_unknown_keys_name_what_is_expected():
    with pytest.raises(ConfigError) as info:
        settings_from_dict({"server": {"prot": 80}, "auth": {"keys": "X"}}, {}, "f.toml")
    server = problem_for(info.value.problems, "server.prot")
    assert server.startswith("f.toml: server.prot: unknown key") and "port" in server
    assert "api_keys_env" in problem_for(info.value.problems, "auth.keys")


@pytest.mark.parametrize("section", ["server", "loop", "auth", "upstreams", "tools"])
def test_a_section_that_is_not_a_table(section):
    with pytest.raises(ConfigError) as info:
        settings_from_dict({section: 3}, {})
    assert "expected a table" in problem_for(info.value.problems, section)


def test_models_must_be_an_array_of_tables():
    with pytest.raises(ConfigError) as info:
        settings_from_dict({"models": {"name": "x"}}, {})
    assert "array of tables" in problem_for(info.value.problems, "models")
    with pytest.raises(ConfigError) as info:
        settings_from_dict({"models": ["x"]}, {})
    assert "[[models]]" in info.value.problems[0]


def test_booleans_are_not_numbers_and_numbers_not_booleans():
    with pytest.raises(ConfigError) as info:
        settings_from_dict({"server": {"port": True, "trace": 1}, "loop": {"tool_timeout_s": False}}, {})
    assert {p.split(": ")[1] for p in info.value.problems} == {"server.port", "server.trace", "loop.tool_timeout_s"}


def test_integers_are_fine_where_seconds_are_floats():
    settings = settings_from_dict({"server": {"keepalive_s": 5}, "loop": {"tool_timeout_s": 2}}, {})
    assert settings.server.keepalive_s == 5.0 and isinstance(settings.server.keepalive_s, float)
    assert settings.loop.tool_timeout_s == 2.0


def test_default_upstream_must_exist():
    raw = {"server": {"default_upstream": "main"}, "upstreams": {"other": {"url": "http://x/v1"}}}
    with pytest.raises(ConfigError) as info:
        settings_from_dict(raw, {})
    assert "upstreams.main" in problem_for(info.value.problems, "server.default_upstream")


def test_model_naming_a_missing_upstream_and_a_missing_name():
    with pytest.raises(ConfigError) as info:
        settings_from_dict({"models": [{"upstream": "nope"}]}, {})
    assert "upstreams.nope" in problem_for(info.value.problems, "models[0].upstream")
    assert "non-empty" in problem_for(info.value.problems, "models[0].name")


def test_model_alias_fields():
    settings = settings_from_dict(
        {
            "upstreams": {"default": {"url": "http://x/v1"}},
            "models": [
                {
                    "name": "fast",
                    "tools": ["calc*", "current_time"],
                    "system_prompt": "Be brief.",
                    "max_rounds": 2,
                    "on_max_rounds": "error",
                    "defaults": {"temperature": 0.2},
                    "overrides": {"max_tokens": 64},
                },
            ],
        },
        {},
    )
    alias = settings.models["fast"]
    assert alias.upstream == "default"
    assert alias.upstream_model == "fast"  # the name, unless upstream_model says otherwise
    assert alias.tools == ("calc*", "current_time")
    assert (alias.max_rounds, alias.on_max_rounds) == (2, "error")
    assert dict(alias.defaults) == {"temperature": 0.2} and dict(alias.overrides) == {"max_tokens": 64}


# --- environment overrides -------------------------------------------------------


def test_env_overrides_set_the_default_upstream_and_server(tmp_path):
    path = write(
        tmp_path,
        """
        [server]
        host = "127.0.0.1"
        port = 8080
        [upstreams.default]
        url = "http://file.example/v1"
        type = "openai"
        api_key_env = "FILE_KEY"
        """,
    )
    environ = {
        "FILE_KEY": "sk-file",
        "TOOLGATE_UPSTREAM_URL": "http://ollama:11434/v1/",
        "TOOLGATE_UPSTREAM_TYPE": "ollama",
        "TOOLGATE_UPSTREAM_API_KEY": "sk-env",
        "TOOLGATE_API_KEYS": " client-1 , client-2,, ",
        "TOOLGATE_HOST": "0.0.0.0",
        "TOOLGATE_PORT": "9090",
    }
    settings = load_config(path, environ)
    default = settings.upstreams["default"]
    assert default.url == "http://ollama:11434"
    assert default.type == "ollama"
    assert default.api_key.value == "sk-env"
    assert default.api_key_env == "TOOLGATE_UPSTREAM_API_KEY"
    assert [k.value for k in settings.api_keys] == ["client-1", "client-2"]
    assert (settings.server.host, settings.server.port) == ("0.0.0.0", 9090)


def test_env_overrides_follow_the_configured_default_upstream():
    raw = {"server": {"default_upstream": "main"}, "upstreams": {"main": {"url": "http://a/v1"}, "other": {"url": "http://b/v1"}}}
    settings = settings_from_dict(raw, {"TOOLGATE_UPSTREAM_URL": "http://c/v1"})
    assert settings.upstreams["main"].url == "http://c/v1"
    assert settings.upstreams["other"].url == "http://b/v1"


def test_env_override_works_without_any_upstream_in_the_file():
    settings = settings_from_dict({}, {"TOOLGATE_UPSTREAM_URL": "http://h/v1", "TOOLGATE_UPSTREAM_TYPE": "openwebui"})
    assert (settings.upstreams["default"].url, settings.upstreams["default"].type) == ("http://h", "openwebui")


def test_bad_env_overrides_are_problems():
    with pytest.raises(ConfigError) as info:
        settings_from_dict({}, {"TOOLGATE_UPSTREAM_TYPE": "bedrock", "TOOLGATE_PORT": "eighty"})
    assert "'bedrock'" in problem_for(info.value.problems, "upstreams.default.type")
    assert "'eighty'" in problem_for(info.value.problems, "TOOLGATE_PORT")


def test_api_keys_env_can_name_another_variable():
    settings = settings_from_dict({"auth": {"api_keys_env": "MY_KEYS"}}, {"MY_KEYS": "a,b", "TOOLGATE_API_KEYS": "c"})
    assert [k.value for k in settings.api_keys] == ["a", "b"]


# --- secrets ---------------------------------------------------------------------


def test_api_key_in_the_file_is_refused_with_one_line(tmp_path):
    path = write(tmp_path, '[upstreams.default]\nurl = "http://x/v1"\napi_key = "sk-in-file"\n')
    problems = problems_of(path)
    assert len(problems) == 1
    assert "api_key_env" in problem_for(problems, "upstreams.default.api_key")
    assert "sk-in-file" not in problems[0]


def test_api_key_env_pointing_at_an_unset_variable(tmp_path):
    path = write(tmp_path, '[upstreams.default]\nurl = "http://x/v1"\napi_key_env = "OPENAI_API_KEY"\n')
    assert "OPENAI_API_KEY" in problem_for(problems_of(path), "upstreams.default.api_key_env")
    settings = load_config(path, {"OPENAI_API_KEY": "sk-live-123"})
    assert settings.upstreams["default"].api_key.value == "sk-live-123"


def secret_settings() -> Settings:
    raw = {
        "upstreams": {
            "default": {"url": "http://x/v1", "api_key_env": "UP_KEY", "headers": {"x-api-key": "hdr-secret-9"}},
        },
    }
    return settings_from_dict(raw, {"UP_KEY": "sk-live-123", "TOOLGATE_API_KEYS": "client-key-456"})


def test_secrets_are_redacted_in_describe():
    settings = secret_settings()
    described = settings.describe()
    text = repr(described)
    for secret in ("sk-live-123", "client-key-456", "hdr-secret-9"):
        assert secret not in text
    default = described["upstreams"]["default"]
    assert default["api_key"] == "***"
    assert default["api_key_env"] == "UP_KEY"
    assert default["headers"] == {"x-api-key": "***"}
    assert described["auth"] == {"api_keys": 1}


def test_secrets_are_redacted_in_repr_and_str():
    settings = secret_settings()
    for text in (repr(settings), str(settings), repr(settings.upstreams["default"]), f"{settings.api_keys}"):
        for secret in ("sk-live-123", "client-key-456", "hdr-secret-9"):
            assert secret not in text
    assert repr(Secret("x")) == "'***'" and repr(Secret("")) == "''"
    assert not Secret("") and Secret("x")


def test_problems_collects_lines_in_order():
    problems = Problems("f.toml")
    problems.raise_if_any()  # nothing yet
    problems.add("a.b", "wrong")
    problems.add("c", "also wrong")
    with pytest.raises(ConfigError) as info:
        problems.raise_if_any()
    assert info.value.problems == ["f.toml: a.b: wrong", "f.toml: c: also wrong"]


def test_zero_second_timeouts_are_problems():
    from gateway.config import settings_from_dict
    from gateway.errors import ConfigError

    raw = {"upstreams": {"default": {"url": "http://u/v1"}}, "loop": {"tool_timeout_s": 0}, "server": {"keepalive_s": 0}}
    with pytest.raises(ConfigError) as info:
        settings_from_dict(raw, {})
    text = "\n".join(info.value.problems)
    assert "loop.tool_timeout_s" in text and "server.keepalive_s" in text
