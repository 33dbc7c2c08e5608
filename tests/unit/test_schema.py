"""Payload validation: what a cast must carry before any flow starts."""

import pytest

from keramos.framework.errors import PayloadError
from keramos.framework.schema import IDENTIFIER_PATTERN, Field, ip_address, validate

SCHEMA = {
    "name": Field(str, pattern=IDENTIFIER_PATTERN),
    "count": Field(int, default=1),
    "ratio": Field(float, default=0.5),
    "mode": Field(str, default="a", choices=("a", "b")),
}


def test_defaults_are_filled_in_and_given_values_kept():
    assert validate(SCHEMA, {"name": "amp-1", "ratio": 2}) == {
        "name": "amp-1",
        "count": 1,
        "ratio": 2,
        "mode": "a",
    }


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (["name"], "payload must be a JSON object, not list"),
        ({}, "missing field(s): name"),
        ({"name": "a", "extra": 1, "zz": 2}, "unknown field(s): extra, zz"),
        ({"name": 5}, "field 'name' must be str, not int"),
        ({"name": "a", "count": True}, "field 'count' must be int, not bool"),
        ({"name": "../etc"}, "field 'name' must match"),
        ({"name": "a", "mode": "c"}, "field 'mode' must be one of ['a', 'b'], got 'c'"),
    ],
)
def test_bad_payloads_are_refused_naming_the_problem(payload, message):
    with pytest.raises(PayloadError) as raised:
        validate(SCHEMA, payload)
    assert message in str(raised.value)


POINT = Field(dict, fields={"x": Field(int, minimum=0, maximum=9), "tag": Field(str, default="t")})
NESTED = {
    "shape": Field(dict, fields={"name": Field(str, max_length=8), "points": Field(list, items=POINT, min_items=1)}),
}


def test_nested_objects_and_lists_are_checked_and_their_defaults_filled_in():
    assert validate(NESTED, {"shape": {"name": "sq", "points": [{"x": 1}, {"x": 2, "tag": "u"}]}}) == {
        "shape": {"name": "sq", "points": [{"x": 1, "tag": "t"}, {"x": 2, "tag": "u"}]}
    }


def test_every_problem_of_a_nested_payload_is_listed_with_its_path():
    with pytest.raises(PayloadError) as raised:
        validate(NESTED, {"shape": {"name": "n" * 9, "points": [{"x": 10}, {"y": 1}, "p"], "z": 0}})
    assert str(raised.value) == "; ".join(
        [
            "field 'shape': unknown field(s): z",
            "field 'shape.name' must be at most 8 characters, got 'nnnnnnnnn'",
            "field 'shape.points[0].x' must be from 0 to 9, got 10",
            "field 'shape.points[1]': unknown field(s): y",
            "field 'shape.points[1]': missing field(s): x",
            "field 'shape.points[2]' must be dict, not str",
        ]
    )
    with pytest.raises(PayloadError, match="must hold at least 1 item"):
        validate(NESTED, {"shape": {"name": "n", "points": []}})


def test_messages_quote_a_bounded_escaped_excerpt_of_a_bad_value():
    with pytest.raises(PayloadError) as raised:
        validate(SCHEMA, {"name": "\ud800\x00" + "x" * 10_000_000})
    message = str(raised.value)
    assert len(message) < 200
    assert "'\\ud800\\x00xxx" in message and message.endswith("…(10000004 bytes)")
    message.encode("utf-8")


def test_a_flood_of_unknown_fields_is_counted_not_listed():
    with pytest.raises(PayloadError) as raised:
        validate(SCHEMA, {"name": "a", **{f"f{i}": i for i in range(100_000)}, "\ud800": 1})
    assert str(raised.value).endswith("… (100001 in all)")
    str(raised.value).encode("utf-8")


def test_a_payload_nested_too_deep_is_refused_not_walked():
    deep = Field(dict, default=None)
    for _ in range(20):
        deep = Field(dict, fields={"in": deep}, default=None)
    value: dict = {}
    for _ in range(20):
        value = {"in": value}
    with pytest.raises(PayloadError, match="nests deeper than 16 levels"):
        validate({"in": deep}, value)


def test_the_ip_address_constraint():
    field = Field(str, constraint=ip_address)
    field.check("a", "fd00::1")
    with pytest.raises(PayloadError, match="field 'a' must be an IP address, got '1.2.3'"):
        field.check("a", "1.2.3")
