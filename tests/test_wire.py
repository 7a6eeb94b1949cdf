"""Client requests in: parsing, per-role allowlists, parameters, the system prompt."""

from __future__ import annotations

import orjson
import pytest

from gateway import errors
from gateway.errors import InvalidRequest, error_json
from gateway.wire import ChatRequest, lead_messages, parse_request, upstream_params

USER = {"role": "user", "content": "hi"}


def parse(**body):
    body.setdefault("model", "toolgate")
    body.setdefault("messages", [USER])
    return parse_request(orjson.dumps(body))


def rejected(body: bytes | dict) -> InvalidRequest:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    with pytest.raises(InvalidRequest) as info:
        parse_request(raw)
    return info.value


# --- 400s naming the parameter ---------------------------------------------------


@pytest.mark.parametrize(
    "body, param",
    [
        ({"messages": [USER]}, "model"),
        ({"model": "", "messages": [USER]}, "model"),
        ({"model": 7, "messages": [USER]}, "model"),
        ({"model": "m"}, "messages"),
        ({"model": "m", "messages": []}, "messages"),
        ({"model": "m", "messages": "hi"}, "messages"),
        ({"model": "m", "messages": [USER, {"role": "robot", "content": "x"}]}, "messages[1].role"),
        ({"model": "m", "messages": [USER, {"content": "x"}]}, "messages[1].role"),
        ({"model": "m", "messages": [USER, "hi"]}, "messages[1]"),
        ({"model": "m", "messages": [{"role": "user"}]}, "messages[0].content"),
        ({"model": "m", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"model": "m", "messages": [{"role": "user", "content": ["text"]}]}, "messages[0].content"),
        (
            {
                "model": "m",
                "messages": [
                    USER,
                    {"role": "assistant", "tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": "{}"}}]},
                    {"role": "tool", "content": "result"},
                ],
            },
            "messages[2].tool_call_id",
        ),
        (
            {"model": "m", "messages": [USER, {"role": "assistant", "tool_calls": [{"id": "c1", "function": {}}]}]},
            "messages[1].tool_calls[0].function",
        ),
        ({"model": "m", "messages": [USER, {"role": "assistant", "tool_calls": "f"}]}, "messages[1].tool_calls"),
        ({"model": "m", "messages": [USER], "n": 2}, "n"),
        ({"model": "m", "messages": [USER], "stream": "yes"}, "stream"),
        ({"model": "m", "messages": [USER], "tools": [{"type": "function"}]}, "tools[0]"),
        ({"model": "m", "messages": [USER], "tools": [{"type": "function", "function": {"name": "a"}}, {}]}, "tools[1]"),
        ({"model": "m", "messages": [USER], "tools": {"type": "function"}}, "tools"),
    ],
)
def test_bad_requests_are_400s_naming_the_parameter(body, param):
    exc = rejected(body)
    status, raw, _ = error_json(exc)
    assert status == 400
    error = orjson.loads(raw)["error"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert error["message"]


@pytest.mark.parametrize("body", [b"{not json", b"", b"[1, 2]", b'"text"', b"\xff\xfe"])
def test_body_that_is_not_a_json_object_is_a_400(body):
    exc = rejected(body)
    assert exc.status == 400
    assert exc.param is None


def test_too_many_messages():
    body = orjson.dumps({"model": "m", "messages": [USER] * 3})
    with pytest.raises(InvalidRequest) as info:
        parse_request(body, max_messages=2)
    assert info.value.param == "messages"
    assert "3" in info.value.message
    assert len(parse_request(body, max_messages=3).messages) == 3


def test_n_one_and_stream_null_are_fine():
    request = parse(n=1, stream=None)
    assert request.stream is False


# --- messages --------------------------------------------------------------------


def test_client_metadata_is_dropped_from_every_message():
    meta = {"id": "m1", "timestamp": 1700000000, "backend": "ollama", "host": "gpu-3", "info": {}, "done": True}
    request = parse(
        messages=[
            {"role": "system", "content": "be brief", **meta},
            {"role": "user", "content": "hi", "name": "ann", **meta},
            {"role": "assistant", "content": "hello", "refusal": None, **meta},
            {"role": "user", "content": "again", **meta},
        ]
    )
    assert request.messages == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi", "name": "ann"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "again"},
    ]


def test_tool_conversation_is_kept_and_normalised():
    request = parse(
        messages=[
            USER,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "calc", "arguments": {"expr": "1+1"}}, "index": 0},
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "2", "name": "calc", "timestamp": 1},
        ]
    )
    assistant, tool = request.messages[1], request.messages[2]
    assert assistant == {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "calc", "arguments": '{"expr":"1+1"}'}}],
    }
    assert tool == {"role": "tool", "content": "2", "tool_call_id": "c1"}


