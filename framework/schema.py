"""Payload schemas: what a cast must carry before any flow starts.

A schema maps field names to :class:`Field`. A field may hold a nested object (``fields``, a
schema of its own) or a list whose every item is checked (``items``, a field), to any depth:
everything a cast carries is checked before any task runs. Problems are reported together, each
naming its path (``lb.listeners[0].port``) and quoting at most a bounded excerpt of the bad value
(:func:`~keramos.framework.errors.excerpt`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from keramos.framework.errors import PayloadError, excerpt

_MISSING = object()

#: The most problems one error message lists; the rest are counted.
MAX_PROBLEMS = 10
#: How deep objects and lists may nest in a payload (deeper is refused, not walked).
MAX_DEPTH = 16

_PLAIN_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _name(name: Any) -> str:
    """A field name as messages show it: as is when plain, else a bounded, escaped excerpt."""
    return name if isinstance(name, str) and _PLAIN_NAME.fullmatch(name) else excerpt(name)


def _names(names: Sequence[Any]) -> str:
    shown = ", ".join(_name(name) for name in names[:MAX_PROBLEMS])
    return shown if len(names) <= MAX_PROBLEMS else f"{shown}, … ({len(names)} in all)"


def ip_address(value: Any) -> str | None:
    """A :attr:`Field.constraint`: ``None`` if ``value`` is an IPv4 or IPv6 address, else the problem."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return f"must be an IP address, got {excerpt(value)}"
    return None


@dataclasses.dataclass(frozen=True)
class Field:
    """One payload field.

    ``type`` is checked with ``isinstance`` (``bool`` is never accepted for ``int``, ``int`` is
    accepted for ``float``). ``pattern`` (a regular expression the whole string must match),
    ``choices``, ``max_length`` (of a string), ``minimum`` and ``maximum`` (of a number) narrow
    it further. A field with a ``default`` is optional.

    ``fields`` makes the value an object checked against that schema (unknown and missing fields
    refused, defaults filled in); ``items`` checks every item of a list value against that field,
    and ``min_items`` and ``max_items`` bound its length. ``constraint`` is called last with a value
    that passed everything else and returns ``None`` or what is wrong with it, worded to follow
    the field's path (``"must be an IP address, got '1.2.3'"``); it is how a field states what
    its parts must satisfy together.
    """

    type: type | tuple[type, ...]
    default: Any = _MISSING
    help: str = ""
    pattern: str | None = None
    choices: tuple[Any, ...] | None = None
    max_length: int | None = None
    minimum: int | float | None = None
    maximum: int | float | None = None
    fields: Mapping[str, Field] | None = None
    items: Field | None = None
    min_items: int | None = None
    max_items: int | None = None
    constraint: Callable[[Any], str | None] | None = None

    @property
    def required(self) -> bool:
        """Whether a cast must carry this field."""
        return self.default is _MISSING

    def _types(self) -> tuple[type, ...]:
        types = self.type if isinstance(self.type, tuple) else (self.type,)
        return (*types, int) if float in types else types

    def problems(self, path: str, value: Any, *, depth: int = 0) -> tuple[list[str], Any]:
        """What is wrong with ``value`` at ``path`` (each problem a sentence) and the value with
        the defaults of nested objects filled in."""
        types = self._types()
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            wanted = " or ".join(t.__name__ for t in types)
            return [f"field {path!r} must be {wanted}, not {type(value).__name__}"], value
        if value is None:
            return [], value
        found: list[str] = []
        if isinstance(value, str):
            if self.max_length is not None and len(value) > self.max_length:
                found.append(
                    f"field {path!r} must be at most {self.max_length} characters, got {excerpt(value)}"
                )
            elif self.pattern is not None and not re.fullmatch(self.pattern, value):
                found.append(f"field {path!r} must match {self.pattern!r}, got {excerpt(value)}")
        if self.choices is not None and value not in self.choices:
            found.append(f"field {path!r} must be one of {list(self.choices)}, got {excerpt(value)}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            low, high = self.minimum, self.maximum
            if (low is not None and value < low) or (high is not None and value > high):
                bounds = f"from {low} to {high}" if low is not None and high is not None else (
                    f"at least {low}" if low is not None else f"at most {high}"
                )
                found.append(f"field {path!r} must be {bounds}, got {excerpt(value)}")
        if (self.fields is not None or self.items is not None) and depth >= MAX_DEPTH:
            return [*found, f"field {path!r} nests deeper than {MAX_DEPTH} levels"], value
        if self.fields is not None and isinstance(value, Mapping):
            nested, value = _object_problems(self.fields, value, path, depth + 1)
            found += nested
        if isinstance(value, list):
            if self.min_items is not None and len(value) < self.min_items:
                found.append(f"field {path!r} must hold at least {self.min_items} item(s), got {len(value)}")
            if self.max_items is not None and len(value) > self.max_items:
                found.append(f"field {path!r} must hold at most {self.max_items} items, got {len(value)}")
            elif self.items is not None:
                checked = []
                for index, item in enumerate(value):
                    nested, item = self.items.problems(f"{path}[{index}]", item, depth=depth + 1)
                    found += nested
                    checked.append(item)
                    if len(found) > MAX_PROBLEMS:
                        break
                else:
                    value = checked
        if not found and self.constraint is not None:
            problem = self.constraint(value)
            if problem:
                found.append(f"field {path!r} {problem}")
        return found, value

    def check(self, name: str, value: Any) -> None:
        """Raise :class:`PayloadError` naming ``name`` unless ``value`` fits this field."""
        found, _ = self.problems(name, value)
        if found:
            raise PayloadError(_message(found))


def _object_problems(
    schema: Mapping[str, Field], value: Mapping[str, Any], path: str, depth: int
) -> tuple[list[str], dict[str, Any]]:
    where = f"field {path!r}: " if path else ""
    found = []
    unknown = sorted((name for name in value if name not in schema), key=str)
    if unknown:
        found.append(f"{where}unknown field(s): {_names(unknown)}")
    missing = sorted(name for name, field in schema.items() if field.required and name not in value)
    if missing:
        found.append(f"{where}missing field(s): {_names(missing)}")
    checked: dict[str, Any] = {}
    for name, field in schema.items():
        if name in value:
            nested, checked[name] = field.problems(f"{path}.{name}" if path else name, value[name], depth=depth)
            found += nested
        elif not field.required:
            checked[name] = field.default
        if len(found) > MAX_PROBLEMS:
            break
    return found, checked


def _message(found: list[str]) -> str:
    shown = "; ".join(found[:MAX_PROBLEMS])
    return shown if len(found) <= MAX_PROBLEMS else f"{shown}; and more"


def validate(schema: Mapping[str, Field], payload: Any) -> dict[str, Any]:
    """Return ``payload`` checked against ``schema``, defaults filled in (in nested objects too).

    Raises :class:`PayloadError` listing what is wrong (up to :data:`MAX_PROBLEMS` problems): a
    non-object payload, unknown fields, missing fields, mistyped or out-of-range values, at any
    depth.
    """
    if not isinstance(payload, Mapping):
        raise PayloadError(f"payload must be a JSON object, not {type(payload).__name__}")
    found, checked = _object_problems(schema, payload, "", 0)
    if found:
        raise PayloadError(_message(found))
    return checked


UUID_PATTERN = r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"
#: Identifiers that end up in file names and certificate subjects: no slashes, no dots first.
IDENTIFIER_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"
