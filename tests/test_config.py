"""Loading the TOML config: the shipped file, every problem at once, env overrides, secrets."""

from __future__ import annotations

import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.config import Secret, Settings, load_config, settings_from_dict
from gateway.errors import ConfigError, Problems
from gateway.tools.registry import create, ready

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
    names = {tool.name for spec in settings.sources for tool in create(spec).tools()}
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
        "server.keepalive_s": "seconds above 0",
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
            "tools": {"builtin": {"calculate": {}, "current_time": {}}},
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


# --- limits: new keys and their defaults -------------------------------------------


def test_limit_keys_and_their_defaults():
    settings = settings_from_dict({}, {})
    server, loop, upstream = settings.server, settings.loop, settings.upstreams["default"]
    assert (server.max_header_bytes, server.max_headers) == (65536, 100)
    assert (server.header_timeout_s, server.body_timeout_s, server.keep_alive_s, server.send_timeout_s) == (10.0, 60.0, 5.0, 30.0)
    assert (loop.max_tool_calls, loop.max_repeated_deltas, loop.tool_threads) == (32, 50, 8)
    assert (upstream.max_connections, upstream.pool_timeout_s) == (1024, 5.0)
    assert (upstream.retry_budget_percent, upstream.retry_budget_min, upstream.max_output_tokens) == (20, 3, 131072)
    assert server.request_timeout_s < 600  # the gateway gives up before the OpenAI SDK does


def test_limit_keys_are_read_from_the_file(tmp_path):
    path = write(
        tmp_path,
        """
        [server]
        max_header_bytes = 8192
        max_headers = 20
        header_timeout_s = 2
        body_timeout_s = 5.5
        keep_alive_s = 1
        send_timeout_s = 3
        grace_s = 0
        [loop]
        max_tool_calls = 4
        max_repeated_deltas = 9
        tool_threads = 2
        [upstreams.default]
        url = "http://x/v1"
        max_connections = 8
        pool_timeout_s = 0.5
        retry_budget_percent = 12.5
        retry_budget_min = 0
        max_output_tokens = 4096
        retries = 0
        [tools.builtin.calculate]
        [[models]]
        name = "m"
        tools = ["calculate"]
        max_output_tokens = 1024
        max_rounds = 1
        """,
    )
    settings = load_config(path, {})
    server, loop, upstream = settings.server, settings.loop, settings.upstreams["default"]
    assert (server.max_header_bytes, server.max_headers, server.header_timeout_s) == (8192, 20, 2.0)
    assert (server.body_timeout_s, server.keep_alive_s, server.send_timeout_s, server.grace_s) == (5.5, 1.0, 3.0, 0.0)
    assert isinstance(server.header_timeout_s, float)
    assert (loop.max_tool_calls, loop.max_repeated_deltas, loop.tool_threads) == (4, 9, 2)
    assert (upstream.max_connections, upstream.pool_timeout_s, upstream.retry_budget_percent) == (8, 0.5, 12.5)
    assert (upstream.retry_budget_min, upstream.max_output_tokens, upstream.retries) == (0, 4096, 0)
    assert (settings.models["m"].max_output_tokens, settings.models["m"].max_rounds) == (1024, 1)
    assert settings.warnings == ()


# --- values that would break every request are problems ------------------------------

UP = "upstreams.default"


