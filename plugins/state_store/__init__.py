"""State store drivers: ``noop`` (in memory) and ``sqlalchemy`` (SQLite, PostgreSQL, MySQL)."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Collection, Mapping
from typing import Any

from keramos.framework.records import Record


def check_changes(record_type: type[Record], changes: dict[str, Any]) -> None:
    """Raise :class:`TypeError` for a change to a field ``record_type`` does not have (or its key)."""
    names = {field.name for field in dataclasses.fields(record_type)}
    unknown = sorted(set(changes) - names)
    if unknown:
        raise TypeError(f"{record_type.__name__} has no field(s) {', '.join(unknown)}")
    if record_type.key in changes:
        raise TypeError(f"{record_type.__name__}.{record_type.key} is the key and cannot change")


def conflict_message(
    record_type: type[Record], key: str, current: Mapping[str, Any], expected: Mapping[str, Collection[Any]]
) -> str:
    """Why a compare-and-set change was refused: what the fields hold and what was expected."""
    found = ", ".join(f"{name} is {current[name]!r}" for name in expected)
    wanted = "; ".join(f"{name} in {sorted(map(str, values))}" for name, values in expected.items())
    return f"{record_type.__name__} {key}: {found}, expected {wanted}"


def field_types(record_type: type[Record]) -> dict[str, Any]:
    """Field name to resolved type annotation, in declaration order."""
    hints = typing.get_type_hints(record_type)
    return {field.name: hints[field.name] for field in dataclasses.fields(record_type)}
