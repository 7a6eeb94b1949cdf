"""The incremental SSE decoder: bytes in any split, complete `data` payloads out."""

from __future__ import annotations

import orjson
import pytest

from gateway import sse
from gateway.sse import SSEDecoder


def decode(*chunks: bytes) -> list[bytes]:
    decoder = SSEDecoder()
    events: list[bytes] = []
    for chunk in chunks:
        events += decoder.feed(chunk)
    return events + decoder.close()


def chunk(content: str) -> bytes:
    body = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": content}}]}
    return orjson.dumps(body)


# A stream as an OpenAI-compatible host sends it: multibyte text, a ping
# comment, an `event:` and `id:` field, a two-line event and [DONE].
STREAM = (
    b": ping\n\n"
    + b"data: " + chunk("Grüße 👋 ") + b"\n\n"
    + b"event: message\nid: 7\nretry: 1000\ndata: " + chunk("日本語") + b"\n\n"
    + b"data: first line\ndata: second line\n\n"
    + b": keepalive\n\n"
    + b"data: [DONE]\n\n"
)  # fmt: skip
EXPECTED = [chunk("Grüße 👋 "), chunk("日本語"), b"first line\nsecond line", b"[DONE]"]


def test_whole_stream_in_one_chunk():
    assert decode(STREAM) == EXPECTED
    assert [orjson.loads(e)["choices"][0]["delta"]["content"] for e in EXPECTED[:2]] == ["Grüße 👋 ", "日本語"]


def test_byte_by_byte():
    assert decode(*(STREAM[i : i + 1] for i in range(len(STREAM)))) == EXPECTED


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_every_split_point_with_every_line_ending(ending):
    stream = STREAM.replace(b"\n", ending)
    for cut in range(len(stream) + 1):
        assert decode(stream[:cut], stream[cut:]) == EXPECTED, f"split at byte {cut}"


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_byte_by_byte_with_every_line_ending(ending):
    stream = STREAM.replace(b"\n", ending)
    assert decode(*(stream[i : i + 1] for i in range(len(stream)))) == EXPECTED


def test_split_inside_a_multibyte_character_keeps_the_bytes_whole():
    payload = "👋".encode()
    stream = b"data: " + payload + b"\n\n"
    for cut in range(6, 6 + len(payload)):  # every cut inside the 4-byte emoji
        assert decode(stream[:cut], stream[cut:]) == [payload]
        assert decode(stream[:cut], stream[cut:])[0].decode() == "👋"


def test_cr_lf_split_across_chunks_is_one_line_end_not_two():
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    # The LF finishing that CRLF must not count as the blank line ending the event ...
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"data: b\r") == []
    # ... but a second line end does.
    assert decoder.feed(b"\n\r\n") == [b"a\nb"]


def test_event_is_handed_out_as_soon_as_its_blank_line_arrives():
    for ending in (b"\n", b"\r\n", b"\r"):
        decoder = SSEDecoder()
        assert decoder.feed(b"data: x" + ending + ending) == [b"x"], ending


def test_no_event_before_its_blank_line():
    decoder = SSEDecoder()
    assert decoder.feed(b"data: one\n") == []
    assert decoder.feed(b"data: two\n") == []
    assert decoder.feed(b"\n") == [b"one\ntwo"]


def test_comments_and_other_fields_make_no_events():
    assert decode(b": ping\n\n: keepalive\r\n\r\nevent: ping\n\nid: 3\n\nretry: 10\n\n") == []


def test_event_and_id_lines_do_not_leak_into_data():
    assert decode(b"event: delta\ndata: x\nid: 42\n\n") == [b"x"]


def test_only_one_space_after_the_colon_is_removed():
    assert decode(b"data:no-space\n\ndata:  two spaces\n\n") == [b"no-space", b" two spaces"]


def test_empty_data_line_is_an_empty_payload():
    assert decode(b"data:\n\n") == [b""]
    assert decode(b"data: a\ndata:\ndata: b\n\n") == [b"a\n\nb"]


def test_done_is_passed_as_a_payload():
    assert decode(b"data: [DONE]\n\n") == [b"[DONE]"]


@pytest.mark.parametrize("tail", [b"data: last", b"data: last\n", b"data: last\r\n", b"data: last\r"])
def test_close_flushes_a_final_event_without_its_blank_line(tail):
    decoder = SSEDecoder()
    assert decoder.feed(b"data: first\n\n" + tail) == [b"first"]
    assert decoder.close() == [b"last"]


def test_close_after_a_complete_stream_adds_nothing():
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n\n") == [b"a"]
    assert decoder.close() == []
    assert decoder.close() == []


def test_close_with_only_a_comment_left_adds_nothing():
    decoder = SSEDecoder()
    decoder.feed(b": keepalive")
    assert decoder.close() == []


def test_empty_chunks_change_nothing():
    decoder = SSEDecoder()
    assert decoder.feed(b"") == []
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"") == []
    assert decoder.feed(b"\n\n") == [b"a"]


def test_encoders_round_trip_through_the_decoder():
    payload = chunk("hé")
    assert sse.data(payload) == b"data: " + payload + b"\n\n"
    assert decode(sse.KEEPALIVE, sse.data(payload), sse.DONE) == [payload, b"[DONE]"]
