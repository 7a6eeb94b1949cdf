"""HTML to readable text or Markdown, in time linear in the input whatever the markup.

    title, text = html_to_text(page, "https://site.example/a/", markdown=True)

Headings, paragraphs, lists, tables (cells joined by ``|``), code blocks, links
and emphasis are kept; scripts, styles, navigation and hidden parts are dropped.
Pages come from anywhere, so every step costs at most a constant per input
character: nested unclosed tags, 100k-deep lists or a 2 MiB attribute included.

The tokenizer is written here because the candidates are not linear
(``bench/html_reduce.py``; x2 is the time on an input doubled over the input):
Python 3.11's ``html.parser`` rescans unterminated constructs (``<a`` repeated:
x2 = 4.2, 5.7 s for 64 KiB) and lexbor's HTML5 tree builder (selectolax), though
14x faster on a normal page, scans its stack of open elements (nested ``<div>``
or ``<ul><li>``: x2 = 4.0). Here every hostile input measures x2 = 2 and a
normal page costs 1.5x ``html.parser`` tokenizing it with no handlers at all.
"""

from __future__ import annotations

import html as entities
import re
from urllib.parse import urljoin

SKIP = frozenset(
    {"script", "style", "noscript", "template", "svg", "math", "canvas", "iframe", "object", "nav", "select", "button"}
)
VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"})
PARAGRAPHS = frozenset({"p", "blockquote", "table", "figure", "ul", "ol", "dl", "form", "details"})
LINES = frozenset(
    {"div", "section", "article", "main", "header", "footer", "aside", "tr", "dt", "dd", "figcaption",
     "summary", "address", "fieldset", "caption", "center", "hgroup", "li"}
)
EMPHASIS = {"strong": "**", "b": "**", "em": "*", "i": "*", "code": "`"}
HEADINGS = {f"h{n}": n for n in range(1, 7)}
# Elements whose content is text up to their end tag, as a browser reads them.
RAW_TEXT = frozenset({"script", "style", "xmp", "iframe", "noembed", "noframes", "noscript", "title", "textarea"})
# Deeper lists are indented no further: indentation is written per item, so
# unbounded depth would make the output quadratic in the input.
MAX_INDENT = 8

# Possessive quantifiers never backtrack, so each match costs its own length; a
# tag that does not close before the end of the input ends the document.
_MARKUP = re.compile(r"</?[a-zA-Z]|<[!?/]")
_TAG = re.compile(r"""<(/?)([a-zA-Z][^\t\n\f\r />]*+)((?:[^>"']++|"[^"]*+"|'[^']*+')*+)>""")
_ATTR = re.compile(
    r"""([^\t\n\f\r />"'=][^\t\n\f\r />"'=]*+)(?:[\t\n\f\r ]*+=[\t\n\f\r ]*+("[^"]*+"|'[^']*+'|[^\t\n\f\r >]++))?"""
)
_HIDDEN = re.compile("hidden", re.IGNORECASE)
# html.unescape turns digits into an int, which refuses more than 4300 of them.
_HUGE_CHARREF = re.compile(r"&#(?:[xX][0-9a-fA-F]{9,}+|[0-9]{9,}+);?")
_RAW_END: dict[str, re.Pattern[str]] = {tag: re.compile(rf"</{tag}[\t\n\f\r />]", re.IGNORECASE) for tag in RAW_TEXT}


def html_to_text(html: str, base_url: str = "", *, markdown: bool = True) -> tuple[str, str]:
    """``(title, text)`` of an HTML document, the text as Markdown when ``markdown``.

    >>> html_to_text("<title>T</title><h1>Hi <em>there</em></h1><p>See <a href='/x'>this</a>.", "https://h/")
    ('T', '# Hi *there*\\n\\nSee [this](https://h/x).')
    """
    reducer = _Reducer(base_url, markdown)
    _scan(html.replace("\r\n", "\n").replace("\r", "\n"), reducer)
    return reducer.result()


def _scan(html: str, reducer: _Reducer) -> None:
    """Tokenize ``html`` into ``reducer``'s start/end/text calls, one pass."""
    pos, text_from, size = 0, 0, len(html)
    while pos < size:
        found = _MARKUP.search(html, pos)  # any other "<" is text
        if found is None:
            break
        lt = found.start()
        if found.group()[-1].isalpha():
            match = _TAG.match(html, lt)
            if match is None:  # the end of the input inside a tag: the rest is the tag's
                size = lt
                break
            if text_from < lt:
                reducer.text(_unescape(html[text_from:lt]))
            pos = text_from = match.end()
            closing, tag, rest = match.group(1), match.group(2).lower(), match.group(3)
            if closing:
                reducer.end(tag)
                continue
            attrs, self_closing = _attributes(rest, tag)
            reducer.start(tag, attrs)
            if self_closing:
                reducer.end(tag)
            elif tag in RAW_TEXT:
                raw_end = _RAW_END[tag].search(html, pos)
                stop = raw_end.start() if raw_end else size
                if stop > pos:
                    reducer.text(html[pos:stop] if tag not in ("title", "textarea") else _unescape(html[pos:stop]))
                pos = text_from = stop
        else:  # comment, doctype, CDATA, processing instruction, bogus end tag
            closer = "-->" if html.startswith("<!--", lt) else ">"
            close = html.find(closer, lt + 2)
            if close < 0:  # unterminated: swallows the rest
                size = lt
                break
            if text_from < lt:
                reducer.text(_unescape(html[text_from:lt]))
            pos = text_from = close + len(closer)
    if text_from < size:
        reducer.text(_unescape(html[text_from:size]))


