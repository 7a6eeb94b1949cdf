"""Folding upstream replies, whole or streamed, into one normalised assistant turn."""

from __future__ import annotations

import json
import re

import pytest

from gateway.assemble import StreamAssembler, turn_from_completion
from gateway.errors import UpstreamError
from gateway.events import Delta

CALL_ID = re.compile(r"^call_[0-9a-f]{24}$")


def completion(message: dict, finish_reason: str | None = "stop", usage: dict | None = None) -> dict:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish_reason}],
    }
    if usage is not None:
        body["usage"] = usage
    return body


def chunk(delta: dict | None = None, finish_reason: str | None = None, **extra) -> dict:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": choices, **extra}


def call_delta(*calls: dict) -> dict:
    return chunk({"tool_calls": list(calls)})


def assemble(chunks: list[dict]):
    asm = StreamAssembler()
    deltas = [asm.feed(c) for c in chunks]
    return asm.finish(), [d for d in deltas if d is not None]


def calls_of(turn) -> list[tuple[str, str]]:
    return [(c["function"]["name"], c["function"]["arguments"]) for c in turn.message["tool_calls"]]


# --- whole replies ---------------------------------------------------------------


def test_plain_answer():
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    turn = turn_from_completion(completion({"content": "Hi."}, usage=usage))
    assert turn.message == {"role": "assistant", "content": "Hi."}
    assert turn.finish_reason == "stop"
    assert turn.usage == usage


def test_arguments_sent_as_an_object_become_a_json_string():
    call = {"id": "call_a", "type": "function", "function": {"name": "calc", "arguments": {"expr": "1+1", "n": [1, 2]}}}
    turn = turn_from_completion(completion({"content": None, "tool_calls": [call]}, "tool_calls"))
    arguments = turn.message["tool_calls"][0]["function"]["arguments"]
    assert isinstance(arguments, str)
    assert json.loads(arguments) == {"expr": "1+1", "n": [1, 2]}


def test_missing_arguments_become_an_empty_string():
    call = {"id": "call_a", "type": "function", "function": {"name": "now"}}
    turn = turn_from_completion(completion({"tool_calls": [call]}, "tool_calls"))
    assert turn.message["tool_calls"][0]["function"] == {"name": "now", "arguments": ""}


def test_missing_or_empty_tool_call_ids_are_generated_and_distinct():
    calls = [
        {"function": {"name": "a", "arguments": "{}"}},
        {"id": "", "function": {"name": "b", "arguments": "{}"}},
        {"id": "call_kept", "function": {"name": "c", "arguments": "{}"}},
    ]
    turn = turn_from_completion(completion({"tool_calls": calls}, "tool_calls"))
    ids = [c["id"] for c in turn.message["tool_calls"]]
    assert CALL_ID.match(ids[0]) and CALL_ID.match(ids[1])
    assert ids[0] != ids[1]
    assert ids[2] == "call_kept"
    assert all(c["type"] == "function" for c in turn.message["tool_calls"])


@pytest.mark.parametrize("content", [None, ""])
def test_content_null_or_empty_without_tool_calls_is_an_empty_string(content):
    turn = turn_from_completion(completion({"content": content}))
    assert turn.message["content"] == ""


@pytest.mark.parametrize("content", [None, ""])
def test_content_null_or_empty_with_tool_calls_is_null(content):
    call = {"id": "call_a", "function": {"name": "a", "arguments": "{}"}}
    turn = turn_from_completion(completion({"content": content, "tool_calls": [call]}, "tool_calls"))
    assert turn.message["content"] is None
    assert turn.message["tool_calls"][0]["id"] == "call_a"


def test_content_missing_entirely_is_an_empty_string():
    body = completion({})
    del body["choices"][0]["message"]["role"]
    assert turn_from_completion(body).message == {"role": "assistant", "content": ""}


def test_tool_calls_with_finish_reason_stop_are_kept():
    call = {"id": "call_a", "function": {"name": "a", "arguments": "{}"}}
    turn = turn_from_completion(completion({"content": "", "tool_calls": [call]}, "stop"))
    assert turn.finish_reason == "stop"
    assert calls_of(turn) == [("a", "{}")]


