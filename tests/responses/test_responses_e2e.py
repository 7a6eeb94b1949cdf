"""The Responses API end to end: toolgate under a real uvicorn, the fake LLM, and the real
OpenAI SDK (`responses.create`, `responses.stream` and its accumulator, retrieve,
input_items, delete)."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3

import httpx
import openai
import pytest

from gateway.config import StoreSettings
from tests.fakellm import Calls, Fail, FakeLLM, Reply
from gateway.tools.base import StaticSource
from gateway.tools.registry import ready
from tests.test_e2e import Sleeper, _left_tasks, sdk, serve, settings_for
from tests.responses.test_responses import Add


def config(fake: FakeLLM, tmp_path, **kw):
    cfg = settings_for(fake, **kw)
    return dataclasses.replace(cfg, store=StoreSettings(url=f"sqlite:///{tmp_path}/responses.db"))


async def test_create_retrieve_list_and_delete(tmp_path):
    async with FakeLLM() as fake:
        fake.push(
            Calls([("calculate", {"expression": "6*7"}), ("calculate", {"expression": "2+2"})]),
            Calls([("calculate", {"expression": "42+4"})]),
            Reply("46."),
        )
        async with serve(config(fake, tmp_path)) as (base, _):
            async with sdk(base) as client:
                response = await client.responses.create(model="m", input="6*7 + 2+2?", instructions="Short answers.")
                assert response.status == "completed"
                assert response.output_text == "46."
                calls = [item for item in response.output if item.type == "mcp_call"]
                assert [c.output for c in calls] == ["42", "4", "46"]
                assert response.usage.total_tokens == 45
                again = await client.responses.retrieve(response.id)
                assert again.output_text == "46." and again.id == response.id
                items = await client.responses.input_items.list(response.id)
                assert [i.type for i in items.data] == ["message"]
                await client.responses.delete(response.id)
                with pytest.raises(openai.NotFoundError):
                    await client.responses.retrieve(response.id)
        assert len(fake.requests) == 3


async def test_stream_accumulator_gets_the_final_response(tmp_path):
    async with FakeLLM() as fake:
        fake.push(Calls([("calculate", {"expression": "2**8"})], content="Computing."), Reply("It is 256.", reasoning="powers of two"))
        async with serve(config(fake, tmp_path)) as (base, _):
            async with sdk(base) as client:
                async with client.responses.stream(model="m", input="2**8?") as stream:
                    kinds = [event.type async for event in stream]
                    final = await stream.get_final_response()
                stored = await client.responses.retrieve(final.id)
        assert final.output_text == "Computing.It is 256."
        assert [i.type for i in final.output] == ["mcp_list_tools", "message", "mcp_call", "reasoning", "message"]
        assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
        assert "response.output_text.delta" in kinds and "response.mcp_call.completed" in kinds
        assert stored.output[-1].content[0].text == "It is 256."


async def test_client_function_tool_round_trip_with_the_sdk(tmp_path):
    tools = [{"type": "function", "name": "lookup", "description": "Look a word up.", "parameters": {"type": "object", "properties": {"word": {"type": "string"}}}}]
    async with FakeLLM() as fake:
        fake.push(Calls([("lookup", {"word": "gateway"})]), Reply("A gateway is a way in."), Calls([("lookup", {"word": "loop"})]), Reply("A loop goes round."))
        async with serve(config(fake, tmp_path)) as (base, _):
            async with sdk(base) as client:
                first = await client.responses.create(model="m", input="define gateway", tools=tools)
                call = first.output[-1]
                assert call.type == "function_call" and call.name == "lookup"
                second = await client.responses.create(
                    model="m", previous_response_id=first.id, tools=tools, input=[{"type": "function_call_output", "call_id": call.call_id, "output": "a way in"}]
                )
                assert second.output_text == "A gateway is a way in."
                # The same, stateless: the whole conversation as input.
                third = await client.responses.create(model="m", input="define loop", tools=tools, store=False)
                history = [{"role": "user", "content": "define loop"}, *[i.model_dump(exclude_none=True) for i in third.output], {"type": "function_call_output", "call_id": third.output[-1].call_id, "output": "round"}]
                fourth = await client.responses.create(model="m", input=history, tools=tools, store=False)
                assert fourth.output_text == "A loop goes round."
        assert fake.requests[3].body["messages"][-1] == {"role": "tool", "tool_call_id": third.output[-1].call_id, "content": "round"}


async def test_mcp_label_with_approval_through_the_sdk(tmp_path):
    add = Add()
    async with FakeLLM() as fake:
        fake.push(Calls([("add", {"a": 20, "b": 22})]), Reply("42"))
        cfg = config(fake, tmp_path)
        cfg = dataclasses.replace(cfg, sources=(*cfg.sources, ready(StaticSource("calc", [add]))))
        mcp = {"type": "mcp", "server_label": "calc", "require_approval": "always"}
        async with serve(cfg) as (base, _):
            async with sdk(base) as client:
                held = await client.responses.create(model="m", input="add 20 and 22", tools=[mcp])
                request = held.output[-1]
                assert request.type == "mcp_approval_request" and request.server_label == "calc"
                done = await client.responses.create(
                    model="m", previous_response_id=held.id, tools=[mcp], input=[{"type": "mcp_approval_response", "approval_request_id": request.id, "approve": True}]
                )
        assert done.output_text == "42"
        assert done.output[0].type == "mcp_call" and done.output[0].approval_request_id == request.id
        assert add.calls == [{"a": 20, "b": 22}]


async def test_errors_before_and_after_the_first_event(tmp_path):
    async with FakeLLM() as fake:
        fake.push(Fail(429, headers={"retry-after": "0"}), Calls([("calculate", {"expression": "1+1"})]), Fail(500))
        async with serve(config(fake, tmp_path)) as (base, _):
            async with sdk(base) as client:
                with pytest.raises(openai.RateLimitError) as caught:
                    await client.responses.create(model="m", input="x")
                assert caught.value.status_code == 429
                async with client.responses.stream(model="m", input="x") as stream:
                    kinds = [event.type async for event in stream]
                with pytest.raises(openai.BadRequestError) as bad:
                    await client.responses.create(model="m", input="x", tools=[{"type": "web_search"}])
        assert kinds[-2:] == ["error", "response.failed"]
        assert bad.value.body["param"] == "tools[0].type"


@pytest.mark.fakellm(assert_all_used=False)  # the spare turn is the proof: pending == 1 below
@pytest.mark.parametrize("stream", [True, False])
async def test_disconnect_cancels_the_tool(tmp_path, stream):
    sleeper = Sleeper(30)
    async with FakeLLM() as fake:
        fake.push(Calls([("sleeper", {})]), Reply("never"))
        async with serve(config(fake, tmp_path, extra_tools=(sleeper,))) as (base, app):
            before = set(asyncio.all_tasks())
            async with httpx.AsyncClient(timeout=10) as client:
                body = {"model": "m", "input": "sleep", "stream": stream}
                task = asyncio.create_task(client.post(f"{base}/responses", json=body))
                await asyncio.wait_for(sleeper.started.wait(), 5)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            await asyncio.wait_for(sleeper.cancelled.wait(), 5)
            left, _ = await _left_tasks(app, before)
            assert left == set()
            await asyncio.gather(*app.state.responses_store.writes.values())
        with sqlite3.connect(tmp_path / "responses.db") as db:
            assert db.execute("SELECT count(*) FROM responses").fetchone() == (0,)  # nobody received it
        assert fake.pending == 1


@pytest.mark.parametrize("stream", [False, True])
async def test_a_response_is_in_the_database_before_the_client_sees_it_end(tmp_path, stream):
    # Read the file itself, not through the gateway (whose reads wait for a running write).
    def held(response_id: str) -> bool:
        with sqlite3.connect(tmp_path / "responses.db") as db:
            return db.execute("SELECT count(*) FROM responses WHERE id = ?", (response_id,)).fetchone()[0] == 1

    async with FakeLLM() as fake:
        fake.push(Reply("Stored first."))
        async with serve(config(fake, tmp_path)) as (base, _):
            async with sdk(base) as client:
                if stream:
                    async with client.responses.stream(model="m", input="hi") as events:
                        async for event in events:
                            if event.type == "response.completed":
                                assert held(event.response.id)
                                break
                else:
                    response = await client.responses.create(model="m", input="hi")
                    assert held(response.id)
