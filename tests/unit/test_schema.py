"""Payload validation: what a cast must carry before any flow starts."""

import pytest

from keramos.framework.errors import PayloadError
from keramos.framework.schema import IDENTIFIER_PATTERN, Field, validate

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