def test_assistant_without_content_gets_content_null():
    request = parse(messages=[USER, {"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f"}}]}])
    assert request.messages[1]["content"] is None
    assert request.messages[1]["tool_calls"][0]["function"] == {"name": "f", "arguments": ""}


def test_content_parts_pass_unchanged():
    parts = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
        {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBER="}},
    ]
    request = parse(messages=[{"role": "user", "content": parts}])
    assert request.messages[0]["content"] == parts


def test_developer_role_is_accepted():
    assert parse(messages=[{"role": "developer", "content": "x"}, USER]).messages[0]["role"] == "developer"


# --- parameters ------------------------------------------------------------------

STANDARD = {
    "temperature": 0.3,
    "top_p": 0.9,
    "max_tokens": 100,
    "max_completion_tokens": 120,
    "stop": ["\n\n"],
    "seed": 7,
    "response_format": {"type": "json_object"},
    "user": "u-1",
    "presence_penalty": 0.1,
    "frequency_penalty": 0.2,
    "logit_bias": {"50256": -100},
    "reasoning_effort": "low",
}


def test_standard_parameters_pass():
    request = parse(**STANDARD)
    assert request.params == STANDARD
    assert upstream_params(request, {}, {}, frozenset()) == STANDARD


def test_gateway_owned_parameters_are_not_forwarded():
    request = parse(
        stream=True,
        stream_options={"include_usage": True},
        tools=[{"type": "function", "function": {"name": "mine"}}],
        tool_choice="auto",
        n=1,
        functions=[{"name": "old"}],
        function_call="auto",
        temperature=0,
    )
    assert request.stream is True
    assert request.include_usage is True
    assert request.client_tools == [{"type": "function", "function": {"name": "mine"}}]
    assert request.tool_choice == "auto"
    assert upstream_params(request, {}, {}, frozenset({"stream", "tools", "n", "functions"})) == {"temperature": 0}


@pytest.mark.parametrize(
    "knob",
    ["api_base", "base_url", "api_key", "api_version", "extra_headers", "extra_query", "custom_llm_provider",
     "mock_response", "mock_tool_calls"],
)  # fmt: skip
def test_routing_knobs_are_never_forwarded_even_when_allowed(knob):
    request = parse(**{knob: "http://evil.example/v1", "temperature": 1})
    # even an upstream that would accept any extra key does not get them
    assert upstream_params(request, {}, {}, frozenset({knob})) == {"temperature": 1}


def test_extras_are_kept_only_if_the_upstream_accepts_them():
    request = parse(top_k=40, min_p=0.05, frobnicate=True)
    assert request.extras == {"top_k": 40, "min_p": 0.05, "frobnicate": True}
    assert upstream_params(request, {}, {}, frozenset()) == {}
    assert upstream_params(request, {}, {}, frozenset({"top_k", "min_p"})) == {"top_k": 40, "min_p": 0.05}


def test_top_level_metadata_is_not_an_accepted_extra():
    request = parse(id="req-1", chat_id="c-9", session_id="s", background_tasks={"title": True})
    assert upstream_params(request, {}, {}, frozenset({"top_k"})) == {}


def test_stream_usage_needs_include_usage_true():
    assert parse(stream=True, stream_options={"include_usage": False}).include_usage is False
    assert parse(stream=True, stream_options=None).include_usage is False
    assert parse(stream=True).include_usage is False


def test_empty_client_tools_are_none():
    assert parse(tools=[]).client_tools is None
    assert parse().client_tools is None


def test_defaults_then_client_then_accepted_extras_then_overrides():
    request = parse(temperature=0.9, max_tokens=50, top_k=5)
    defaults = {"temperature": 0.2, "top_p": 0.5, "top_k": 1}
    overrides = {"max_tokens": 2048}
    assert upstream_params(request, defaults, overrides, frozenset({"top_k"})) == {
        "temperature": 0.9,  # the client's value beats the default
        "top_p": 0.5,  # default used where the client said nothing
        "top_k": 5,  # accepted extra beats the default
        "max_tokens": 2048,  # override always wins
    }


def test_client_null_does_not_erase_a_default():
    request = parse(temperature=None, max_tokens=None, seed=3)
    assert upstream_params(request, {"temperature": 0.2}, {}, frozenset()) == {"temperature": 0.2, "seed": 3}


def test_upstream_params_does_not_mutate_its_inputs():
    request = parse(temperature=0.9)
    defaults, overrides = {"top_p": 0.5}, {"max_tokens": 9}
    upstream_params(request, defaults, overrides, frozenset())
    assert defaults == {"top_p": 0.5} and overrides == {"max_tokens": 9}
    assert request.params == {"temperature": 0.9}


