"""Host types: where chat completions live for every way a user writes the URL."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest

from gateway.config import settings_from_dict
from gateway.hosts import HOST_TYPES, base_url


def upstream(url: str, type_: str, **extra):
    raw = {"upstreams": {"default": {"url": url, "type": type_, **extra}}}
    return settings_from_dict(raw, {}).upstreams["default"]


def chat_url(url: str, type_: str, model: str = "m") -> str:
    """The URL the gateway posts to, as the upstream client builds it."""
    up = upstream(url, type_)
    query = f"?{urlencode(up.query)}" if up.query else ""
    return up.host.chat_path(up.url, model) + query


def models_url(url: str, type_: str) -> str:
    up = upstream(url, type_)
    return up.host.models_path(up.url)


def test_the_spec_table_of_host_types_is_there():
    assert {"openai", "openwebui", "ollama", "ollama-native", "azure"} <= set(HOST_TYPES)
    assert all(name == host.name for name, host in HOST_TYPES.items())


OPENAI = "https://api.example.com/v1/chat/completions"


@pytest.mark.parametrize(
    "url",
    [
        "https://api.example.com/v1",
        "https://api.example.com/v1/",
        "https://api.example.com/v1//",
        "https://api.example.com/v1/v1",
        "https://api.example.com/v1/v1/",
        "https://api.example.com/v1/chat/completions",
        "https://api.example.com/v1/chat/completions/",
        "https://api.example.com/v1/v1/chat/completions",
    ],
)
def test_openai(url):
    assert chat_url(url, "openai") == OPENAI


def test_openai_models_path():
    assert models_url("https://api.example.com/v1/", "openai") == "https://api.example.com/v1/models"


def test_openai_path_prefixes_are_kept():
    # OpenRouter and LiteLLM mounts put /v1 under a prefix
    assert chat_url("https://openrouter.ai/api/v1", "openai") == "https://openrouter.ai/api/v1/chat/completions"
    assert chat_url("http://litellm:4000/", "openai") == "http://litellm:4000/chat/completions"


def test_openai_url_pointing_at_an_open_webui_path_still_works():
    assert chat_url("http://webui:3000/api/chat/completions", "openai") == "http://webui:3000/api/chat/completions"


WEBUI = "http://webui:3000/api/chat/completions"


@pytest.mark.parametrize(
    "url",
    [
        "http://webui:3000",
        "http://webui:3000/",
        "http://webui:3000/api",
        "http://webui:3000/api/",
        "http://webui:3000/api/chat/completions",
        "http://webui:3000/api/chat/completions/",
        "http://webui:3000/v1",
        "http://webui:3000/v1/v1",
    ],
)
def test_openwebui(url):
    assert chat_url(url, "openwebui") == WEBUI


def test_openwebui_models_path_and_sub_path_install():
    assert models_url("http://webui:3000/", "openwebui") == "http://webui:3000/api/models"
    assert chat_url("https://example.com/webui/api/chat/completions", "openwebui") == "https://example.com/webui/api/chat/completions"


OLLAMA = "http://localhost:11434/v1/chat/completions"


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:11434",
        "http://localhost:11434/",
        "http://localhost:11434/v1",
        "http://localhost:11434/v1/",
        "http://localhost:11434/v1/v1",
        "http://localhost:11434/v1/chat/completions",
        "http://localhost:11434/api",
    ],
)
def test_ollama(url):
    assert chat_url(url, "ollama") == OLLAMA


def test_ollama_models_path_and_no_auth_header_without_key():
    assert models_url("http://localhost:11434/v1", "ollama") == "http://localhost:11434/v1/models"
    assert HOST_TYPES["ollama"].auth("") == {}


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:11434",
        "http://localhost:11434/",
        "http://localhost:11434/api",
        "http://localhost:11434/api/chat",
        "http://localhost:11434/v1",
        "http://localhost:11434/v1/chat/completions",
    ],
)
def test_ollama_native(url):
    assert chat_url(url, "ollama-native") == "http://localhost:11434/api/chat"


def test_ollama_native_speaks_its_own_codec_and_is_probed_on_its_tags():
    assert HOST_TYPES["ollama-native"].codec == "ollama"
    assert {HOST_TYPES[name].codec for name in ("openai", "openwebui", "ollama", "azure")} == {"openai-chat"}
    assert models_url("http://localhost:11434/api/chat", "ollama-native") == "http://localhost:11434/api/tags"


AZURE = "https://res.openai.azure.com/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"


@pytest.mark.parametrize(
    "url",
    [
        "https://res.openai.azure.com",
        "https://res.openai.azure.com/",
        "https://res.openai.azure.com/openai",
        "https://res.openai.azure.com/openai/",
        "https://res.openai.azure.com/openai/deployments/gpt-4o",
        "https://res.openai.azure.com/openai/deployments/gpt-4o/chat/completions",
    ],
)
def test_azure(url):
    assert chat_url(url, "azure", "gpt-4o") == AZURE


def test_azure_pasted_target_uri_keeps_its_api_version():
    # what the Azure portal shows as "Target URI"
    pasted = "https://res.openai.azure.com/openai/deployments/gpt-4o/chat/completions?api-version=2025-01-01-preview"
    assert chat_url(pasted, "azure", "gpt-4o") == pasted


def test_azure_deployment_comes_from_the_model_and_is_quoted():
    assert chat_url("https://res.openai.azure.com", "azure", "my model/x").startswith(
        "https://res.openai.azure.com/openai/deployments/my%20model%2Fx/chat/completions?"
    )


def test_azure_api_version_is_overridable_in_config():
    up = upstream("https://res.openai.azure.com", "azure", query={"api-version": "2025-04-01-preview"})
    assert dict(up.query) == {"api-version": "2025-04-01-preview"}


def test_azure_has_no_models_path():
    assert HOST_TYPES["azure"].models_path is None


def test_query_pasted_into_any_url_is_kept_as_a_query():
    up = upstream("https://proxy.example.com/v1/chat/completions?tenant=a", "openai")
    assert up.url == "https://proxy.example.com/v1"
    assert dict(up.query) == {"tenant": "a"}


@pytest.mark.parametrize(
    "type_, key, header",
    [
        ("openai", "sk-1", {"authorization": "Bearer sk-1"}),
        ("openwebui", "sk-1", {"authorization": "Bearer sk-1"}),
        ("ollama", "sk-1", {"authorization": "Bearer sk-1"}),
        ("azure", "az-1", {"api-key": "az-1"}),
    ],
)
def test_auth_headers(type_, key, header):
    assert HOST_TYPES[type_].auth(key) == header
    assert HOST_TYPES[type_].auth("") == {}


def test_local_hosts_accept_sampler_extras_and_openai_does_not():
    assert {"top_k", "min_p"} <= HOST_TYPES["ollama"].extra_params
    assert {"top_k", "min_p"} <= HOST_TYPES["openwebui"].extra_params
    assert not HOST_TYPES["openai"].extra_params & {"top_k", "min_p"}


def test_base_url_is_idempotent():
    for name, host in HOST_TYPES.items():
        for url in ("https://h.example/v1/", "https://h.example/api/chat/completions", "https://h.example/openai"):
            once = base_url(url, host)
            assert base_url(once, host) == once, (name, url)


@pytest.mark.parametrize(
    ("type_", "pasted", "chat"),
    [
        ("ollama", "http://h:11434/api/chat", "http://h:11434/v1/chat/completions"),
        ("openwebui", "http://h:3000/api/v1/", "http://h:3000/api/chat/completions"),
    ],
)
def test_native_paths_pasted_by_users_are_handled(type_, pasted, chat):
    from gateway.hosts import HOST_TYPES, base_url

    host = HOST_TYPES[type_]
    assert host.chat_path(base_url(pasted, host), "m") == chat
