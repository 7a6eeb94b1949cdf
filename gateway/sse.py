"""Server-sent events: a pure incremental decoder and the few encoders the writer needs.

    decoder = SSEDecoder()
    for data in decoder.feed(chunk):   # bytes in, complete `data` payloads out
        ...
    decoder.close()                    # a last event that lacked its blank line

Bytes may arrive split anywhere (mid-line, mid-UTF-8 character); lines may end
in LF, CRLF or CR; comment lines and fields other than `data` are skipped.
"""

from __future__ import annotations

import re

_LINE_END = re.compile(rb"\r\n|\r|\n")


class SSEDecoder:
    __slots__ = ("_buffer", "_data", "_skip_lf")

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[bytes] = []
        self._skip_lf = False

    def feed(self, chunk: bytes) -> list[bytes]:
        """Complete event payloads (the joined `data:` lines) found so far."""
        if self._skip_lf and chunk:
            # The previous chunk ended in CR: an LF now is the rest of that CRLF,
            # not a blank line. The line itself was handled at once, so a
            # CR-only stream is not held back until more bytes come.
            self._skip_lf = False
            if chunk.startswith(b"\n"):
                chunk = chunk[1:]
        buffer = self._buffer + chunk if self._buffer else chunk
        events: list[bytes] = []
        if not self._data and b"\r" not in buffer:
            # The common shape (LF line ends, one `data: ` line per event): whole events cut at
            # their blank line, the unfinished one kept whole; any other event goes line by line.
            blocks = buffer.split(b"\n\n")
            self._buffer = blocks.pop()
            for block in blocks:
                if block.startswith(b"data: ") and b"\n" not in block:
                    events.append(block[6:])
                else:
                    self._lines(block.split(b"\n") + [b""], events)
            if b"\n" in self._buffer:  # complete lines of an unfinished event: kept as data, not bytes
                lines = self._buffer.split(b"\n")
                self._buffer = lines.pop()
                self._lines(lines, events)
            return events
        # Nearly every host ends lines in LF alone: bytes.split is many times the regex's speed.
        lines = _LINE_END.split(buffer) if b"\r" in buffer else buffer.split(b"\n")
        self._buffer = lines.pop()
        if buffer.endswith(b"\r"):
            self._skip_lf = True
        self._lines(lines, events)
        return events

    def _lines(self, lines: list[bytes], events: list[bytes]) -> None:
        """Complete lines in order: `data` values gathered, each blank line ends an event."""
        for line in lines:
            if not line:
                if self._data:
                    events.append(b"\n".join(self._data))
                    self._data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(b" ") else value)
            # comments (":...") and other fields (event:, id:, retry:) are ignored

    def close(self) -> list[bytes]:
        """Flush at end of stream: a final event without its blank line still counts."""
        rest = self._buffer
        self._buffer = b""
        self._skip_lf = False
        events = self.feed(rest + b"\n\n") if rest or self._data else []
        return events


def data(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keepalive\n\n"