def test_request_with_no_params_at_all():
    request = ChatRequest(model="m", messages=[USER])
    assert upstream_params(request, {"temperature": 0}, {}, frozenset()) == {"temperature": 0}


# --- system prompt and tool instruction -----------------------------------------

INSTRUCTION = "You can call tools."


def test_no_prompt_and_no_tools_leaves_messages_alone():
    messages = [USER]
    assert lead_messages(messages, "", "") is messages


def test_system_prompt_goes_first():
    assert lead_messages([USER], "Be kind.", "") == [{"role": "system", "content": "Be kind."}, USER]


def test_tool_instruction_alone():
    assert lead_messages([USER], "", INSTRUCTION) == [{"role": "system", "content": INSTRUCTION}, USER]


def test_system_prompt_and_instruction_in_one_system_message():
    out = lead_messages([USER], "Be kind.", INSTRUCTION)
    assert len(out) == 2 and out[1] == USER
    assert out[0]["role"] == "system"
    assert out[0]["content"].startswith("Be kind.")
    assert INSTRUCTION in out[0]["content"]


@pytest.mark.parametrize("role", ["system", "developer"])
def test_client_system_message_is_merged_config_text_first(role):
    client = {"role": role, "content": "Answer in French.", "name": "ops"}
    out = lead_messages([client, USER], "Be kind.", INSTRUCTION)
    assert len(out) == 2 and out[1] == USER
    merged = out[0]
    assert merged["role"] == role and merged["name"] == "ops"
    text = merged["content"]
    assert text.startswith("Be kind.")
    assert INSTRUCTION in text and "Answer in French." in text
    assert text.index("Be kind.") < text.index("Answer in French.")
    assert client["content"] == "Answer in French."  # the input is not changed


def test_client_system_message_as_content_parts_is_merged_as_text():
    client = {"role": "system", "content": [{"type": "text", "text": "Part one."}, {"type": "text", "text": "Part two."}]}
    out = lead_messages([client, USER], "Be kind.", "")
    assert out[0]["content"].startswith("Be kind.")
    assert "Part one.\nPart two." in out[0]["content"]


def test_system_message_later_in_the_conversation_is_not_merged():
    later = {"role": "system", "content": "late"}
    out = lead_messages([USER, later], "Be kind.", "")
    assert out == [{"role": "system", "content": "Be kind."}, USER, later]


# --- the error envelope ----------------------------------------------------------


@pytest.mark.parametrize(
    "exc, status, type_, code",
    [
        (errors.InvalidRequest("bad"), 400, "invalid_request_error", None),
        (errors.RequestTooLarge("big"), 413, "invalid_request_error", "request_too_large"),
        (errors.Unauthorized("who"), 401, "authentication_error", "invalid_api_key"),
        (errors.ModelNotFound("which"), 404, "invalid_request_error", "model_not_found"),
        (errors.Overloaded("busy"), 429, "rate_limit_error", "rate_limit_exceeded"),
        (errors.LoopLimit("rounds"), 422, "tool_loop_error", "max_rounds_exceeded"),
        (errors.UpstreamError("bad gw"), 502, "upstream_error", "bad_gateway"),
        (errors.UpstreamTimeout("slow"), 504, "upstream_error", "upstream_timeout"),
        (errors.UpstreamRateLimited("later"), 429, "rate_limit_error", "rate_limit_exceeded"),
        (errors.UpstreamStatus("mapped", status=502, code="upstream_unauthorized"), 502, "upstream_error", "upstream_unauthorized"),
    ],
)
def test_every_gateway_error_has_the_openai_shape(exc, status, type_, code):
    got_status, raw, _ = error_json(exc)
    assert got_status == status
    assert orjson.loads(raw) == {"error": {"message": exc.message, "type": type_, "param": None, "code": code}}


def test_error_headers_are_carried():
    exc = errors.UpstreamRateLimited("later", headers={"retry-after": "3"})
    assert error_json(exc)[2] == {"retry-after": "3"}
    assert errors.UpstreamRateLimited("x").headers == {}  # not shared between instances


def test_status_and_code_overrides_stay_on_the_instance():
    errors.UpstreamStatus("x", status=429, code="c")
    assert errors.UpstreamStatus("y").status == 502
    assert errors.UpstreamStatus("y").code == "bad_gateway"


def test_foreign_exception_is_a_500_naming_no_internals():
    status, raw, headers = error_json(RuntimeError("db password is hunter2 at /srv/app.py"))
    assert status == 500 and headers == {}
    body = orjson.loads(raw)
    assert body["error"]["type"] == "internal_error"
    assert "hunter2" not in raw.decode() and "/srv" not in raw.decode()
