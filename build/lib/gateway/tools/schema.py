"""A tool's parameter schema, made safe to offer and to check arguments against.

    prepared = prepare(tool.parameters)     # once per definition, when the tool registers
    prepared.schema                         # what the model is offered: no $ref left
    prepared.problems                       # why parts were loosened, for one warning
    prepared.check({"city": "Oslo"})        # "" if the arguments fit, else what is wrong

Sources hand over whatever schema they like. Local ``#/...`` references are
inlined; a reference back into itself (a recursive schema), one that points at
nothing, one to another document, or one past the size budget is *cut*: its
subschema keeps its other keywords and loses the reference, so it accepts more,
never less (a recursive type is offered one level deep). Nothing is ever
fetched. A schema that is not a JSON object, not valid for its draft, or too big
is replaced by a permissive one: a source's broken schema must not block its tool.

Cost: checking a schema against its metaschema takes about 0.1 ms per value, on
the caller's thread, so the input is capped at `MAX_VALUES` and the toolbox
prepares each distinct definition once per process.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import orjson
from jsonschema import Draft3Validator, Draft4Validator, Draft6Validator, Draft7Validator, Draft202012Validator, validators
from referencing import Registry

log = logging.getLogger("toolgate.tools")

MAX_VALUES = 5_000  # in the schema as given; past it the tool is offered permissive
MAX_INLINED = 20_000  # in the schema once its references are inlined; past it they are cut
MAX_DEPTH = 64  # nesting of objects and arrays; past it a schema as given is permissive, an inlined one cut

# Values that are data, not subschemas: a "$ref" in them is not a reference.
_DATA = frozenset({"enum", "const", "default", "examples", "example"})
# Keywords whose value maps names to subschemas.
_NAMED = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas", "dependencies"})
# Keywords that check nothing: next to a $ref they are merged into its target.
_ANNOTATIONS = frozenset(
    {"title", "description", "default", "examples", "deprecated", "readOnly", "writeOnly", "$comment", "$schema", "$id"}
)
_DYNAMIC = ("$dynamicRef", "$recursiveRef")
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
        except RecursionError:  # comparing deeply nested values (enum, const, uniqueItems)
            return "they are nested too deeply to be checked; send simpler arguments"
        except Exception:  # the schema's fault (a $ref aimed at a non-schema): don't block the tool
            log.warning("arguments could not be checked against %.200r", self.schema, exc_info=True)
            return ""
        if error is None:
            return ""
        where = "/".join(str(p) for p in error.absolute_path)
        return f"{where + ': ' if where else ''}{error.message}"


def prepare(parameters: Any) -> Prepared:
    """The offered schema and validator for one tool's ``parameters``; never raises."""
    try:
        # A plain JSON copy: what the upstream can be sent, and no cycles to walk.
        document = orjson.loads(orjson.dumps(parameters))
    except (TypeError, orjson.JSONEncodeError) as exc:
        return permissive(f"the schema is not JSON ({exc})")
    if not isinstance(document, dict):
        return permissive("the schema is not a JSON object")
    values, depth = _size(document)
    if values > MAX_VALUES:
        return permissive(f"the schema has more than {MAX_VALUES} values")
    if depth > MAX_DEPTH:  # checking it against its metaschema would recurse too deep
        return permissive(f"the schema is nested deeper than {MAX_DEPTH} levels")
    try:
        cls = validators.validator_for(document, default=Draft202012Validator)
        # The schema as given, so the cost does not grow with what inlining repeats;
        # inlining a valid schema keeps it valid.
        cls.check_schema(document)
    except Exception as exc:
        detail = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        return permissive(f"the schema is not valid ({str(detail)[:200]})")
    inliner = _Inliner(document, merge_siblings=cls not in _REF_OVERRIDES)
    schema = inliner(document, (), 0)
    if not isinstance(schema, dict):
        return permissive(*inliner.problems, "the schema's $ref names a boolean schema")
    # No retrieval is possible: a reference left over fails instead of fetching. `pattern` is
    # left to the tool: Python's re holds the GIL, and one catastrophic pattern with a crafted
    # argument would stop the whole process, worker thread or not.
    checker = validators.extend(cls, {"pattern": _unchecked})
    return Prepared(schema, checker(schema, registry=Registry()), tuple(inliner.problems))


def _unchecked(validator: Any, value: Any, instance: Any, schema: Any) -> Iterator[Any]:
    return iter(())


def permissive(*problems: str) -> Prepared:
    """A schema taking any object, offered in place of one that cannot be used."""
    *before, last = problems
    return Prepared({"type": "object", "properties": {}}, None, (*before, f"{last}; any arguments are accepted"))


def _size(node: Any) -> tuple[int, int]:
    """How many values, and how deeply nested, counting stopped past the caps."""
    stack, seen, deepest = [(node, 0)], 0, 0
    while stack and seen <= MAX_VALUES and deepest <= MAX_DEPTH:
        item, depth = stack.pop()
        seen, deepest = seen + 1, max(deepest, depth)
        if isinstance(item, dict):
            stack.extend((value, depth + 1) for value in item.values())
        elif isinstance(item, list):
            stack.extend((value, depth + 1) for value in item)
    return seen, deepest


class _Inliner:
    """A copy of a JSON schema with local references inlined, within the budget."""

    def __init__(self, root: dict[str, Any], *, merge_siblings: bool) -> None:
        self.root = root
        self.merge_siblings = merge_siblings
        self.budget = MAX_INLINED
        self.problems: dict[str, None] = {}  # ordered, each said once

    def __call__(self, node: Any, path: tuple[str, ...], depth: int, names: bool = False) -> Any:
        """``node`` copied; ``names``: its keys are property names, not keywords."""
        self.budget -= 1
        if not isinstance(node, (dict, list)):
            return node
        if depth >= MAX_DEPTH or len(path) >= MAX_DEPTH:
            self.problems[f"parts nested deeper than {MAX_DEPTH} levels are not checked"] = None
            return {}
        if isinstance(node, list):
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
            self.problems[f"$refs expand past {MAX_INLINED} values; the rest are not checked"] = None
            return _CUT
        pointer = unquote(ref[1:])
        if pointer and not pointer.startswith("/"):
            self.problems[f"$ref {ref[:100]!r} (an anchor) is not supported; that part is not checked"] = None
            return _CUT
        try:
            node = follow(self.root, pointer)
        except LookupError:
            self.problems[f"$ref {ref[:100]!r} points at nothing; that part is not checked"] = None
            return _CUT
        if not isinstance(node, (dict, bool)):
            self.problems[f"$ref {ref[:100]!r} points at something that is not a schema; that part is not checked"] = None
            return _CUT
        return node


_CUT = object()


def follow(document: Any, pointer: str) -> Any:
    """The value a JSON pointer (``/a/b/0``, unescaped) names in ``document``; LookupError if none."""
    node = document
    for part in pointer.split("/")[1:] if pointer else ():
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise LookupError(pointer)
    return node