@pytest.mark.parametrize(
    "section, name, value, expect",
    [
        ("loop", "max_rounds", -1, "an integer of at least 1, got -1"),
        ("loop", "max_rounds", 0, "at least 1, got 0"),
        ("loop", "repeat_limit", 0, "at least 1"),
        ("loop", "max_parallel_tools", 0, "at least 1"),
        ("loop", "max_tool_result_chars", 0, "at least 1"),
        ("loop", "max_description_chars", 0, "at least 1"),
        ("loop", "max_tool_calls", 0, "at least 1"),
        ("loop", "max_repeated_deltas", -3, "at least 1"),
        ("loop", "tool_threads", 0, "at least 1"),
        ("loop", "tool_timeout_s", float("nan"), "seconds above 0"),
        ("server", "max_concurrency", 0, "at least 1"),
        ("server", "max_body_bytes", 0, "at least 1"),
        ("server", "max_messages", 0, "at least 1"),
        ("server", "max_header_bytes", 0, "at least 1"),
        ("server", "max_headers", 0, "at least 1"),
        ("server", "port", 99999, "a port number from 1 to 65535, got 99999"),
        ("server", "port", 0, "from 1 to 65535"),
        ("server", "grace_s", -1, "non-negative number of seconds"),
        ("server", "request_timeout_s", float("inf"), "seconds above 0, got inf"),
        ("server", "header_timeout_s", 0, "seconds above 0"),
        ("server", "body_timeout_s", -1, "seconds above 0"),
        ("server", "keep_alive_s", 0, "seconds above 0"),
        ("server", "send_timeout_s", 0, "seconds above 0"),
        ("server", "host", "", "a host name or address"),
        (UP, "read_timeout_s", -5, "seconds above 0, got -5"),
        (UP, "connect_timeout_s", 0, "seconds above 0, got 0"),
        (UP, "connect_timeout_s", -1.5, "seconds above 0"),
        (UP, "pool_timeout_s", 0, "seconds above 0"),
        (UP, "retries", -1, "a non-negative integer, got -1"),
        (UP, "max_connections", 0, "at least 1"),
        (UP, "retry_budget_percent", 101, "a percentage from 0 to 100, got 101"),
        (UP, "retry_budget_percent", -1, "percentage"),
        (UP, "retry_budget_min", -1, "non-negative"),
        (UP, "max_output_tokens", 0, "at least 1"),
        (UP, "url", "http://", "a host name"),
        (UP, "url", "http:// x/v1", "without spaces"),
        (UP, "url", "http://ho st/v1", "without spaces"),
        (UP, "url", "https://:80/v1", "a host name"),
        (UP, "url", "http://h:99999/v1", "valid URL"),
        (UP, "url", "http://[::1/v1", "valid URL"),
        (UP, "url", "http://h/v1\t", "control characters"),
        (UP, "extra_params", ["top_k", 3], "non-empty strings"),
        ("models[0]", "max_rounds", -1, "at least 1, got -1"),
        ("models[0]", "max_rounds", 0, "at least 1"),
        ("models[0]", "max_output_tokens", 0, "at least 1"),
        ("models[0]", "tools", ["calculate", 7], "non-empty strings"),
        ("models[0]", "upstream_model", "", "non-empty model name"),
    ],
)
def test_values_that_would_break_requests_are_problems(tmp_path, section, name, value, expect):
    raw = {"upstreams": {"default": {"url": "http://x/v1"}}, "models": [{"name": "m"}]}
    target = raw["models"][0] if section == "models[0]" else raw["upstreams"]["default"] if section == UP else raw.setdefault(section, {})
    target[name] = value
    with pytest.raises(ConfigError) as info:
        settings_from_dict(raw, {}, "f.toml")
    line = problem_for(info.value.problems, f"{section}.{name}")
    assert line.startswith(f"f.toml: {section}.{name}: expected ") and expect in line, line
    assert len(info.value.problems) == 1, info.value.problems


@pytest.mark.parametrize("port", ["99999", "0"])
def test_toolgate_port_out_of_range(port):
    with pytest.raises(ConfigError) as info:
        settings_from_dict({}, {"TOOLGATE_PORT": port})
    assert f"from 1 to 65535, got '{port}'" in problem_for(info.value.problems, "TOOLGATE_PORT")


def test_a_bad_url_from_the_environment_is_a_problem():
    with pytest.raises(ConfigError) as info:
        settings_from_dict({}, {"TOOLGATE_UPSTREAM_URL": "http:// ollama:11434"})
    assert "without spaces" in problem_for(info.value.problems, "upstreams.default.url")


