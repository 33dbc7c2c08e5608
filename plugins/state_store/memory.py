"""The ``noop`` state store: records in memory, gone when the process ends."""

from __future__ import annotations

import copy
import threading
from collections.abc import Collection, Mapping
from typing import Any, TypeVar

from keramos.framework.contracts import StateStore
from keramos.framework.errors import Conflict, NotFound
from keramos.framework.records import Record, utcnow
from keramos.plugins.state_store import check_changes, conflict_message

R = TypeVar("R", bound=Record)


class MemoryStateStore(StateStore):
    """Keeps copies of records in dicts guarded by one lock."""

    def __init__(self, conf) -> None:
        super().__init__(conf)
        self._lock = threading.Lock()
        self._tables: dict[type[Record], dict[str, Record]] = {}

    def save(self, record: R) -> R:
        with self._lock:
            self._tables.setdefault(type(record), {})[record.key_value] = copy.deepcopy(record)
        return record

    def insert_if_absent(self, record: R) -> tuple[R, bool]:
        with self._lock:
            table = self._tables.setdefault(type(record), {})
            stored = table.get(record.key_value)
            if stored is not None:
                return copy.deepcopy(stored), False
            table[record.key_value] = copy.deepcopy(record)
        return record, True

    def get(self, record_type: type[R], key: str) -> R | None:
        with self._lock:
            found = self._tables.get(record_type, {}).get(key)
            return copy.deepcopy(found)

    def _stored(self, record_type: type[R], key: str) -> R:
        record = self._tables.get(record_type, {}).get(key)
        if record is None:
            raise NotFound(f"no {record_type.__name__} {key}")
        return record

    @staticmethod
    def _change(record: R, changes: dict[str, Any]) -> R:
        for name, value in changes.items():
            setattr(record, name, copy.deepcopy(value))
        if hasattr(record, "updated_at"):
            record.updated_at = utcnow()
        return copy.deepcopy(record)

    def update(self, record_type: type[R], key: str, **changes: Any) -> R:
        check_changes(record_type, changes)
        with self._lock:
            return self._change(self._stored(record_type, key), changes)

    def update_if(
        self,
        record_type: type[R],
        key: str,
        expected: Mapping[str, Collection[Any]],
        **changes: Any,
    ) -> R:
        check_changes(record_type, {**dict.fromkeys(expected), **changes})
        with self._lock:
            record = self._stored(record_type, key)
            current = {name: getattr(record, name) for name in expected}
            if any(current[name] not in values for name, values in expected.items()):
                raise Conflict(conflict_message(record_type, key, current, expected))
            return self._change(record, changes)

    def delete(self, record_type: type[R], key: str) -> None:
        with self._lock:
            self._tables.get(record_type, {}).pop(key, None)

    def find(self, record_type: type[R], **equals: Any) -> list[R]:
        check_changes(record_type, {k: v for k, v in equals.items() if k != record_type.key})
        with self._lock:
            found = [
                copy.deepcopy(record)
                for record in self._tables.get(record_type, {}).values()
                if all(getattr(record, name) == value for name, value in equals.items())
            ]
        return sorted(found, key=lambda record: getattr(record, "created_at", 0))
