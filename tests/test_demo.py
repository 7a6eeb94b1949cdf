"""The demo model (`toolgate serve --demo`, gateway/demo.py) through the real gateway, in process:
both APIs, streamed and not, through the OpenAI SDK, as the README's first command shows it."""

from __future__ import annotations

from contextlib import asynccontextmanager

import httpx
import openai
import pytest

from gateway import demo
from gateway.app import create_app
from tests.support import ScriptedUpstream, completion, settings

QUESTION = "What is 12*(3+4)?"


@asynccontextmanager
async def demo_gateway(extra: dict | None = None, other: ScriptedUpstream | None = None):
    """The app as `serve --demo` builds it; `other` answers every upstream but the demo's."""
    app = create_app(demo.settings(settings(extra)), transport=other.transport() if other else None, demo=True)
    async with app.router.lifespan_context(app):
        await app.state.runtime.starting
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://toolgate.test") as http:
            yield http, openai.AsyncOpenAI(base_url="http://toolgate.test/v1", api_key="unused", http_client=http, max_retries=0)


async def test_chat_runs_calculate_through_the_loop():
    async with demo_gateway() as (_, client):
        reply = await client.chat.completions.with_raw_response.create(model="m", messages=[{"role": "user", "content": QUESTION}])
    assert reply.headers["x-toolgate-tool-calls"] == "1" and reply.headers["x-toolgate-rounds"] == "1"
    completion_ = reply.parse()
    assert completion_.choices[0].message.content == "The result of 12*(3+4) is 84."
    assert completion_.usage.total_tokens > 0


async def test_chat_streamed_word_by_word():
    async with demo_gateway() as (_, client):
        stream = await client.chat.completions.create(model="m", stream=True, messages=[{"role": "user", "content": QUESTION}])
        pieces = [c.choices[0].delta.content async for c in stream if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == "The result of 12*(3+4) is 84."
    assert len(pieces) == 6


@pytest.mark.parametrize("stream", [False, True])
async def test_responses_api_runs_the_same_loop(stream):
    async with demo_gateway() as (_, client):
        if stream:
            async with client.responses.stream(model="m", input=QUESTION) as events:
                response = await events.get_final_response()
        else:
            response = await client.responses.create(model="m", input=QUESTION)
    assert response.output_text == "The result of 12*(3+4) is 84."


async def test_time_in_a_named_zone_and_both_tools_in_one_round():
    async with demo_gateway() as (_, client):
        reply = await client.chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": "What is 2**10, and what time is it in Europe/Paris?"}]
        )
    assert reply.headers["x-toolgate-tool-calls"] == "2" and reply.headers["x-toolgate-rounds"] == "1"
    first, second = reply.parse().choices[0].message.content.split(". It is ")
    assert first == "The result of 2**10 is 1024"
    assert second.endswith(" in Europe/Paris.") and ("+01:00" in second or "+02:00" in second)


async def test_without_tools_it_echoes():
    extra = {"models": [{"name": "plain", "upstream_model": "demo"}]}
    async with demo_gateway(extra) as (_, client):
        first = await client.chat.completions.create(model="plain", messages=[{"role": "user", "content": "What is 2+2?"}])
        empty = await client.chat.completions.create(model="plain", messages=[{"role": "user", "content": ""}])
    assert first.choices[0].message.content == "You said: What is 2+2?"
    assert empty.choices[0].message.content == "Hello! I am the toolgate demo model."


async def test_a_failed_tool_is_named():
    async with demo_gateway() as (_, client):
        reply = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "What is 1/0?"}])
    assert reply.choices[0].message.content.startswith("calculate failed: ")


async def test_embeddings_are_made_up_but_stable():
    async with demo_gateway() as (_, client):
        one = await client.embeddings.create(model="m", input=["hello", "world"])
        again = await client.embeddings.create(model="m", input="hello")
    assert len(one.data) == 2 and one.data[0].embedding != one.data[1].embedding
    assert again.data[0].embedding == one.data[0].embedding


async def test_readyz_says_demo_and_other_endpoints_are_refused():
    async with demo_gateway() as (http, client):
        ready = await http.get("/readyz")
        with pytest.raises(openai.InternalServerError, match="The demo model has no such endpoint"):
            await client.moderations.create(model="m", input="hi")
    assert ready.status_code == 200 and ready.json()["demo"] is True


async def test_other_upstreams_of_the_config_stay_real():
    other = ScriptedUpstream(completion("from the real host"))
    extra = {
        "upstreams": {"real": {"url": "http://real.test/v1"}},
        "models": [{"name": "m", "upstream_model": "demo", "tools": ["calculate"]}, {"name": "r", "upstream": "real", "upstream_model": "up"}],
    }
    async with demo_gateway(extra, other) as (_, client):
        real = await client.chat.completions.create(model="r", messages=[{"role": "user", "content": QUESTION}])
        demo_ = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": QUESTION}])
    assert real.choices[0].message.content == "from the real host"
    assert demo_.choices[0].message.content == "The result of 12*(3+4) is 84."
    assert [b["model"] for b in other.bodies] == ["up"]  # only the real alias reached it


async def test_a_model_it_does_not_know_is_a_404_when_passed_through():
    async with demo_gateway({"server": {"passthrough_unknown_models": True}}) as (_, client):
        with pytest.raises(openai.NotFoundError) as missing:
            await client.models.retrieve("gpt-nothing")
    assert missing.value.body["code"] == "model_not_found"
