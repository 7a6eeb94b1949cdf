"""Pass-through routes end to end: a real uvicorn, the scripted fake upstream, the OpenAI SDK."""

from __future__ import annotations

import base64
import dataclasses
import struct

import httpx
import openai
import orjson
import pytest
from tests.fakellm import Fail, FakeLLM, Raw
from tests.support import settings as make_settings
from tests.test_e2e import sdk, serve


def config_for(fake: FakeLLM, *, keys: str = "", host_type: str = "openai", **server):
    return make_settings(
        {
            "upstreams": {"default": {"url": fake.url, "type": host_type, "retries": 0, "api_key_env": "UP_KEY"}},
            "models": [
                {"name": "m", "upstream_model": "fake-model", "tools": ["*"]},
                {"name": "embed", "upstream_model": "fake-embedder"},
            ],
            "server": server,
        },
        environ={"UP_KEY": "sk-upstream-secret-0123456789", **({"TOOLGATE_API_KEYS": keys} if keys else {})},
    )


def metric(text: str, name: str, **labels: str) -> float:
    """One sample of the Prometheus text (0 when absent); the registry is the process's, so
    tests compare before and after."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + "{"):
            got = ",".join(sorted(line[len(name) + 1 : line.index("}")].split(",")))
            if got == want:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_embeddings_reach_the_aliases_upstream_through_the_sdk(caplog):
    caplog.set_level("INFO", logger="toolgate.access")  # whatever an earlier test left on "toolgate"
    async with FakeLLM(api_key="sk-upstream-secret-0123456789", models=("fake-model", "fake-embedder")) as fake:
        async with serve(config_for(fake)) as (base, _):
            async with httpx.AsyncClient() as http:
                before = (await http.get(base.removesuffix("/v1") + "/metrics")).text
            async with sdk(base) as client:
                # The SDK asks for base64 by default and decodes it; a float list when asked.
                packed = await client.embeddings.create(model="embed", input=["hello world", "bye"])
                floats = await client.embeddings.create(model="embed", input="hello world", encoding_format="float", dimensions=4)
                async with httpx.AsyncClient() as http:
                    metrics = (await http.get(base.removesuffix("/v1") + "/metrics")).text
    assert packed.model == "embed"  # the alias, as chat answers
    assert [d.index for d in packed.data] == [0, 1]
    assert len(packed.data[0].embedding) == 8 and packed.data[0].embedding != packed.data[1].embedding
    assert floats.data[0].embedding == pytest.approx(packed.data[0].embedding[:4], abs=1e-4)
    assert packed.usage.prompt_tokens == 3
    sent = [r for r in fake.requests if r.path == "/v1/embeddings"]
    assert [r.body["model"] for r in sent] == ["fake-embedder", "fake-embedder"]
    assert sent[0].body["input"] == ["hello world", "bye"] and sent[0].body["encoding_format"] == "base64"
    assert sent[1].body["dimensions"] == 4
    assert sent[0].headers["authorization"] == "Bearer sk-upstream-secret-0123456789"
    assert sent[0].headers["x-request-id"]
    for name, labels, grew in (
        ("toolgate_requests_total", {"api": "embeddings", "model": "embed", "status": "200"}, 2),
        ("toolgate_tokens_total", {"model": "embed", "kind": "prompt_tokens"}, 5),
        ("toolgate_upstream_attempts_total", {"upstream": "default", "status": "200"}, 2),
    ):
        assert metric(metrics, name, **labels) - metric(before, name, **labels) == grew, name
    lines = [r.fields for r in caplog.records if r.name == "toolgate.access"]
    assert [(line["api"], line["model"], line["upstream"], line["status"], line["usage"]["prompt_tokens"]) for line in lines] == [
        ("embeddings", "embed", "default", 200, 3),
        ("embeddings", "embed", "default", 200, 2),
    ]
    assert lines[0]["request_id"] == sent[0].headers["x-request-id"]


async def test_models_retrieve_answers_the_listed_alias_and_404s_the_rest():
    async with FakeLLM() as fake:
        async with serve(config_for(fake)) as (base, _):
            async with sdk(base) as client:
                listed = {m.id: m for m in (await client.models.list()).data}
                one = await client.models.retrieve("m")
                with pytest.raises(openai.NotFoundError) as missing:
                    await client.models.retrieve("gpt-nope")
    assert one.id == "m" and one.owned_by == "toolgate" and one.object == "model"
    assert one.model_dump() == listed["m"].model_dump()
    assert missing.value.code == "model_not_found"
    assert not [r for r in fake.requests if r.path.startswith("/v1/models/")]


async def test_unknown_models_pass_through_to_the_default_upstream_when_configured():
    async with FakeLLM(models=("fake-model", "org/other")) as fake:
        async with serve(config_for(fake, passthrough_unknown_models=True)) as (base, _):
            async with sdk(base) as client:
                other = await client.models.retrieve("org/other")
                with pytest.raises(openai.NotFoundError) as missing:
                    await client.models.retrieve("gpt-nope")
                vectors = await client.embeddings.create(model="org/other", input="x")
    assert other.id == "org/other" and other.owned_by == "fakellm"
    assert missing.value.code == "model_not_found"
    assert vectors.model == "org/other"
    assert [r.path for r in fake.requests if r.method == "GET" and r.path != "/v1/models"] == ["/v1/models/org%2Fother", "/v1/models/gpt-nope"]


async def test_upstream_errors_keep_the_chat_mapping_in_openai_shape(caplog):
    caplog.set_level("INFO", logger="toolgate.access")  # whatever an earlier test left on "toolgate"
    async with FakeLLM() as fake:
        fake.push(
            Fail(400, orjson.dumps({"error": {"message": "input too long", "type": "invalid_request_error"}})),
            Fail(401),
            Fail(429, headers={"retry-after": "7"}),
            Raw(b"<html>oops</html>", content_type="text/html"),
        )
        async with serve(config_for(fake)) as (base, _):
            async with sdk(base) as client:
                with pytest.raises(openai.BadRequestError) as bad:
                    await client.embeddings.create(model="embed", input="x")
                with pytest.raises(openai.APIStatusError) as auth:
                    await client.embeddings.create(model="embed", input="x")
                with pytest.raises(openai.RateLimitError) as limited:
                    await client.embeddings.create(model="embed", input="x")
                with pytest.raises(openai.APIStatusError) as html:
                    await client.moderations.create(model="m", input="x")
                with pytest.raises(openai.NotFoundError) as unknown:
                    await client.embeddings.create(model="nope", input="x")
                with pytest.raises(openai.BadRequestError) as no_model:
                    await client.post("/embeddings", body={"input": "x"}, cast_to=object)
    assert "input too long" in bad.value.message
    assert auth.value.status_code == 502 and auth.value.code == "upstream_auth_failed"
    assert limited.value.response.headers["retry-after"] == "7"
    assert html.value.status_code == 502 and "instead of JSON" in html.value.message
    assert unknown.value.code == "model_not_found"
    assert no_model.value.param == "model"
    for error in (bad, auth, limited, html):
        assert "127.0.0.1" not in error.value.message and "sk-upstream" not in error.value.message
    lines = [r.fields for r in caplog.records if r.name == "toolgate.access"]
    assert [(line["api"], line["status"], line.get("ended")) for line in lines] == [
        ("embeddings", 400, "error"), ("embeddings", 502, "error"), ("embeddings", 429, "error"),
        ("moderations", 502, "error"), ("embeddings", 404, None), ("embeddings", 400, None),
    ]  # fmt: skip
    assert all("sk-upstream" not in str(line) for line in lines)


async def test_moderations_pass_through():
    async with FakeLLM() as fake:
        async with serve(config_for(fake)) as (base, _):
            async with sdk(base) as client:
                result = await client.moderations.create(model="m", input=["a", "b"])
    assert result.model == "m" and len(result.results) == 2 and result.results[0].flagged is False
    assert [r.body["model"] for r in fake.requests if r.path == "/v1/moderations"] == ["fake-model"]


async def test_an_unreachable_upstream_is_the_status_chat_gives():
    async with FakeLLM() as fake:
        config = config_for(fake)
    # The fake is stopped: its port refuses connections.
    async with serve(config) as (base, _):
        async with sdk(base) as client:
            with pytest.raises(openai.APIStatusError) as embed:
                await client.embeddings.create(model="embed", input="x")
            with pytest.raises(openai.APIStatusError) as chat:
                await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert embed.value.status_code == chat.value.status_code == 502
    assert embed.value.code == chat.value.code == "upstream_unreachable"


async def test_auth_body_cap_and_concurrency_cap_apply():
    async with FakeLLM() as fake:
        async with serve(config_for(fake, keys="client-key-0123456789", max_body_bytes=200)) as (base, app):
            async with httpx.AsyncClient(base_url=base, timeout=10) as http:
                before = (await http.get(base.removesuffix("/v1") + "/metrics")).text
                anonymous = await http.post("/embeddings", json={"model": "embed", "input": "x"})
                keyed = {"authorization": "Bearer client-key-0123456789"}
                big = await http.post("/embeddings", json={"model": "embed", "input": "x" * 500}, headers=keyed)
                bare = await http.post(base.removesuffix("/v1") + "/embeddings", json={"model": "embed", "input": "x"}, headers=keyed)
                app.state.runtime.in_flight = app.state.runtime.settings.server.max_concurrency
                busy = await http.post("/embeddings", json={"model": "embed", "input": "x"}, headers=keyed)
                info = await http.get("/models/m", headers=keyed)
                app.state.runtime.in_flight = 0
                metrics = (await http.get(base.removesuffix("/v1") + "/metrics")).text
    assert anonymous.status_code == 401 and anonymous.json()["error"]["type"] == "authentication_error"
    assert big.status_code == 413
    assert bare.status_code == 200 and bare.json()["model"] == "embed"
    assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
    assert info.status_code == 429
    for model, status in (("", "401"), ("", "413"), ("embed", "429")):
        labels = {"api": "embeddings", "model": model, "status": status}
        assert metric(metrics, "toolgate_requests_total", **labels) - metric(before, "toolgate_requests_total", **labels) == 1, status


async def test_azure_embeddings_use_the_deployment_path():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        vector = base64.b64encode(struct.pack("<2f", 0.5, -0.5)).decode()
        return httpx.Response(200, json={"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": vector}], "model": "dep"})

    from tests.support import gateway

    config = make_settings(
        {
            "upstreams": {"default": {"url": "https://res.openai.azure.com", "type": "azure", "api_key_env": "AZ"}},
            "models": [{"name": "embed", "upstream_model": "my-deployment"}],
        },
        environ={"AZ": "azure-key-0123456789"},
    )
    async with gateway(config, httpx.MockTransport(handler)) as client:
        reply = await client.post("/v1/embeddings", json={"model": "embed", "input": "x", "encoding_format": "base64"})
    assert reply.status_code == 200 and reply.json()["model"] == "embed"
    assert str(seen[0].url) == "https://res.openai.azure.com/openai/deployments/my-deployment/embeddings?api-version=2024-10-21"
    assert seen[0].headers["api-key"] == "azure-key-0123456789"


async def test_malformed_answers_and_bodies_are_clear_errors():
    async with FakeLLM() as fake:
        fake.push(Raw(b'{"object": "list", "da'), Raw(b"[1, 2]"))
        async with serve(config_for(fake)) as (base, _):
            async with httpx.AsyncClient(base_url=base, timeout=10) as http:
                truncated = await http.post("/embeddings", json={"model": "embed", "input": "x"})
                listed = await http.post("/embeddings", json={"model": "embed", "input": "x"})
                not_json = await http.post("/embeddings", content=b"{nope", headers={"content-type": "application/json"})
                not_object = await http.post("/moderations", json=["m"])
    assert truncated.status_code == 502 and "truncated" in truncated.json()["error"]["message"]
    assert listed.status_code == 502 and "not an object" in listed.json()["error"]["message"]
    assert not_json.status_code == 400 and not_object.status_code == 400
    assert fake.request_count == 2


async def test_a_host_without_a_models_path_cannot_tell_about_unknown_models():
    config = make_settings(
        {
            "upstreams": {"default": {"url": "https://res.openai.azure.com", "type": "azure"}},
            "models": [{"name": "embed", "upstream_model": "my-deployment"}],
            "server": {"passthrough_unknown_models": True},
        }
    )
    from tests.support import ScriptedUpstream, gateway

    async with gateway(config, ScriptedUpstream()) as client:
        known = await client.get("/v1/models/embed")
        unknown = await client.get("/v1/models/other")
    assert known.status_code == 200 and known.json()["id"] == "embed"
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"


async def test_a_client_that_leaves_cancels_the_upstream_call_and_the_deadline_holds():
    slow = orjson.dumps({"object": "list", "data": [], "model": "fake-embedder"})
    async with FakeLLM() as fake:
        fake.push(Raw(slow, delay_s=30), Raw(slow, delay_s=30))
        async with serve(config_for(fake, request_timeout_s=0.5)) as (base, _):
            async with httpx.AsyncClient(base_url=base, timeout=10) as http:
                late = await http.post("/embeddings", json={"model": "embed", "input": "x"})
            await fake.wait_disconnects(1, timeout=5)
        # The deadline is far off now: only the client leaving can end the upstream call.
        async with serve(config_for(fake)) as (base, _):
            async with httpx.AsyncClient(base_url=base) as http:
                with pytest.raises(httpx.ReadTimeout):
                    await http.post("/embeddings", json={"model": "embed", "input": "x"}, timeout=httpx.Timeout(10, read=0.2))
            await fake.wait_disconnects(2, timeout=5)
    assert late.status_code == 504 and late.json()["error"]["code"] == "request_timeout"


async def test_a_forwarded_client_key_goes_upstream_and_never_comes_back():
    key = "client-own-key-0123456789abcdef"
    async with FakeLLM() as fake:
        fake.push(Fail(400, orjson.dumps({"error": {"message": f"bad key {key}"}})))
        config = config_for(fake)
        config = dataclasses.replace(config, upstreams={"default": dataclasses.replace(config.upstreams["default"], forward_client_auth=True)})
        async with serve(config) as (base, _):
            async with httpx.AsyncClient(base_url=base, timeout=10) as http:
                failed = await http.post("/embeddings", json={"model": "embed", "input": "x"}, headers={"authorization": f"Bearer {key}"})
                ok = await http.post("/embeddings", json={"model": "embed", "input": "x"}, headers={"authorization": f"Bearer {key}"})
    assert failed.status_code == 400 and key not in failed.text
    assert ok.status_code == 200
    assert [r.headers["authorization"] for r in fake.requests if r.path == "/v1/embeddings"] == [f"Bearer {key}"] * 2