def _attributes(rest: str, tag: str) -> tuple[dict[str, str | None], bool]:
    """The attributes of a start tag (only where one is read), and whether it ends in ``/>``."""
    self_closing = rest.endswith("/")
    if not rest or (tag not in ("a", "img") and not _HIDDEN.search(rest)):
        return {}, self_closing
    attrs: dict[str, str | None] = {}
    end = 0
    for match in _ATTR.finditer(rest):
        name, value = match.group(1).lower(), match.group(2)
        if value is not None and value[:1] in ("'", '"'):
            value = value[1:-1]
        attrs.setdefault(name, None if value is None else _unescape(value))
        end = match.end()
    # "<a href=x/>": the slash belongs to the value.
    return attrs, self_closing and end < len(rest)


def _unescape(text: str) -> str:
    if "&" not in text:
        return text
    return entities.unescape(_HUGE_CHARREF.sub("\ufffd", text))


def _join_url(base: str, href: str) -> str:
    try:
        return urljoin(base, href)
    except ValueError:  # e.g. "http://[broken" raises; keep what the page said
        return href


class _Frame:
    """An open heading, link or emphasis: its text is collected to be wrapped when it closes."""

    __slots__ = ("tag", "href", "pieces", "absorbed")

    def __init__(self, tag: str, href: str = "") -> None:
        self.tag, self.href = tag, href
        self.pieces: list[str] = []
        self.absorbed = 0  # same-mark emphasis opened inside it and not tracked


