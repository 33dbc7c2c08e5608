"""Payload schemas: what a cast must carry before any flow starts."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from keramos.framework.errors import PayloadError

_MISSING = object()


@dataclasses.dataclass(frozen=True)
class Field:
    """One payload field.

    ``type`` is checked with ``isinstance`` (``bool`` is never accepted for ``int``, ``int`` is
    accepted for ``float``). ``pattern`` (a regular expression the whole string must match) and
    ``choices`` narrow it further. A field with a ``default`` is optional.
    """

    type: type | tuple[type, ...]
    default: Any = _MISSING
    help: str = ""
    pattern: str | None = None
    choices: tuple[Any, ...] | None = None

    @property
    def required(self) -> bool:
        """Whether a cast must carry this field."""
        return self.default is _MISSING

    def check(self, name: str, value: Any) -> None:
        """Raise :class:`PayloadError` naming ``name`` unless ``value`` fits this field."""
        types = self.type if isinstance(self.type, tuple) else (self.type,)
        if float in types:
            types = (*types, int)
        if isinstance(value, bool) and bool not in types:
            ok = False
        else:
            ok = isinstance(value, types)
        if not ok:
            wanted = " or ".join(t.__name__ for t in types)
            raise PayloadError(f"field {name!r} must be {wanted}, not {type(value).__name__}")
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            raise PayloadError(f"field {name!r} must match {self.pattern!r}, got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise PayloadError(f"field {name!r} must be one of {list(self.choices)}, got {value!r}")


def validate(schema: Mapping[str, Field], payload: Any) -> dict[str, Any]:
    """Return ``payload`` checked against ``schema``, defaults filled in.

    Raises :class:`PayloadError` listing what is wrong: a non-object payload, unknown fields,
    missing fields, or the first mistyped field.
    """
    if not isinstance(payload, Mapping):
        raise PayloadError(f"payload must be a JSON object, not {type(payload).__name__}")
    unknown = sorted(set(payload) - set(schema))
    if unknown:
        raise PayloadError(f"unknown field(s): {', '.join(unknown)}")
    missing = sorted(name for name, field in schema.items() if field.required and name not in payload)
    if missing:
        raise PayloadError(f"missing field(s): {', '.join(missing)}")
    checked: dict[str, Any] = {}
    for name, field in schema.items():
        if name in payload:
            field.check(name, payload[name])
            checked[name] = payload[name]
        else:
            checked[name] = field.default
    return checked


UUID_PATTERN = r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"
#: Identifiers that end up in file names and certificate subjects: no slashes, no dots first.
IDENTIFIER_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"