def test_the_edges_of_each_range_are_fine():
    raw = {
        "server": {"port": 65535, "grace_s": 0},
        "upstreams": {"default": {"url": "http://x/v1", "retries": 0, "retry_budget_percent": 0, "retry_budget_min": 0}},
        "loop": {"max_rounds": 1, "tool_timeout_s": 0.001},
    }
    assert settings_from_dict(raw, {}).server.port == 65535
    raw["upstreams"]["default"]["retry_budget_percent"] = 100
    assert settings_from_dict(raw, {}).upstreams["default"].retry_budget_percent == 100
    assert settings_from_dict({}, {"TOOLGATE_PORT": "1"}).server.port == 1


@pytest.mark.parametrize("url", ["http://upstream.test/v1", "http://ollama:11434/v1/", "https://[::1]:8443/v1", "http://10.1.2.3:9999/v1"])
def test_ordinary_urls_stay_valid(url):
    settings_from_dict({"upstreams": {"default": {"url": url}}}, {})


def test_a_url_in_a_problem_line_shows_no_secret():
    raw = {"upstreams": {"default": {"url": "http://user:pa55word-x@ho st/v1?api-key=sk-in-url-77&api-version=1"}}}
    with pytest.raises(ConfigError) as info:
        settings_from_dict(raw, {})
    line = problem_for(info.value.problems, "upstreams.default.url")
    assert "sk-in-url-77" not in line and "pa55word-x" not in line
    assert "api-key=***" in line and "api-version=1" in line and "user:***@" in line


@pytest.mark.parametrize(
    "headers, key",
    [({"x-a": "v\r\nInjected: 1"}, "headers.x-a"), ({"x a": "v"}, "headers"), ({"": "v"}, "headers")],
)
def test_header_names_and_values_that_would_fail_every_request(headers, key):
    with pytest.raises(ConfigError) as info:
        settings_from_dict({"upstreams": {"default": {"url": "http://x/v1", "headers": headers}}}, {})
    problem_for(info.value.problems, f"upstreams.default.{key}")


# --- model tools: a name nothing can offer is a problem, a glob a warning -----------


def tools_config(tools: list[str], sources: dict | None = None) -> dict:
    return {
        "upstreams": {"default": {"url": "http://x/v1"}},
        "models": [{"name": "m", "tools": tools}],
        "tools": sources if sources is not None else {"builtin": {"calculate": {}}},
    }


def test_a_plain_tool_name_no_source_offers_is_a_problem():
    with pytest.raises(ConfigError) as info:
        settings_from_dict(tools_config(["calculate", "current_time", "lookup"]), {}, "f.toml")
    lines = [p for p in info.value.problems if ": models[0].tools: " in p]
    assert len(lines) == 2, lines
    assert "'current_time' names no tool" in lines[0] and "[tools.builtin.current_time]" in lines[0]
    assert "known: calculate" in lines[0]
    assert "'lookup' names no tool" in lines[1] and "tools.builtin" not in lines[1]


def test_python_function_tools_are_known_at_config_time():
    sources = {"python": {"fn": {"functions": ["tests.sample_functions:forecast"]}}}
    assert settings_from_dict(tools_config(["forecast"], sources), {}).warnings == ()
    prefixed = {"python": {"fn": {"functions": ["tests.sample_functions:forecast"], "prefix": True}}}
    assert settings_from_dict(tools_config(["fn_forecast"], prefixed), {}).warnings == ()
    with pytest.raises(ConfigError):
        settings_from_dict(tools_config(["forecast"], prefixed), {})


def test_a_glob_matching_nothing_known_is_a_warning():
    settings = settings_from_dict(tools_config(["calc*", "echo*"]), {}, "f.toml")
    assert settings.warnings == ("f.toml: models[0].tools: 'echo*' matches no tool a configured source offers",)


MCP = {"command": "/bin/true"}


def test_names_a_dynamic_source_could_offer_are_not_problems():
    unprefixed = {"builtin": {"calculate": {}}, "mcp": {"files": MCP}}
    settings = settings_from_dict(tools_config(["read_text", "anything*"], unprefixed), {})
    assert settings.warnings == ()
    openapi = {"openapi": {"stock": {"url": "http://127.0.0.1:9/openapi.json"}}}
    assert settings_from_dict(tools_config(["get_stock", "get_*"], openapi), {}).warnings == ()