class _Reducer:
    """Writes the document as it is tokenized. Whitespace between pieces is owed, not
    written, until the next piece arrives, so a break never rewrites what came before;
    at most one heading, one link and one frame per emphasis mark are open at once,
    so wrapping a frame costs a constant times its text."""

    def __init__(self, base_url: str, markdown: bool) -> None:
        self.base_url, self.md = base_url, markdown
        self.frames = [_Frame("")]
        self.marks: dict[str, _Frame] = {}  # the open emphasis frame of each mark
        self.title: list[str] = []
        self.in_title = False
        self.skip_tag: str | None = None
        self.skip_depth = 0
        self.pre = 0
        self.lists: list[list] = []  # [tag, items so far]
        # The written text's tail, and the whitespace owed before the next piece.
        self.last = ""
        self.newlines = 0  # trailing newlines written, counted up to 3
        self.want_newlines = 0
        self.want_space = False
        self.want_cells = 0

    # tokens

    def start(self, tag: str, attrs: dict[str, str | None]) -> None:
        if self.skip_tag is not None:
            self.skip_depth += tag == self.skip_tag
            return
        if tag in SKIP or "hidden" in attrs or attrs.get("aria-hidden") == "true":
            if tag not in VOID:
                self.skip_tag, self.skip_depth = tag, 1
            return
        if tag == "title":
            self.in_title = True
        elif tag in PARAGRAPHS or tag in LINES or tag == "pre":
            self._break(2 if (tag in PARAGRAPHS and not self.lists) or tag == "pre" else 1)
        if tag in ("ul", "ol"):
            self.lists.append([tag, 0])
        elif tag == "li":
            self._list_item()
        elif tag in HEADINGS:
            self._close_open(HEADINGS)  # a heading ends the one before it, as in a browser
            self._break(2)
            self.frames.append(_Frame(tag))
        elif tag == "a":
            self._close_open(("a",))  # links do not nest
            self.frames.append(_Frame(tag, attrs.get("href") or ""))
        elif tag in EMPHASIS and not self.pre:
            outer = self.marks.get(EMPHASIS[tag])
            if outer is None:
                self.frames.append(_Frame(tag))
                self.marks[EMPHASIS[tag]] = self.frames[-1]
            else:  # "**" inside "**" adds nothing
                outer.absorbed += 1
        elif tag == "pre":
            self.pre += 1
            if self.md:
                self._write("```\n")
        elif tag == "br":
            if self.last:
                self.want_newlines = max(self.want_newlines, self.newlines) + 1
                self.want_space, self.want_cells = False, 0
        elif tag == "hr":
            self._break(2)
            if self.md:
                self._write("---")
            self._break(2)
        elif tag in ("td", "th"):
            if self.last and self.last != "\n" and not self.want_newlines:
                self.want_cells += 1
        elif tag == "img" and attrs.get("alt"):
            alt = " ".join((attrs["alt"] or "").split())
            src = attrs.get("src")
            if alt:
                self._write(f"![{alt}]({_join_url(self.base_url, src)})" if self.md and src else alt)

    def end(self, tag: str) -> None:
        if self.skip_tag is not None:
            if tag == self.skip_tag:
                self.skip_depth -= 1
                if self.skip_depth == 0:
                    self.skip_tag = None
            return
        if tag == "title":
            self.in_title = False
        elif tag in ("ul", "ol"):
            if self.lists and self.lists[-1][0] == tag:
                self.lists.pop()
            self._break(2 if not self.lists else 1)
        elif tag == "pre" and self.pre:
            self.pre -= 1
            if self.md:
                self._break(1)
                self._write("```")
            self._break(2)
        elif tag in PARAGRAPHS or tag in LINES:
            self._break(2 if tag in PARAGRAPHS and not self.lists else 1)
        elif tag in HEADINGS:
            self._close_open(HEADINGS)
        elif tag in EMPHASIS:
            frame = self.marks.get(EMPHASIS[tag])
            if frame is not None and frame.absorbed:
                frame.absorbed -= 1
            elif frame is not None and frame.tag == tag:
                self._close_open((tag,))
        elif tag == "a":
            self._close_open(("a",))

    def text(self, data: str) -> None:
        if self.skip_tag is not None:
            return
        if self.in_title:
            self.title.append(data)
        elif self.pre:
            self._write(data)
        else:
            words = " ".join(data.split())
            if data[:1].isspace():
                self.want_space = True
            if words:
                self._write(words)
                self.want_space = data[-1].isspace()

    def result(self) -> tuple[str, str]:
        while len(self.frames) > 1:
            self._close(self.frames.pop())
        lines = "".join(self.frames[0].pieces).split("\n")
        text = re.sub(r"\n{3,}", "\n\n", "\n".join(line.rstrip(" \t") for line in lines))
        return " ".join("".join(self.title).split()), text.strip()

    # writing

    def _write(self, piece: str) -> None:
        """Append ``piece`` after the whitespace owed, which goes before any frame not yet written to."""
        if self.last:
            owed = ""
            if self.want_newlines > self.newlines:
                owed = "\n" * (self.want_newlines - self.newlines)
            elif self.want_cells:
                owed = " |" * self.want_cells + " "
            elif self.want_space and self.last not in " \n":
                owed = " "
            if owed:
                at = len(self.frames) - 1
                while at > 0 and not self.frames[at].pieces:
                    at -= 1
                self.frames[at].pieces.append(owed)
                self._tail(owed)
        self.want_newlines, self.want_space, self.want_cells = 0, False, 0
        self.frames[-1].pieces.append(piece)
        self._tail(piece)

    def _tail(self, piece: str) -> None:
        end = piece[-3:]
        trailing = len(end) - len(end.rstrip("\n"))
        self.newlines = min(3, self.newlines + trailing) if trailing == len(piece) else trailing
        self.last = piece[-1]

    def _break(self, lines: int) -> None:
        """End the current line, leaving ``lines`` newlines (1: new line, 2: new paragraph)."""
        if self.last:
            self.want_newlines = max(self.want_newlines, lines)
            self.want_space, self.want_cells = False, 0

    def _list_item(self) -> None:
        self._break(1)
        if not self.lists:
            self._write("- ")
            return
        self.lists[-1][1] += 1
        kind, number = self.lists[-1]
        marker = f"{number}. " if kind == "ol" else "- "
        self._write("  " * min(len(self.lists) - 1, MAX_INDENT) + marker)

    # frames

    def _close_open(self, tags) -> None:
        """Close the innermost open frame whose tag is in ``tags``, and every frame inside it."""
        for at in range(len(self.frames) - 1, 0, -1):
            if self.frames[at].tag in tags:
                while len(self.frames) > at:
                    self._close(self.frames.pop())
                return

    def _close(self, frame: _Frame) -> None:
        inner = "".join(frame.pieces)
        text = " ".join(inner.split())
        out = inner
        if frame.tag in HEADINGS:
            out = ("#" * HEADINGS[frame.tag] + " " if self.md and text else "") + text
        elif frame.tag == "a":
            href = frame.href
            if self.md and text and href and not href.startswith(("#", "javascript:", "data:")):
                out = f"[{text}]({_join_url(self.base_url, href)})"
        else:
            mark = EMPHASIS[frame.tag]
            del self.marks[mark]
            if self.md and text:
                out = f"{mark}{text}{mark}"
        if out == inner:  # left as written: the tail is unchanged
            self.frames[-1].pieces.extend(frame.pieces)
        elif out:
            self.frames[-1].pieces.append(out)
            self._tail(out)
        elif inner:  # only whitespace was written inside, and it is gone
            before = next((f.pieces[-1] for f in reversed(self.frames) if f.pieces), "")
            self.last, self.newlines = "", 0
            if before:
                self._tail(before)
        if frame.tag in HEADINGS:
            self._break(2)
