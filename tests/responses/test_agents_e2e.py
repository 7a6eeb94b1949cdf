"""The OpenAI Agents SDK's run loop against toolgate's Responses API, end to end.

toolgate under a real uvicorn on 127.0.0.1, the fake LLM upstream, and `agents.Runner` with an
`OpenAIResponsesModel` pointed at the gateway. One run uses both kinds of tool: the gateway's own
`calculate` (run inside the gateway; the agent sees an `mcp_call` item) and the agent's own
`@function_tool` (handed back as a `function_call`; the SDK runs it and sends its output on, in
the whole input by default, or after `previous_response_id` when the run chains responses).
"""

from __future__ import annotations

import dataclasses

import httpx2
import openai
import orjson
import pytest

from tests.fakellm import Calls, FakeLLM, Reply
from tests.test_e2e import serve, settings_for

agents = pytest.importorskip("agents")

QUESTION = "What is 6*7, and how many people live in Oslo?"
ANSWER = "6*7 is 42; Oslo has 709,000 people."


@pytest.fixture(autouse=True)
def _no_tracing():
    # The SDK's default trace exporter posts to api.openai.com: the run stays on loopback.
    agents.set_tracing_disabled(True)
    yield
    agents.set_tracing_disabled(False)


def config(fake: FakeLLM, tmp_path):
    cfg = settings_for(fake)
    return dataclasses.replace(cfg, environ={**cfg.environ, "TOOLGATE_STORE_URL": f"sqlite:///{tmp_path}/responses.db"})


def clerk(base: str, asked: list[str], sent: list[dict]):
    """An agent with one function tool of its own, and a client recording every request body."""

    @agents.function_tool
    def city_population(city: str) -> str:
        """The population of a city."""
        asked.append(city)
        return "709,000"

    async def record(request: httpx2.Request) -> None:
        sent.append(orjson.loads(request.content))

    http = httpx2.AsyncClient(event_hooks={"request": [record]})
    client = openai.AsyncOpenAI(base_url=base, api_key="unused", max_retries=0, http_client=http)
    model = agents.OpenAIResponsesModel(model="m", openai_client=client)
    return agents.Agent(name="clerk", instructions="Answer briefly.", tools=[city_population], model=model), client


@pytest.mark.parametrize(
    ("streamed", "chained"), [(False, False), (True, False), (False, True)], ids=["run", "run_streamed", "chained"]
)
async def test_agent_uses_a_server_tool_and_its_own_function_tool(tmp_path, streamed, chained):
    asked: list[str] = []
    sent: list[dict] = []
    async with FakeLLM() as fake:
        fake.push(Calls([("calculate", {"expression": "6*7"})]), Calls([("city_population", {"city": "Oslo"})]), Reply(ANSWER))
        async with serve(config(fake, tmp_path)) as (base, _):
            agent, client = clerk(base, asked, sent)
            async with client:
                if streamed:
                    result = agents.Runner.run_streamed(agent, QUESTION)
                    events = [e.name async for e in result.stream_events() if e.type == "run_item_stream_event"]
                    assert events == ["mcp_list_tools", "tool_called", "tool_called", "tool_output", "message_output_created"]
                else:
                    result = await agents.Runner.run(agent, QUESTION, auto_previous_response_id=chained)

    assert result.final_output == ANSWER
    assert asked == ["Oslo"]  # the SDK ran its own tool, once, with the model's arguments
    items = [item.raw_item for item in result.new_items]
    assert [getattr(i, "type", None) or i["type"] for i in items] == [
        "mcp_list_tools", "mcp_call", "function_call", "function_call_output", "message"
    ]  # fmt: skip
    server_call, function_call = items[1], items[2]
    assert (server_call.name, server_call.output, server_call.server_label) == ("calculate", "42", "builtin")
    assert function_call.name == "city_population" and orjson.loads(function_call.arguments) == {"city": "Oslo"}

    # Two requests from the SDK: the question, then its tool's output.
    assert len(sent) == 2 and all(body["model"] == "m" for body in sent)
    output = {"type": "function_call_output", "call_id": function_call.call_id, "output": "709,000"}
    if chained:
        assert sent[1]["previous_response_id"] == result.raw_responses[0].response_id
        assert sent[1]["input"] == [output]
    else:
        assert "previous_response_id" not in sent[1]
        assert [i.get("type") for i in sent[1]["input"]] == [None, "mcp_list_tools", "mcp_call", "function_call", "function_call_output"]
        assert sent[1]["input"][-1] == output

    # Three rounds upstream: calculate ran inside the gateway, city_population in the SDK.
    assert len(fake.requests) == 3 and fake.pending == 0
    assert all(r.body.get("stream", False) is streamed for r in fake.requests)
    assert [t["function"]["name"] for t in fake.requests[0].body["tools"]] == ["calculate", "current_time", "city_population"]
    second = fake.requests[1].body["messages"]
    assert second[-1] == {"role": "tool", "tool_call_id": second[-2]["tool_calls"][0]["id"], "content": "42"}
    third = fake.requests[2].body["messages"]
    assert [m["role"] for m in third] == ["system", "user", "assistant", "tool", "tool"]
    assert third[0]["content"].endswith("Answer briefly.") and third[1]["content"] == QUESTION
    calls = {c["id"]: c["function"] for c in third[2]["tool_calls"]}
    results = {m["tool_call_id"]: m["content"] for m in third[3:]}
    assert sorted(results.values()) == ["42", "709,000"] and set(results) == set(calls)
    assert calls[function_call.call_id] == {"name": "city_population", "arguments": '{"city":"Oslo"}'}