def test_reasoning_and_refusal_are_kept():
    turn = turn_from_completion(completion({"content": "x", "reasoning_content": "think", "refusal": "no"}))
    assert turn.message["reasoning_content"] == "think"
    assert turn.message["refusal"] == "no"
    # vLLM and OpenRouter call it `reasoning`
    assert turn_from_completion(completion({"content": "x", "reasoning": "hmm"})).message["reasoning_content"] == "hmm"


def test_missing_finish_reason_is_stop():
    assert turn_from_completion(completion({"content": "x"}, None)).finish_reason == "stop"


@pytest.mark.parametrize(
    "body",
    [
        {"object": "chat.completion"},
        {"choices": []},
        {"choices": None},
        {"choices": ["not an object"]},
        ["not", "an", "object"],
        "<html>Bad Gateway</html>",
        None,
    ],
    ids=["no-choices", "empty-choices", "null-choices", "bad-choice", "list", "string", "null"],
)
def test_not_a_completion_is_an_upstream_error(body):
    with pytest.raises(UpstreamError) as info:
        turn_from_completion(body)
    assert info.value.status == 502
    assert info.value.body()["error"]["type"] == "upstream_error"


def test_choice_without_message_is_an_upstream_error():
    with pytest.raises(UpstreamError, match="no message"):
        turn_from_completion({"choices": [{"index": 0, "finish_reason": "stop"}]})


# --- streams ---------------------------------------------------------------------


def test_content_deltas_are_handed_back_at_once_and_joined():
    asm = StreamAssembler()
    assert asm.feed(chunk({"role": "assistant", "content": ""})) is None
    assert asm.feed(chunk({"content": "Hel"})) == Delta("Hel", None)
    assert asm.feed(chunk({"content": "lo"})) == Delta("lo", None)
    assert asm.feed(chunk({}, "stop")) is None
    turn = asm.finish()
    assert turn.message == {"role": "assistant", "content": "Hello"}
    assert turn.finish_reason == "stop"


def test_reasoning_deltas_are_handed_back_and_kept():
    turn, deltas = assemble(
        [
            chunk({"reasoning_content": "Let me "}),
            chunk({"reasoning": "think."}),  # vLLM / OpenRouter name
            chunk({"content": "42"}),
            chunk({}, "stop"),
        ]
    )
    assert deltas == [Delta(None, "Let me "), Delta(None, "think."), Delta("42", None)]
    assert turn.message["reasoning_content"] == "Let me think."
    assert turn.message["content"] == "42"


def test_refusal_deltas_are_joined():
    turn, deltas = assemble([chunk({"refusal": "I can't "}), chunk({"refusal": "do that."}), chunk({}, "stop")])
    assert turn.message["refusal"] == "I can't do that."
    assert deltas == []


