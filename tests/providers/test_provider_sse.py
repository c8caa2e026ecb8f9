"""The SSE parser: the same events whatever the chunking, down to one byte at a time."""

from __future__ import annotations

import re

import pytest

from minichat_host.providers.sse import SseEvent, SseParser

pytestmark = pytest.mark.both_loops  # the provider client on asyncio's loop and on uvloop's

STREAM = (
    "\ufeff: a comment first\r\n"
    "event: response.created\r\n"
    'data: {"type":"response.created"}\r\n'
    "\r\n"
    "event: multi\n"
    "data: line one\n"
    "data:line two\n"
    "data\n"
    "id: 7\n"
    "retry: 1000\n"
    "unknown: field\n"
    "\n"
    "data: bare CR lines\r"
    "event: cr\r"
    "\r"
    ": keep-alive comment\n\n"
    "event: no-data-is-dropped\n\n"
    "data: caf\u00e9 \u2603 \U0001f600\r\n\r\n"
    "data:  two spaces keep one\n\n"
    "data: [DONE]\n\n"
    "data: cut off at the end"
).encode()

EXPECTED = [
    SseEvent(event="response.created", data='{"type":"response.created"}'),
    SseEvent(event="multi", data="line one\nline two\n", id="7"),
    SseEvent(event="cr", data="bare CR lines", id="7"),
    SseEvent(event="message", data="caf\u00e9 \u2603 \U0001f600", id="7"),
    SseEvent(event="message", data=" two spaces keep one", id="7"),
    SseEvent(event="message", data="[DONE]", id="7"),
]


def parse(chunks: list[bytes]) -> tuple[list[SseEvent], SseParser]:
    parser = SseParser()
    events: list[SseEvent] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    return events, parser


def test_whole_stream() -> None:
    events, parser = parse([STREAM])
    assert events == EXPECTED
    assert parser.has_partial_event  # the unterminated last event is never dispatched


def test_one_byte_at_a_time() -> None:
    events, _ = parse([STREAM[i : i + 1] for i in range(len(STREAM))])
    assert events == EXPECTED


@pytest.mark.parametrize("cut", range(1, len(STREAM)))
def test_split_at_every_byte(cut: int) -> None:
    events, _ = parse([STREAM[:cut], b"", STREAM[cut:]])
    assert events == EXPECTED


# The same stream with LF line ends only (the form model APIs send), which is parsed without a line scan.
LF_STREAM = STREAM.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


def test_lf_stream_whole_and_split_at_every_byte() -> None:
    assert parse([LF_STREAM])[0] == EXPECTED
    for cut in range(1, len(LF_STREAM)):
        assert parse([LF_STREAM[:cut], LF_STREAM[cut:]])[0] == EXPECTED, cut
    assert parse([LF_STREAM[i : i + 1] for i in range(len(LF_STREAM))])[0] == EXPECTED


def test_several_whole_events_in_one_chunk() -> None:
    # What a busy loop reads when the model's events arrived between two of its polls.
    event = b'data: {"choices":[{"delta":{"content":"tok "}}]}\n\n'
    events, parser = parse([event, event * 5 + b"event: named\ndata: a\n\ndata: par", b"tial\n\n"])
    assert [e.data for e in events[:6]] == ['{"choices":[{"delta":{"content":"tok "}}]}'] * 6
    assert events[6:] == [SseEvent(event="named", data="a"), SseEvent(event="message", data="partial")]
    assert not parser.has_partial_event


def test_crlf_split_between_cr_and_lf_is_one_line_end() -> None:
    events, _ = parse([b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"])
    assert events == [SseEvent(event="message", data="a\nb")]


def test_events_are_returned_as_soon_as_their_blank_line_arrives() -> None:
    parser = SseParser()
    assert parser.feed(b"data: first\n") == []
    assert parser.feed(b"\n") == [SseEvent(event="message", data="first")]
    assert parser.feed(b"data: second\n\ndata: thi") == [SseEvent(event="message", data="second")]
    assert parser.has_partial_event


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    events, _ = parse([b"data: \xff\xfe ok\n\n"])
    assert events == [SseEvent(event="message", data="\ufffd\ufffd ok")]


def test_one_event_per_chunk_as_models_stream_them() -> None:
    # Chunks cut at every blank line: the shape a model's stream usually arrives in (one whole event each).
    events, _ = parse([block for block in re.split(rb"(?<=\n\n)", STREAM) if block])
    assert events == EXPECTED


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        # An `id` and an `event` field fed before the data line belong to the event it completes.
        ([b"data: 0\n\n", b"id: 9\n\n", b"data: a\n\n"], [("message", "0", None), ("message", "a", "9")]),
        ([b"data: 0\n\n", b"event: named\n", b"data: a\n\n"], [("message", "0", None), ("named", "a", None)]),
        # A data line fed before completes with the next one.
        ([b"data: 0\n\n", b"data: a\n", b"data: b\n\n"], [("message", "0", None), ("message", "a\nb", None)]),
        # Two events in one chunk, CR line ends inside, an empty data line, no space after the colon.
        (
            [b"data: 0\n\n", b"data: a\n\ndata: b\n\n"],
            [("message", "0", None), ("message", "a", None), ("message", "b", None)],
        ),
        (
            [b"data: 0\n\n", b"data: a\r\rdata: b\r\n\r\n"],
            [("message", "0", None), ("message", "a", None), ("message", "b", None)],
        ),
        (
            [b"data: 0\n\n", b"data: \n\n", b"data:x\n\n"],
            [("message", "0", None), ("message", "", None), ("message", "x", None)],
        ),
        # Named events, as the Responses API streams them: the name, an empty name, a name and two data lines.
        (
            [b"data: 0\n\n", b"event: response.output_text.delta\ndata: {}\n\n", b"event: \ndata: x\n\n"],
            [("message", "0", None), ("response.output_text.delta", "{}", None), ("message", "x", None)],
        ),
        (
            [b"data: 0\n\n", b"event: e\ndata: a\ndata: b\n\n", b"event: only\n\n", b"event: e\n\n"],
            [("message", "0", None), ("e", "a\nb", None)],
        ),
        ([b"data: 0\n\n", b"id: 3\n", b"event: e\ndata: a\n\n"], [("message", "0", None), ("e", "a", "3")]),
        # A first chunk with a byte-order mark, and a stream opening with a one-event chunk.
        ([b"\xef\xbb\xbfdata: a\n\n"], [("message", "a", None)]),
        (
            [b"data: a\n\n", b"data: caf\xc3\xa9\n\n"],
            [("message", "a", None), ("message", "caf\u00e9", None)],
        ),
    ],
)
def test_whole_event_chunks_after_other_input(
    chunks: list[bytes], expected: list[tuple[str, str, str | None]]
) -> None:
    events, parser = parse(chunks)
    assert events == [SseEvent(event=event, data=data, id=id_) for event, data, id_ in expected]
    assert not parser.has_partial_event
