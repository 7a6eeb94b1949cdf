"""Tool schemas: local references inlined, nothing fetched, broken schemas made permissive."""

from __future__ import annotations

import socket

import pytest

from gateway.tools import schema
from gateway.tools.schema import prepare

PERMISSIVE = {"type": "object", "properties": {}}


def test_a_plain_schema_is_offered_as_it_is():
    parameters = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    prepared = prepare(parameters)
    assert prepared.schema == parameters and prepared.problems == ()
    assert prepared.check({"city": "Oslo"}) == ""
    assert prepared.check({}) == "'city' is a required property"
    assert prepared.check({"city": 3}) == "city: 3 is not of type 'string'"


def test_local_refs_are_inlined_and_definitions_dropped():
    prepared = prepare(
        {
            "type": "object",
            "properties": {
                "where": {"$ref": "#/$defs/Place", "description": "Where to look."},
                "when": {"$ref": "#/definitions/When"},
                "odd~/name": {"$ref": "#/$defs/a~1b~0c"},
            },
            "$defs": {"Place": {"type": "string", "description": "A place."}, "a/b~c": {"type": "integer"}},
            "definitions": {"When": {"enum": ["now", "later"]}},
        }
    )
    assert prepared.schema == {
        "type": "object",
        "properties": {
            "where": {"type": "string", "description": "Where to look."},  # the sibling annotation wins
            "when": {"enum": ["now", "later"]},
            "odd~/name": {"type": "integer"},
        },
    }
    assert prepared.problems == ()
    assert prepared.check({"when": "soon"}).startswith("when: 'soon' is not one of")


def test_a_root_ref_is_inlined():
    prepared = prepare({"$ref": "#/$defs/Args", "$defs": {"Args": {"type": "object", "required": ["q"]}}})
    assert prepared.schema == {"type": "object", "required": ["q"]}
    assert prepared.check({}) == "'q' is a required property"


def test_constraints_beside_a_ref_still_apply():
    prepared = prepare(
        {"type": "object", "properties": {"n": {"$ref": "#/$defs/Int", "minimum": 5}}, "$defs": {"Int": {"type": "integer"}}}
    )
    assert prepared.schema["properties"]["n"] == {"minimum": 5, "allOf": [{"type": "integer"}]}
    assert prepared.check({"n": 7}) == ""
    assert "is less than the minimum" in prepared.check({"n": 3})
    assert "is not of type 'integer'" in prepared.check({"n": "x"})


def test_draft_7_ignores_constraints_beside_a_ref():
    prepared = prepare(
        {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "properties": {"n": {"$ref": "#/definitions/Int", "minimum": 5, "title": "N"}},
            "definitions": {"Int": {"type": "integer"}},
        }
    )
    assert prepared.schema["properties"]["n"] == {"type": "integer", "title": "N"}
    assert prepared.check({"n": 3}) == ""


def test_a_recursive_schema_is_offered_one_level_deep():
    node = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}}},
    }
    prepared = prepare({"type": "object", "properties": {"tree": {"$ref": "#/$defs/Node"}}, "$defs": {"Node": node}})
    inner = prepared.schema["properties"]["tree"]
    assert inner["properties"]["children"] == {"type": "array", "items": {}}
    assert "$ref" not in str(prepared.schema)
    assert prepared.problems == ()  # recursion is ordinary: no warning
    assert prepared.check({"tree": {"name": "a", "children": [{"name": 1}]}}) == ""  # past the cut: anything
    assert "is not of type 'string'" in prepared.check({"tree": {"name": 1}})


def test_a_self_referencing_root_terminates():
    prepared = prepare({"type": "object", "properties": {"again": {"$ref": "#"}}})
    assert prepared.schema == {"type": "object", "properties": {"again": {"type": "object", "properties": {"again": {}}}}}


