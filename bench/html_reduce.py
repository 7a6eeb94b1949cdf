"""How fast fetch_url turns HTML into text, and whether it stays linear on hostile pages.

    .venv/bin/python -m bench.html_reduce            # ~1 min
    .venv/bin/python -m bench.html_reduce --quick    # fewer hostile inputs, one repeat

Every figure is a ratio of CPU times measured in the same run, so two machines
compare. Candidates: toolgate's ``html_to_text`` (tokenizing and writing the
text), ``html.parser`` tokenizing with no handlers (no output at all: the
stdlib's floor), and selectolax's lexbor HTML5 parser (building the tree only)
when it is installed (``pip install selectolax``).

- ``page``: seconds on a realistic page, over ``html.parser``'s on the same page.
- ``x2`` per hostile input: time on the input doubled over time on it as it is;
  about 2 is linear, 4 quadratic. A run past ``--cap`` seconds is not doubled
  (printed as ``>cap``): at the 2 MiB body cap such an input would take minutes.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from html.parser import HTMLParser

from gateway.tools.builtin.html import html_to_text

HOSTILE: dict[str, Callable[[int], str]] = {
    "<b>x": lambda n: "<b>x" * (n // 4),
    "<a href=x>": lambda n: "<a href=x>" * (n // 10),
    "<div> nested": lambda n: "<div>" * (n // 5),
    "<ul><li> nested": lambda n: "<ul><li>x" * (n // 9),
    "<td>": lambda n: "<td>x" * (n // 5),
    "<b a=N> distinct": lambda n: "".join(f"<b a={i}>" for i in range(n // 10)),
    "<a (unclosed)": lambda n: "<a" * (n // 2),
    "</ (bogus)": lambda n: "</" * (n // 2),
    "<!-- (unclosed)": lambda n: "<!--" * (n // 4),
    "attribute value": lambda n: "<a href='" + "y" * n + "'>x</a>",
    "attributes": lambda n: "<img " + "a=1 " * (n // 4) + "alt=x>",
}


def page(size: int) -> str:
    """A plausible article page of about ``size`` characters."""
    section = (
        "<section><h2>Section {i}</h2><p>Some <em>text</em> with <a href='/doc/{i}'>a link</a> and "
        "<strong>bold words</strong>, &amp; an entity.<br>Another line.</p>"
        "<ul><li>one</li><li>two <code>x = {i}</code></li></ul>"
        "<table><tr><th>A</th><th>B</th></tr><tr><td>{i}</td><td>2</td></tr></table>"
        "<pre>def f():\n    return {i}</pre><script>var a = {i} < 2;</script>"
        "<div class='x'><img src='/i/{i}.png' alt='picture {i}'></div></section>\n"
    )
    head = "<!doctype html><html><head><title>Bench</title><style>p {{}}</style></head><body><nav><a href='/'>Home</a></nav>"
    parts, i = [head], 0
    while sum(map(len, parts)) < size:
        parts.append(section.format(i=i))
        i += 1
    return "".join(parts) + "</body></html>"


def _stdlib(html: str) -> None:
    parser = HTMLParser(convert_charrefs=True)
    parser.feed(html)
    parser.close()


def _candidates() -> dict[str, Callable[[str], object]]:
    found: dict[str, Callable[[str], object]] = {"toolgate": lambda h: html_to_text(h, "https://h/"), "html.parser": _stdlib}
    try:
        from selectolax.lexbor import LexborHTMLParser
    except ImportError:
        print("(selectolax not installed: its column is left out)")
    else:
        found["lexbor"] = LexborHTMLParser
    return found


def _cpu(func: Callable[[str], object], html: str, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        func(html)
        best = min(best, time.process_time() - start)
    return max(best, 1e-6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--size", type=int, default=32 << 10, help="hostile input size, characters")
    parser.add_argument("--cap", type=float, default=2.0, help="seconds past which an input is not doubled")
    args = parser.parse_args()
    repeats = 1 if args.quick else 3
    candidates = _candidates()

    sample = page(256 << 10)
    for func in candidates.values():  # warm up, so the first figure is not the odd one
        func(sample)
    floor = _cpu(_stdlib, sample, repeats)
    print(f"page ({len(sample) >> 10} KiB), CPU time over html.parser's:")
    for name, func in candidates.items():
        print(f"  {name:12} {_cpu(func, sample, repeats) / floor:6.2f}")

    hostile = dict(list(HOSTILE.items())[:4]) if args.quick else HOSTILE
    print(f"\nhostile inputs, {args.size >> 10} KiB: x2 = CPU time doubled / as is (2 linear, 4 quadratic)")
    print(f"  {'input':20}" + "".join(f"{name:>14}" for name in candidates))
    for label, make in hostile.items():
        cells = []
        for func in candidates.values():
            once = _cpu(func, make(args.size), repeats)
            cells.append(f">{args.cap:g}s" if once > args.cap else f"{_cpu(func, make(2 * args.size), repeats) / once:.2f}")
        print(f"  {label:20}" + "".join(f"{cell:>14}" for cell in cells))

    print("\ntoolgate at the body cap: x2 from 1 MiB to 2 MiB, and 2 MiB's CPU time over the page's per byte")
    per_byte = _cpu(candidates["toolgate"], sample, repeats) / len(sample)
    for label, make in hostile.items():
        once = _cpu(candidates["toolgate"], make(1 << 20), 1)
        twice = _cpu(candidates["toolgate"], make(2 << 20), 1)
        print(f"  {label:20} x2 {twice / once:5.2f}   per byte {twice / (2 << 20) / per_byte:5.2f}")


if __name__ == "__main__":
    main()