def test_a_prefixed_dynamic_source_only_covers_its_own_prefix():
    prefixed = {"builtin": {"calculate": {}}, "mcp": {"files": {**MCP, "prefix": True}}}
    settings = settings_from_dict(tools_config(["files_read", "files_*", "f*", "*_read", "[fg]iles_x"], prefixed), {})
    assert settings.warnings == ()
    settings = settings_from_dict(tools_config(["web_*"], prefixed), {}, "f.toml")
    assert settings.warnings == ("f.toml: models[0].tools: 'web_*' matches no tool a configured source offers",)
    with pytest.raises(ConfigError) as info:
        settings_from_dict(tools_config(["read"], prefixed), {})
    assert "'read' names no tool" in problem_for(info.value.problems, "models[0].tools")


# --- warnings: valid but surprising --------------------------------------------------


def warnings_of(raw: dict, environ: dict | None = None) -> dict[str, str]:
    settings = settings_from_dict(raw, environ or {}, "f.toml")
    assert all(w.startswith("f.toml: ") for w in settings.warnings)
    return {w.split(": ")[1]: w for w in settings.warnings}


def test_defaults_warn_about_nothing():
    assert settings_from_dict({}, {}).warnings == ()
    assert settings_from_dict(tools_config(["calculate"]), {"TOOLGATE_API_KEYS": "long-client-key"}).warnings == ()


def test_tool_timeout_not_below_the_request_deadline_warns():
    found = warnings_of({"loop": {"tool_timeout_s": 90}, "server": {"request_timeout_s": 60}})
    assert list(found) == ["loop.tool_timeout_s"]
    assert "90 s is not below server.request_timeout_s (60 s)" in found["loop.tool_timeout_s"]


def test_a_request_deadline_past_the_sdk_timeout_warns():
    found = warnings_of({"server": {"request_timeout_s": 600}})
    assert list(found) == ["server.request_timeout_s"] and "OpenAI SDK" in found["server.request_timeout_s"]
    assert warnings_of({"server": {"request_timeout_s": 599}}) == {}


def test_short_secrets_warn_without_showing_them():
    raw = {"upstreams": {"default": {"url": "http://x/v1", "api_key_env": "UP"}}}
    found = warnings_of(raw, {"UP": "abc12", "TOOLGATE_API_KEYS": "k1,long-enough-key"})
    assert set(found) == {"upstreams.default.api_key_env", "auth.api_keys_env"}
    assert "UP holds fewer than 6 characters" in found["upstreams.default.api_key_env"]
    assert "1 key(s) in TOOLGATE_API_KEYS" in found["auth.api_keys_env"]
    assert "abc12" not in repr(found) and "k1," not in repr(found)
    assert warnings_of(raw, {"UP": "abc123", "TOOLGATE_API_KEYS": "long-enough-key"}) == {}


def test_an_unset_keys_variable_other_than_the_default_warns():
    found = warnings_of({"auth": {"api_keys_env": "MY_KEYS"}})
    assert list(found) == ["auth.api_keys_env"] and "MY_KEYS is not set" in found["auth.api_keys_env"]
    assert warnings_of({"auth": {"api_keys_env": "TOOLGATE_API_KEYS"}}) == {}  # the CLI warns about no keys itself


def test_output_tokens_above_the_ceiling_warn():
    raw = tools_config(["calculate"])
    raw["upstreams"]["default"]["max_output_tokens"] = 1000
    raw["models"][0]["overrides"] = {"max_tokens": 2000}
    raw["models"].append({"name": "n", "defaults": {"max_completion_tokens": 2000}, "max_output_tokens": 4000})
    assert list(warnings_of(raw)) == ["models[0].overrides.max_tokens"]


# --- secrets(): everything the redactor must know -------------------------------------


class ReportingSource:
    name, prefix = "reporting", False

    def tools(self):
        return []

    def secrets(self, environ=None):
        return ["source-secret-1", ""]