class Listener:
    """A TCP port that records whether anything connected."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.connected = False

    def poll(self) -> bool:
        try:
            conn, _ = self.sock.accept()
        except (TimeoutError, OSError):
            return self.connected
        conn.close()
        self.connected = True
        return True


def test_remote_refs_are_never_fetched():
    listener = Listener()
    url = f"http://127.0.0.1:{listener.port}/schema.json"
    try:
        prepared = prepare(
            {"type": "object", "properties": {"a": {"$ref": url, "description": "A thing."}, "b": {"type": "integer"}}}
        )
        assert prepared.schema == {"type": "object", "properties": {"a": {"description": "A thing."}, "b": {"type": "integer"}}}
        assert prepared.check({"a": {"anything": True}}) == ""
        assert "not of type" in prepared.check({"b": "x"})
        assert not listener.poll()
    finally:
        listener.sock.close()
    (problem,) = prepared.problems
    assert url in problem and "never fetched" in problem


@pytest.mark.parametrize(
    "ref, says",
    [("#/$defs/Missing", "points at nothing"), ("#/prefixItems/7", "points at nothing"), ("#anchor", "an anchor"),
     ("other.json#/x", "another document")],
)  # fmt: skip
def test_refs_that_cannot_be_followed_are_cut_with_a_problem(ref, says):
    prepared = prepare({"type": "object", "properties": {"a": {"$ref": ref, "type": "string"}}, "prefixItems": [{}]})
    assert prepared.schema["properties"]["a"] == {"type": "string"}
    assert prepared.check({"a": "fine"}) == ""
    assert any(says in p for p in prepared.problems)


def test_dynamic_refs_are_cut():
    prepared = prepare({"type": "object", "properties": {"a": {"$dynamicRef": "#meta", "type": "integer"}}})
    assert prepared.schema["properties"]["a"] == {"type": "integer"}
    assert "$dynamicRef is not supported" in prepared.problems[0]


def test_refs_in_data_and_property_names_are_not_references():
    parameters = {
        "type": "object",
        "properties": {
            "$ref": {"type": "string"},
            "default": {"$ref": "#/$defs/Int"},
            "mode": {"enum": [{"$ref": "#/nowhere"}], "default": {"$ref": "#/nowhere"}},
        },
        "$defs": {"Int": {"type": "integer"}},
    }
    prepared = prepare(parameters)
    properties = prepared.schema["properties"]
    assert properties["$ref"] == {"type": "string"}
    assert properties["default"] == {"type": "integer"}  # a property named "default" is a schema
    assert properties["mode"] == {"enum": [{"$ref": "#/nowhere"}], "default": {"$ref": "#/nowhere"}}
    assert prepared.problems == ()


def test_references_that_multiply_stop_at_the_budget(monkeypatch):
    monkeypatch.setattr(schema, "MAX_INLINED", 500)
    defs = {f"d{i}": {"type": "object", "properties": {"a": {"$ref": f"#/$defs/d{i + 1}"}, "b": {"$ref": f"#/$defs/d{i + 1}"}}} for i in range(30)}
    defs["d30"] = {"type": "string"}
    prepared = prepare({"type": "object", "properties": {"x": {"$ref": "#/$defs/d0"}}, "$defs": defs})
    assert any("expand past 500 values" in p for p in prepared.problems)
    assert len(str(prepared.schema)) < 100_000
    assert prepared.check({"x": {"a": {"b": {}}}}) == ""


def test_a_chain_of_references_is_cut_at_the_depth_limit():
    defs = {f"d{i}": {"$ref": f"#/$defs/d{i + 1}"} for i in range(200)}
    prepared = prepare({"type": "object", "properties": {"x": {"$ref": "#/$defs/d0"}}, "$defs": defs})
    assert prepared.schema == {"type": "object", "properties": {"x": {}}}
    assert any("deeper than" in p for p in prepared.problems)


def test_deep_nesting_makes_a_schema_permissive():
    deep: dict = {"type": "string"}
    for _ in range(40):
        deep = {"type": "object", "properties": {"a": deep}}
    prepared = prepare(deep)
    assert prepared.schema == PERMISSIVE
    assert "nested deeper than 64 levels" in prepared.problems[0]


def test_inlining_past_the_depth_limit_is_cut():
    defs = {f"d{i}": {"type": "object", "properties": {"a": {"$ref": f"#/$defs/d{i + 1}"}}} for i in range(40)}
    defs["d40"] = {"type": "string"}
    prepared = prepare({"$ref": "#/$defs/d0", "$defs": defs})
    assert any("deeper than 64 levels" in p for p in prepared.problems)
    assert prepared.check({"a": {"a": {"a": 1}}}) == "a/a/a: 1 is not of type 'object'"


@pytest.mark.parametrize(
    "parameters, says",
    [
        ([1, 2], "not a JSON object"),
        ({"type": 12}, "not valid"),
        ({"type": "object", "required": "city"}, "not valid"),
        ({"type": "object", "properties": {"a": {"type": "string", "pattern": "("}}}, "not valid"),
        ({"type": "object", "properties": {"a": {"enum": {1, 2}}}}, "not JSON"),
        ({1: {"type": "string"}}, "not JSON"),
        ({"type": "object", "properties": {"a": {"$ref": "#/$defs/T"}}, "$defs": {"T": "x"}}, "not valid"),
        ({"$ref": "#/$defs/T", "$defs": {"T": True}}, "boolean schema"),
        ({"$schema": {"not": "hashable"}}, "not valid"),
        ({"type": "object", "allOf": 3, "$ref": "#/$defs/T", "$defs": {"T": {}}}, "not valid"),
    ],
)
def test_unusable_schemas_become_permissive(parameters, says):
    prepared = prepare(parameters)
    assert prepared.schema == PERMISSIVE and prepared.validator is None
    assert says in prepared.problems[-1] and prepared.problems[-1].endswith("any arguments are accepted")
    assert prepared.check({"whatever": 1}) == ""


def test_a_self_containing_object_is_not_json():
    loop: dict = {"type": "object"}
    loop["properties"] = {"me": loop}
    prepared = prepare(loop)
    assert prepared.schema == PERMISSIVE
    assert "not JSON" in prepared.problems[0]


def test_a_schema_past_the_size_cap_is_permissive():
    prepared = prepare({"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(schema.MAX_VALUES)}})
    assert prepared.schema == PERMISSIVE
    assert f"more than {schema.MAX_VALUES} values" in prepared.problems[0]


def test_a_ref_to_something_that_is_not_a_schema_is_cut():
    prepared = prepare({"type": "object", "required": ["a"], "properties": {"a": {"$ref": "#/required"}}})
    assert prepared.schema["properties"]["a"] == {}
    assert "not a schema" in prepared.problems[0]


def test_a_schema_that_breaks_while_checking_does_not_block_the_tool(caplog):
    # "#/properties" is a map of names; inlined as a schema, its "type" is not a type.
    prepared = prepare({"type": "object", "properties": {"type": {"type": "string"}, "a": {"$ref": "#/properties"}}})
    assert prepared.check({"a": 1}) == ""
    assert "could not be checked" in caplog.text


def test_an_unknown_metaschema_falls_back_to_the_latest_draft():
    prepared = prepare({"$schema": "https://example.test/my-schema", "type": "object", "required": ["a"]})
    assert prepared.check({}) == "'a' is a required property"


def test_a_validation_that_breaks_is_reported_not_raised():
    prepared = prepare({"type": "object", "properties": {"a": {"uniqueItems": True}}})
    nested: list = []
    for _ in range(100_000):
        nested = [nested]
    assert "nested too deeply" in prepared.check({"a": [nested, nested]})


def test_the_validator_has_no_way_to_fetch():
    # The inliner leaves no reference behind; should one slip through, it fails instead of fetching.
    listener = Listener()
    try:
        validator = prepare({"type": "object"}).validator.evolve(schema={"$ref": f"http://127.0.0.1:{listener.port}/x"})
        with pytest.raises(Exception, match="Unresolvable"):
            validator.is_valid(1)
        assert not listener.poll()
    finally:
        listener.sock.close()


def test_refs_into_arrays_and_to_boolean_schemas():
    prepared = prepare(
        {
            "type": "object",
            "prefixItems": [{"type": "integer"}],
            "properties": {"n": {"$ref": "#/prefixItems/0"}, "never": {"$ref": "#/$defs/No", "title": "Never"}},
            "$defs": {"No": False},
        }
    )
    assert prepared.schema["properties"] == {"n": {"type": "integer"}, "never": {"title": "Never", "allOf": [False]}}
    assert prepared.check({"n": 1}) == ""
    assert prepared.check({"never": 1}).startswith("never: False schema")


def test_a_catastrophic_pattern_cannot_stop_the_process():
    # (a+)+$ against "aaaa…!" backtracks for minutes in Python's re; the gateway leaves patterns to the tool.
    prepared = prepare({"type": "object", "properties": {"s": {"type": "string", "pattern": "^(a+)+$"}}})
    assert prepared.schema["properties"]["s"]["pattern"] == "^(a+)+$"  # still offered to the model
    assert prepared.check({"s": "a" * 64 + "!"}) == ""
    assert "is not of type" in prepared.check({"s": 5})
