"""A small renderer for the Go-template subset deploy/helm/toolgate uses, for machines
without a `helm` binary (none is packaged on PyPI, npm or Debian).

It knows `define`/`include`, `if`/`else`/`end`, whitespace trimming, pipelines, and the
functions the chart calls; anything else raises, so a template that outgrows it fails the
test instead of rendering wrong. Where `helm` is installed, the tests run `helm lint` and
`helm template` as well.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shlex
from pathlib import Path
from typing import Any

import yaml

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)


def _tokens(text: str) -> list[tuple[str, str]]:
    """("text", s) and ("action", s) pieces, with the trim markers applied."""
    out: list[tuple[str, str]] = []
    pos = 0
    for m in _ACTION.finditer(text):
        literal = text[pos : m.start()]
        if m.group(1):
            literal = literal.rstrip()
        out.append(("text", literal))
        out.append(("action", m.group(2)))
        pos = m.end()
        if m.group(3):
            rest = text[pos:]
            pos += len(rest) - len(rest.lstrip())
    out.append(("text", text[pos:]))
    return out


def _parse(tokens: list[tuple[str, str]], i: int, defines: dict[str, list]) -> tuple[list, int, str]:
    """Nodes up to an `else`/`end` (returned as the stopper) or the end."""
    nodes: list = []
    while i < len(tokens):
        kind, value = tokens[i]
        i += 1
        if kind == "text":
            nodes.append(("text", value))
        elif value.startswith("/*"):
            continue
        elif value.startswith("define "):
            body, i, _ = _parse(tokens, i, defines)
            defines[shlex.split(value)[1]] = body
        elif value.startswith("if "):
            then, i, stop = _parse(tokens, i, defines)
            other: list = []
            if stop == "else":
                other, i, _ = _parse(tokens, i, defines)
            nodes.append(("if", value[3:], then, other))
        elif value in ("else", "end"):
            return nodes, i, value
        else:
            nodes.append(("expr", value))
    return nodes, i, ""


def _split_args(expr: str) -> list[str]:
    """Terms of one command: words, quoted strings, parenthesised sub-pipelines."""
    out, depth, current, quoted = [], 0, "", False
    for ch in expr:
        if ch == '"' and depth == 0:
            quoted = not quoted
        if ch == "(" and not quoted:
            depth += 1
        elif ch == ")" and not quoted:
            depth -= 1
        if ch.isspace() and depth == 0 and not quoted:
            if current:
                out.append(current)
            current = ""
        else:
            current += ch
    if current:
        out.append(current)
    return out


def _yaml(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=False, sort_keys=True).rstrip("\n")


class Renderer:
    def __init__(self, chart: Path, values: dict[str, Any] | None = None, release: str = "release") -> None:
        self.chart = chart
        meta = yaml.safe_load((chart / "Chart.yaml").read_text())
        defaults = yaml.safe_load((chart / "values.yaml").read_text())
        self.root = {
            "Values": _merge(defaults, values or {}),
            "Chart": {"Name": meta["name"], "Version": meta["version"], "AppVersion": meta.get("appVersion", "")},
            "Release": {"Name": release, "Namespace": "default", "Service": "Helm"},
        }
        self.defines: dict[str, list] = {}
        for helper in sorted((chart / "templates").glob("_*.tpl")):
            _parse(_tokens(helper.read_text()), 0, self.defines)

    def render(self, name: str) -> str:
        nodes, _, _ = _parse(_tokens((self.chart / "templates" / name).read_text()), 0, self.defines)
        return self._nodes(nodes, self.root)

    def _nodes(self, nodes: list, dot: Any) -> str:
        out = []
        for node in nodes:
            if node[0] == "text":
                out.append(node[1])
            elif node[0] == "if":
                out.append(self._nodes(node[2] if _truthy(self._pipeline(node[1], dot)) else node[3], dot))
            else:
                value = self._pipeline(node[1], dot)
                out.append("" if value is None else str(value))
        return "".join(out)

    def _pipeline(self, expr: str, dot: Any) -> Any:
        value: Any = _NOTHING
        for command in (part.strip() for part in _pipes(expr)):
            args = _split_args(command)
            if value is not _NOTHING:
                args.append(_Piped(value))
            value = self._command(args, dot)
        return value

    def _command(self, args: list[Any], dot: Any) -> Any:
        head, rest = args[0], [self._term(a, dot) for a in args[1:]]
        if not isinstance(head, str) or not head[0].isalpha():
            assert not rest, f"unsupported command {args!r}"
            return self._term(head, dot)
        functions = {
            "include": lambda name, ctx: self._nodes(self.defines[name], ctx),
            "printf": lambda fmt, *a: re.sub(r"%[sdv]", "{}", fmt).format(*a),
            "trunc": lambda n, s: s[:n],
            "trimSuffix": lambda suffix, s: s.removesuffix(suffix),
            "quote": lambda s: json.dumps("" if s is None else str(s)),
            "nindent": lambda n, s: "\n" + "\n".join(" " * n + line if line else line for line in str(s).split("\n")),
            "indent": lambda n, s: "\n".join(" " * n + line for line in str(s).split("\n")),
            "toYaml": _yaml,
            "b64enc": lambda s: base64.b64encode(str(s).encode()).decode(),
            "sha256sum": lambda s: hashlib.sha256(str(s).encode()).hexdigest(),
            "default": lambda fallback, v=None: v if _truthy(v) else fallback,
            "and": lambda *a: next((x for x in a if not _truthy(x)), a[-1]),
            "not": lambda a: not _truthy(a),
        }
        if head not in functions:
            raise NotImplementedError(f"template function {head!r} is not supported by tests/helm_render.py")
        return functions[head](*rest)

    def _term(self, term: Any, dot: Any) -> Any:
        if isinstance(term, _Piped):
            return term.value
        if term.startswith('"'):
            return json.loads(term)
        if term.startswith("("):
            return self._pipeline(term[1:-1], dot)
        if term.isdigit():
            return int(term)
        if term == ".":
            return dot
        if term.startswith("."):
            value = dot
            for part in term[1:].split("."):
                value = value.get(part) if isinstance(value, dict) else None
            return value
        raise NotImplementedError(f"template term {term!r} is not supported by tests/helm_render.py")


class _Piped:
    def __init__(self, value: Any) -> None:
        self.value = value


_NOTHING = object()


def _pipes(expr: str) -> list[str]:
    parts, depth, current, quoted = [], 0, "", False
    for ch in expr:
        if ch == '"':
            quoted = not quoted
        depth += (ch == "(") - (ch == ")") if not quoted else 0
        if ch == "|" and depth == 0 and not quoted:
            parts.append(current)
            current = ""
        else:
            current += ch
    return [*parts, current]


def _truthy(value: Any) -> bool:
    return bool(value) and value is not _NOTHING


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def render_chart(chart: Path, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every manifest the chart renders with `values` over its defaults, parsed."""
    renderer = Renderer(chart, values)
    docs: list[dict[str, Any]] = []
    for template in sorted((chart / "templates").glob("*.yaml")):
        text = renderer.render(template.name)
        docs += [doc for doc in yaml.safe_load_all(text) if doc]
    renderer.render("NOTES.txt")
    return docs
