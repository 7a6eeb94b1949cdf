"""Upstream host types: one row each, no if-chains on provider names.

A row says which codec speaks its wire format (`gateway/codecs/`), where chat
and models live, how the gateway authenticates, which non-standard parameters
the host accepts, and whether it wants reasoning back.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote


@dataclass(frozen=True)
class HostType:
    name: str
    chat_path: Callable[[str, str], str]  # (base url, upstream model) -> URL
    models_path: Callable[[str], str] | None
    auth: Callable[[str], dict[str, str]]
    strip_suffixes: tuple[str, ...] = ()  # parts of a pasted URL the row adds itself; {model}: one segment
    extra_params: frozenset[str] = frozenset()  # non-standard keys it accepts
    codec: str = "openai-chat"  # a key of gateway.codecs.CODECS: the wire format
    # The assistant's `reasoning_content` sent back with its tool calls in the next round:
    # most hosts reject or ignore it, so no row sends it today.
    send_reasoning: bool = False
    query: tuple[tuple[str, str], ...] = ()  # default query parameters (overridable in config)
    # The host's other OpenAI endpoints, for the pass-through routes (gateway/passthrough.py):
    # (base url, upstream model, "embeddings" | "moderations") -> URL.
    endpoint: Callable[[str, str, str], str] | None = None


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"} if key else {}


def api_key_header(key: str) -> dict[str, str]:
    return {"api-key": key} if key else {}


_DOUBLED_V1 = re.compile(r"(?:/v1){2,}(?=/|$)")


def base_url(url: str, host: HostType) -> str:
    """`url` without query, trailing slashes, doubled `/v1`, or a suffix the row adds itself.

    A query pasted with the URL is the caller's to keep (config reads it into `query`).
    """
    url = _DOUBLED_V1.sub("/v1", url.partition("#")[0].partition("?")[0].rstrip("/"))
    for suffix in host.strip_suffixes:
        pattern = re.escape(suffix).replace(re.escape("{model}"), "[^/]+")
        url = re.sub(f"{pattern}$", "", url, count=1)
    return url


_LOCAL_EXTRAS = frozenset({"top_k", "min_p", "repetition_penalty", "repeat_penalty", "typical_p", "num_ctx"})

HOST_TYPES: dict[str, HostType] = {
    host.name: host
    for host in (
        HostType(
            "openai",
            chat_path=lambda url, model: f"{url}/chat/completions",
            models_path=lambda url: f"{url}/models",
            auth=bearer,
            strip_suffixes=("/chat/completions",),
            endpoint=lambda url, model, name: f"{url}/{name}",
        ),
        HostType(
            "openwebui",
            chat_path=lambda url, model: f"{url}/api/chat/completions",
            models_path=lambda url: f"{url}/api/models",
            auth=bearer,
            strip_suffixes=("/api/chat/completions", "/api/v1", "/api", "/v1"),
            extra_params=_LOCAL_EXTRAS,
            endpoint=lambda url, model, name: f"{url}/api/{name}",
        ),
        HostType(
            "ollama",
            chat_path=lambda url, model: f"{url}/v1/chat/completions",
            models_path=lambda url: f"{url}/v1/models",
            auth=bearer,  # empty key: no header (Ollama needs none)
            strip_suffixes=("/v1/chat/completions", "/api/chat", "/v1", "/api"),
            extra_params=_LOCAL_EXTRAS,
            endpoint=lambda url, model, name: f"{url}/v1/{name}",
        ),
        HostType(
            "ollama-native",
            chat_path=lambda url, model: f"{url}/api/chat",
            models_path=lambda url: f"{url}/api/tags",
            auth=bearer,
            strip_suffixes=("/api/chat", "/v1/chat/completions", "/v1", "/api"),
            extra_params=_LOCAL_EXTRAS,
            codec="ollama",
        ),
        HostType(
            "azure",
            chat_path=lambda url, model: f"{url}/openai/deployments/{quote(model, safe='')}/chat/completions",
            models_path=None,
            auth=api_key_header,
            strip_suffixes=("/openai/deployments/{model}/chat/completions", "/openai/deployments/{model}", "/openai"),
            query=(("api-version", "2024-10-21"),),
            endpoint=lambda url, model, name: f"{url}/openai/deployments/{quote(model, safe='')}/{name}",
        ),
    )
}