def test_secrets_lists_every_key_header_query_and_source_secret():
    raw = {
        "upstreams": {
            "default": {
                "url": "https://user:url-pass-1@x.example/v1?api-key=q-key-123&api-version=2024-10-21",
                "api_key_env": "UP_KEY",
                "headers": {"Authorization": "Bearer hdr-token-9", "x-org": "org-id-77", "X-Title": "toolgate"},
                "query": {"code": "fn-code-55"},
                "type": "azure",
            },
            "other": {"url": "http://y/v1", "api_key_env": "OTHER_KEY"},
        },
    }
    settings = settings_from_dict(raw, {"UP_KEY": "sk-up-1", "OTHER_KEY": "sk-other-2", "TOOLGATE_API_KEYS": "client-1,client-2"})
    settings = replace(settings, sources=(*settings.sources, ready(ReportingSource())))
    secrets = settings.secrets()
    assert set(secrets) == {
        "client-1", "client-2", "sk-up-1", "sk-other-2", "Bearer hdr-token-9", "hdr-token-9", "org-id-77",
        "q-key-123", "fn-code-55", "url-pass-1", "source-secret-1",
    }  # fmt: skip
    # Public values are no secrets: masking them would mask dates, or the product's name, in every log.
    assert "2024-10-21" not in secrets and "toolgate" not in secrets
    assert settings.describe()["upstreams"]["default"]["headers"] == {"Authorization": "***", "x-org": "***", "X-Title": "toolgate"}
    assert not {"q-key-123", "fn-code-55", "hdr-token-9"} & set(repr(settings).split("'"))
    assert len(secrets) == len(set(secrets))


def test_secrets_of_a_config_without_any():
    assert settings_from_dict({}, {}).secrets() == []


# --- describe(): nothing secret, wherever it was put ---------------------------------


def test_describe_masks_a_key_in_the_url_query_and_keeps_public_values():
    raw = {"upstreams": {"default": {"url": "https://res.example/openai?api-key=sk-query-key-1&api-version=2024-10-21", "type": "azure"}}}
    described = settings_from_dict(raw, {}).describe()
    upstream = described["upstreams"]["default"]
    assert upstream["query"] == {"api-version": "2024-10-21", "api-key": "***"}
    assert "sk-query-key-1" not in repr(described)


def test_describe_runs_every_string_through_the_redactor():
    from gateway.redact import SECRETS

    canary = "canary-7c1e5d-not-in-config"
    SECRETS.add(canary)
    raw = {
        "upstreams": {"default": {"url": "https://u:pw-secret-3@x.example/v1", "api_key_env": "K"}},
        "models": [{"name": "m", "system_prompt": f"Say {canary} and sk-own-key-4 never."}],
    }
    described = settings_from_dict(raw, {"K": "sk-own-key-4"}).describe()
    text = repr(described)
    assert canary not in text and "sk-own-key-4" not in text and "pw-secret-3" not in text
    assert described["models"]["m"]["system_prompt"] == "Say *** and *** never."
    assert described["upstreams"]["default"]["url"] == "https://u:***@x.example/v1"


def test_the_store_table_its_env_override_and_its_secret():
    settings = settings_from_dict({"upstreams": {"default": {"url": "http://u.test/v1"}}, "store": {"ttl_s": 60}}, {})
    assert (settings.store.url, settings.store.ttl_s) == ("sqlite:///toolgate-responses.db", 60.0)
    env = {"TOOLGATE_STORE_URL": "redis://:store-password-1234@127.0.0.1:6379/0"}
    settings = settings_from_dict({"upstreams": {"default": {"url": "http://u.test/v1"}}}, env)
    assert settings.store.url.startswith("redis://") and "store-password-1234" in settings.secrets()
    assert "store-password-1234" not in str(settings.describe())
    with pytest.raises(ConfigError) as info:
        settings_from_dict({"upstreams": {"default": {"url": "http://u.test/v1"}}, "store": {"url": "mysql://db", "max_bytes": 0}}, {})
    lines = "\n".join(info.value.problems)
    assert "store.url: expected sqlite:///PATH or redis://HOST:PORT/DB, got 'mysql://db'" in lines
    assert "store.max_bytes" in lines