def test_openai_style_call_split_over_many_chunks():
    turn, deltas = assemble(
        [
            chunk({"role": "assistant", "content": None}),
            call_delta({"index": 0, "id": "call_x", "type": "function", "function": {"name": "get_weather", "arguments": ""}}),
            call_delta({"index": 0, "function": {"arguments": '{"ci'}}),
            call_delta({"index": 0, "function": {"arguments": 'ty": "Pa'}}),
            call_delta({"index": 0, "function": {"arguments": 'ris"}'}}),
            chunk({}, "tool_calls"),
        ]
    )
    assert deltas == []  # tool-call fragments are never forwarded
    assert turn.message["content"] is None
    assert turn.message["tool_calls"] == [
        {"id": "call_x", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    ]
    assert turn.finish_reason == "tool_calls"


def test_name_streamed_in_pieces_is_joined():
    turn, _ = assemble(
        [
            call_delta({"index": 0, "id": "call_x", "function": {"name": "get_", "arguments": ""}}),
            call_delta({"index": 0, "function": {"name": "weather", "arguments": "{}"}}),
        ]
    )
    assert calls_of(turn) == [("get_weather", "{}")]


def test_name_repeated_in_every_fragment_is_not_doubled():
    # vLLM repeats name and id in every fragment of a call
    turn, _ = assemble(
        [
            call_delta({"index": 0, "id": "call_x", "function": {"name": "lookup", "arguments": '{"q":'}}),
            call_delta({"index": 0, "id": "call_x", "function": {"name": "lookup", "arguments": ' "a"}'}}),
        ]
    )
    assert turn.message["tool_calls"] == [
        {"id": "call_x", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "a"}'}}
    ]


def test_whole_call_in_one_chunk_with_object_arguments():
    # Ollama: the complete call in one chunk, arguments as an object
    turn, _ = assemble(
        [
            call_delta({"id": "call_o", "function": {"name": "calc", "arguments": {"expr": "2*3"}}}),
            chunk({}, "stop"),
        ]
    )
    assert calls_of(turn) == [("calc", '{"expr":"2*3"}')]
    assert turn.finish_reason == "stop"  # tool calls are kept whatever finish_reason says


def test_deltas_without_index_follow_the_last_call():
    turn, _ = assemble(
        [
            call_delta({"id": "call_1", "function": {"name": "a", "arguments": '{"x":'}}),
            call_delta({"function": {"arguments": " 1}"}}),
            call_delta({"id": "call_2", "function": {"name": "b", "arguments": ""}}),
            call_delta({"function": {"arguments": "{}"}}),
        ]
    )
    assert [c["id"] for c in turn.message["tool_calls"]] == ["call_1", "call_2"]
    assert calls_of(turn) == [("a", '{"x": 1}'), ("b", "{}")]


def test_fragment_without_index_or_id_first_opens_a_call():
    turn, _ = assemble([call_delta({"function": {"name": "a", "arguments": "{}"}})])
    assert calls_of(turn) == [("a", "{}")]
    assert CALL_ID.match(turn.message["tool_calls"][0]["id"])


def test_two_calls_interleaved_by_index_with_arguments_split_mid_token():
    turn, _ = assemble(
        [
            call_delta(
                {"index": 0, "id": "call_a", "function": {"name": "weather", "arguments": '{"ci'}},
                {"index": 1, "id": "call_b", "function": {"name": "time", "arguments": '{"t'}},
            ),
            call_delta({"index": 1, "function": {"arguments": 'z": "Europe/Be'}}),
            call_delta({"index": 0, "function": {"arguments": 'ty": "Ber'}}),
            call_delta({"index": 1, "function": {"arguments": 'rlin"}'}}),
            call_delta({"index": 0, "function": {"arguments": 'lin"}'}}),
            chunk({}, "tool_calls"),
        ]
    )
    calls = turn.message["tool_calls"]
    assert [c["id"] for c in calls] == ["call_a", "call_b"]
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [{"city": "Berlin"}, {"tz": "Europe/Berlin"}]


def test_several_whole_calls_sharing_index_zero_stay_apart():
    # Ollama (and some Qwen/DeepSeek/Grok hosts) label every call of a turn index 0
    turn, _ = assemble(
        [
            call_delta({"index": 0, "id": "call_a", "function": {"name": "read", "arguments": '{"path": "a"}'}}),
            call_delta({"index": 0, "id": "call_b", "function": {"name": "read", "arguments": '{"path": "b"}'}}),
            chunk({}, "stop"),
        ]
    )
    assert [c["id"] for c in turn.message["tool_calls"]] == ["call_a", "call_b"]
    assert calls_of(turn) == [("read", '{"path": "a"}'), ("read", '{"path": "b"}')]


def test_reused_index_then_bare_fragments_go_to_the_newest_call():
    turn, _ = assemble(
        [
            call_delta({"index": 0, "id": "call_a", "function": {"name": "a", "arguments": "{}"}}),
            call_delta({"index": 0, "id": "call_b", "function": {"name": "b", "arguments": '{"x"'}}),
            call_delta({"index": 0, "function": {"arguments": ": 1}"}}),
        ]
    )
    assert calls_of(turn) == [("a", "{}"), ("b", '{"x": 1}')]


def test_missing_ids_in_a_stream_are_generated():
    turn, _ = assemble(
        [
            call_delta({"index": 0, "function": {"name": "a", "arguments": "{}"}}),
            call_delta({"index": 1, "function": {"name": "b", "arguments": "{}"}}),
        ]
    )
    ids = [c["id"] for c in turn.message["tool_calls"]]
    assert all(CALL_ID.match(i) for i in ids) and ids[0] != ids[1]


def test_id_arriving_after_the_first_fragment_is_kept():
    turn, _ = assemble(
        [
            call_delta({"index": 0, "function": {"name": "a", "arguments": ""}}),
            call_delta({"index": 0, "id": "call_late", "function": {"arguments": "{}"}}),
        ]
    )
    assert turn.message["tool_calls"][0]["id"] == "call_late"


def test_text_and_tool_calls_in_one_turn():
    turn, deltas = assemble(
        [
            chunk({"content": "Let me check."}),
            call_delta({"index": 0, "id": "call_a", "function": {"name": "a", "arguments": "{}"}}),
            chunk({}, "tool_calls"),
        ]
    )
    assert deltas == [Delta("Let me check.", None)]
    assert turn.message["content"] == "Let me check."
    assert calls_of(turn) == [("a", "{}")]


def test_usage_chunk_with_empty_choices():
    usage = {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}
    asm = StreamAssembler()
    asm.feed(chunk({"content": "ok"}))
    asm.feed(chunk({}, "stop", usage=None))
    assert asm.feed(chunk(None, usage=usage)) is None
    turn = asm.finish()
    assert turn.usage == usage
    assert turn.finish_reason == "stop"
    assert turn.message["content"] == "ok"


def test_host_that_ignored_stream_true_sends_one_whole_completion():
    body = completion(
        {"content": None, "tool_calls": [{"id": "call_w", "function": {"name": "a", "arguments": {"k": 1}}}]},
        "tool_calls",
        usage={"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    )
    turn, _ = assemble([body])
    assert turn.message["tool_calls"] == [{"id": "call_w", "type": "function", "function": {"name": "a", "arguments": '{"k":1}'}}]
    assert turn.finish_reason == "tool_calls"
    assert turn.usage["total_tokens"] == 2


def test_stream_without_finish_reason_is_stop():
    turn, _ = assemble([chunk({"content": "cut short"})])
    assert turn.finish_reason == "stop"


def test_a_stream_without_any_choice_is_the_upstreams_mistake():
    # A 200 with no answer in it is not an empty answer (non-streamed, the same reply is a 502 too).
    with pytest.raises(UpstreamError, match="without an answer"):
        StreamAssembler().finish()
    asm = StreamAssembler()
    asm.feed({"choices": [], "usage": {"prompt_tokens": 1}})
    with pytest.raises(UpstreamError, match="without an answer"):
        asm.finish()


@pytest.mark.parametrize(
    "error",
    [{"message": "model overloaded", "type": "server_error"}, "model overloaded"],
    ids=["object", "string"],
)
def test_error_object_in_the_stream_is_an_upstream_error(error):
    asm = StreamAssembler()
    asm.feed(chunk({"content": "partial"}))
    with pytest.raises(UpstreamError, match="model overloaded") as info:
        asm.feed({"error": error})
    assert info.value.status == 502


@pytest.mark.parametrize("bad", [["a list"], "text", None, 3])
def test_a_chunk_that_is_not_an_object_is_an_upstream_error(bad):
    with pytest.raises(UpstreamError):
        StreamAssembler().feed(bad)


def test_a_choice_that_is_not_an_object_is_an_upstream_error():
    with pytest.raises(UpstreamError):
        StreamAssembler().feed({"choices": ["oops"]})


def test_chunks_of_one_network_read_become_one_delta():
    from gateway.assemble import StreamAssembler
    from gateway.events import Delta

    asm = StreamAssembler()
    batch = [
        {"choices": [{"index": 0, "delta": {"reasoning_content": "think "}}]},
        {"choices": [{"index": 0, "delta": {"content": "Hel"}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f", "arguments": "{}"}}]}}]},
        {"choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}]},
    ]
    assert asm.feed_many(batch) == Delta("Hello", "think ")
    assert asm.feed_many([{"choices": [{"index": 0, "delta": {}}]}]) is None
    turn = asm.finish()
    assert turn.message["content"] == "Hello" and turn.message["tool_calls"][0]["id"] == "a"


def test_a_runaway_stream_is_stopped():
    asm = StreamAssembler(max_repeats=50)
    for _ in range(49):
        asm.feed(chunk({"content": "ha"}))
    with pytest.raises(UpstreamError, match="repeated the same output 50 times"):
        asm.feed(chunk({"content": "ha"}))
    asm = StreamAssembler(max_repeats=50)
    for i in range(200):  # alternating pieces are not a runaway
        asm.feed(chunk({"content": "ab"[i % 2]}))


@pytest.mark.parametrize(
    "delta",
    [
        {"tool_calls": [{"index": 0, "function": "get_weather"}]},
        {"tool_calls": [{"index": 0, "function": {"name": 7}}]},
        {"tool_calls": [{"index": 0, "id": 5, "function": {"name": "x"}}]},
        {"tool_calls": {"index": 0}},
        {"refusal": {"reason": "no"}},
        {"content": 12},
    ],
)
def test_malformed_stream_deltas_are_the_upstreams_mistake(delta):
    with pytest.raises(UpstreamError, match="malformed"):
        StreamAssembler().feed(chunk(delta))


@pytest.mark.parametrize(
    "message",
    [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "a", "function": "get_weather"}]},
        {"role": "assistant", "content": None, "tool_calls": "x"},
        {"role": "assistant", "content": "x", "refusal": {"reason": "no"}},
    ],
)
def test_malformed_completions_are_the_upstreams_mistake(message):
    with pytest.raises(UpstreamError, match="malformed"):
        turn_from_completion({"choices": [{"message": message, "finish_reason": "stop"}]})


def test_content_as_a_list_of_text_parts_is_read_as_text():
    asm = StreamAssembler()
    delta = asm.feed(chunk({"content": [{"type": "text", "text": "He"}, {"type": "text", "text": "llo"}]}))
    assert delta == Delta("Hello")
    body = {"choices": [{"message": {"role": "assistant", "content": [{"type": "text", "text": "Hi"}]}, "finish_reason": "stop"}]}
    assert turn_from_completion(body).message["content"] == "Hi"


def test_logprobs_are_kept():
    lp = [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": []}]
    asm = StreamAssembler()
    assert asm.feed_many([chunk({"content": "Hi"}) | {"choices": [{"index": 0, "delta": {"content": "Hi"}, "logprobs": {"content": lp}, "finish_reason": None}]}]) == Delta("Hi", None, lp)
    body = {"choices": [{"message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop", "logprobs": {"content": lp}}]}
    assert turn_from_completion(body).logprobs == {"content": lp}


def test_a_long_stream_is_gathered_in_linear_time():
    # Joined once at the end, not re-joined as it grows: 40,000 1 KiB pieces would take minutes otherwise.
    asm = StreamAssembler()
    piece = "x" * 1023 + "\n"
    for _ in range(40_000):
        asm.feed(chunk({"content": piece}))
    assert len(asm.finish().message["content"]) == 40_000 * 1024


def test_a_tool_call_riding_with_content_in_one_delta_is_kept():
    asm = StreamAssembler()
    asm.feed(chunk({"content": "Let me look.", "tool_calls": [{"index": 0, "id": "t1", "function": {"name": "f", "arguments": "{}"}}]}))
    turn = asm.finish()
    assert turn.message["content"] == "Let me look." and turn.message["tool_calls"][0]["function"]["name"] == "f"


@pytest.mark.parametrize("pieces", [1, 7, 8, 9, 64, 65, 1_000])
def test_a_long_streamed_answer_is_assembled_exactly(pieces):
    # The assembler keeps the text in merged blocks while it streams; the turn holds it all, in order.
    words = [f"w{i}{'x' * (i % 5)} " for i in range(pieces)]
    asm = StreamAssembler()
    for word in words:
        asm.feed(chunk({"content": word}))
    asm.feed(chunk({}, "stop"))
    assert asm.finish().message["content"] == "".join(words)
