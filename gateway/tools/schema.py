"""A tool's parameter schema, made safe to offer and to check arguments against.

    prepared = prepare(tool.parameters)     # once, when the tool registers
    prepared.schema                         # what the model is offered: no $ref left
    prepared.problems                       # why parts were loosened, for one warning
    prepared.check({"city": "Oslo"})        # "" if the arguments fit, else what is wrong

Sources hand over whatever schema they like. Local ``#/...`` references are
inlined; a reference back into itself (a recursive schema), one that points at
nothing, one to another document, or one past the size budget is *cut*: its
subschema keeps its other keywords and loses the reference, so it accepts more,
never less (a recursive type is offered one level deep). Nothing is ever fetched, and a schema that is not an object, not
valid, too big or not JSON is replaced by a permissive one: a source's broken
schema must not block its tool.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import orjson
from jsonschema import Draft3Validator, Draft4Validator, Draft6Validator, Draft7Validator, Draft202012Validator, validators
from referencing import Registry

MAX_NODES = 20_000  # values in a schema, before and after inlining
MAX_DEPTH = 64  # nesting of objects and arrays; deeper parts are cut to {}

# Values that are data, not subschemas: a "$ref" in them is not a reference.
_DATA = frozenset({"enum", "const", "default", "examples", "example"})
# Keywords that check nothing: next to a $ref they are merged into its target.
_ANNOTATIONS = frozenset(
    {"title", "description", "default", "examples", "deprecated", "readOnly", "writeOnly", "$comment", "$schema", "$id"}
)
_DYNAMIC = ("$dynamicRef", "$recursiveRef")
# Keywords whose value maps names to subschemas.
_NAMED = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas", "dependencies"})
# Drafts before 2019-09 ignore the keywords beside a $ref.
_REF_OVERRIDES = (Draft3Validator, Draft4Validator, Draft6Validator, Draft7Validator)


@dataclass(frozen=True, slots=True)
class Prepared:
    schema: dict[str, Any]
    validator: Any  # a jsonschema validator, or None: nothing to check
    problems: tuple[str, ...] = ()

    def check(self, arguments: Any) -> str:
        """What is wrong with ``arguments`` (the first error, with its path), or ``""``."""
        if self.validator is None:
            return ""
        try:
            error = next(iter(self.validator.iter_errors(arguments)), None)
        except Exception as exc:  # e.g. RecursionError comparing deeply nested values
            return f"they could not be checked ({type(exc).__name__}); send simpler arguments"
        if error is None:
            return ""
        where = "/".join(str(p) for p in error.absolute_path)
        return f"{where + ': ' if where else ''}{error.message}"


def prepare(parameters: Any) -> Prepared:
    """The offered schema and validator for one tool's ``parameters``; never raises."""
    if not isinstance(parameters, Mapping):
        return permissive("the schema is not a JSON object")
    if _too_big(parameters):
        return permissive(f"the schema has more than {MAX_NODES} values")
    problems: list[str] = []
    try:
        cls = validators.validator_for(parameters, default=Draft202012Validator)
        inliner = _Inliner(parameters, merge_siblings=cls not in _REF_OVERRIDES)
        try:
            schema = inliner(parameters, (), 0)
        finally:
            problems += inliner.problems
        if not isinstance(schema, dict):
            raise TypeError("its $ref names a boolean schema")
        orjson.dumps(schema)  # what the upstream will be sent must serialise
        cls.check_schema(schema)
        # No retrieval is possible: an unknown reference fails instead of fetching.
        validator = cls(schema, registry=Registry())
    except Exception as exc:
        detail = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        return permissive(*problems, f"the schema is not valid ({str(detail)[:200]})")
    return Prepared(schema, validator, tuple(problems))


def permissive(*problems: str) -> Prepared:
    """A schema taking any object, offered in place of one that cannot be used."""
    return Prepared({"type": "object", "properties": {}}, None, (*problems[:-1], f"{problems[-1]}; any arguments are accepted"))


def _too_big(node: Any) -> bool:
    # Iterative and capped, so a self-containing Python object ends too.
    stack, seen = [node], 0
    while stack:
        item = stack.pop()
        seen += 1
        if seen > MAX_NODES:
            return True
        if isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return False


class _Inliner:
    """A copy of a schema with local references inlined, within the budget."""

    def __init__(self, root: Mapping[str, Any], *, merge_siblings: bool) -> None:
        self.root = root
        self.merge_siblings = merge_siblings
        self.budget = MAX_NODES
        self.problems: dict[str, None] = {}  # ordered, each said once

    def __call__(self, node: Any, path: tuple[str, ...], depth: int, names: bool = False) -> Any:
        """``node`` copied; ``names``: its keys are property names, not keywords."""
        self.budget -= 1
        if not isinstance(node, (Mapping, list, tuple)):
            return node
        if depth >= MAX_DEPTH or len(path) >= MAX_DEPTH:
            self.problems[f"parts nested deeper than {MAX_DEPTH} levels are not checked"] = None
            return {}
        if not isinstance(node, Mapping):
            return [self(item, path, depth + 1) for item in node]
        if names:
            return {key: self(value, path, depth + 1) for key, value in node.items()}
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in _DATA:
                out[key] = value
            elif key in _DYNAMIC:
                self.problems[f"{key} is not supported; that part is not checked"] = None
            elif key == "$ref" and isinstance(value, str):
                continue
            elif not (depth == 0 and key in ("$defs", "definitions")):  # inlined where used
                out[key] = self(value, path, depth + 1, key in _NAMED)
        ref = node.get("$ref")
        if not isinstance(ref, str):
            return out
        target = self._resolve(ref, path)
        if target is _CUT:
            return out
        inlined = self(target, (*path, ref), depth)
        if not out:
            return inlined
        if not isinstance(inlined, dict):  # a boolean schema
            return {**out, "allOf": [*out.get("allOf", []), inlined]} if self.merge_siblings else inlined
        if set(out) <= _ANNOTATIONS:
            return {**inlined, **out}
        if not self.merge_siblings:
            return {**inlined, **{k: v for k, v in out.items() if k in _ANNOTATIONS}}
        return {**out, "allOf": [*out.get("allOf", []), inlined]}

    def _resolve(self, ref: str, path: tuple[str, ...]) -> Any:
        if not ref.startswith("#"):
            self.problems[f"$ref {ref[:100]!r} names another document, which is never fetched; that part is not checked"] = None
            return _CUT
        # Recursion is cut rather than kept as a $ref many hosts reject: the model
        # sees one level of a recursive type, and deeper levels accept anything.
        if ref in path:
            return _CUT
        if self.budget <= 0:
            self.problems[f"$refs expand past {MAX_NODES} values; the rest are not checked"] = None
            return _CUT
        node: Any = self.root
        pointer = unquote(ref[1:])
        if pointer and not pointer.startswith("/"):
            self.problems[f"$ref {ref[:100]!r} (an anchor) is not supported; that part is not checked"] = None
            return _CUT
        for part in pointer.split("/")[1:]:
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(node, Mapping) and part in node:
                node = node[part]
            elif isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                self.problems[f"$ref {ref[:100]!r} points at nothing; that part is not checked"] = None
                return _CUT
        return node


_CUT = object()
