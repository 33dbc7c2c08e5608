"""Contract for state stores: what the flows manage, and every task's outcome
(``keramos.state_store``)."""

from __future__ import annotations

import abc
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from keramos.framework.contracts.base import Driver
from keramos.framework.records import Record

if TYPE_CHECKING:
    from oslo_config import cfg

    from keramos.framework.migrations import Database

R = TypeVar("R", bound=Record)


class StateStore(Driver):
    """Keeps records (:mod:`keramos.framework.records`) by type and key.

    Implementations must be safe to call from many threads at once, and every method is a
    transaction of its own: a record is either written whole or not at all.
    """

    kind = "state_store"

    @classmethod
    def database(cls, conf: cfg.ConfigOpts) -> Database | None:
        """The database this store would keep its records in with ``conf``, with the migrations
        of its schema (:mod:`keramos.framework.migrations`), for ``keramos db``; ``None`` (the
        default) for a store that keeps no versioned schema, such as the in-memory one.

        Called on the class: a store refuses to open a database of an older schema, which is
        exactly when ``keramos db upgrade`` needs it.
        """
        return None

    @abc.abstractmethod
    def save(self, record: R) -> R:
        """Insert ``record`` or replace the stored record with the same key; return it."""

    @abc.abstractmethod
    def insert_if_absent(self, record: R) -> tuple[R, bool]:
        """Insert ``record`` unless a record of its type with its key is stored, atomically.

        Returns ``(record, True)`` when it was inserted, and ``(stored, False)`` with the record
        already stored, left unchanged, when there was one. Of many callers inserting one key at
        once (threads, processes, hosts sharing the database), exactly one gets ``True``: this is
        how the runner makes sure one request id runs one flow. A database implementation
        relies on the key's uniqueness (``INSERT ... ON CONFLICT DO NOTHING``, or an insert whose
        integrity error means "already there"), never on a read followed by a write.
        """

    @abc.abstractmethod
    def get(self, record_type: type[R], key: str) -> R | None:
        """Return the record of ``record_type`` with ``key``, or ``None``."""

    @abc.abstractmethod
    def update(self, record_type: type[R], key: str, **changes: Any) -> R:
        """Change some fields of a stored record, set ``updated_at``, and return the record.

        Raises :class:`~keramos.framework.errors.NotFound` if there is no such record and
        :class:`TypeError` for a field the record type does not have.
        """

    @abc.abstractmethod
    def update_if(
        self,
        record_type: type[R],
        key: str,
        expected: Mapping[str, Collection[Any]],
        **changes: Any,
    ) -> R:
        """:meth:`update` only if each field named in ``expected`` holds one of its values now,
        atomically (compare and set): of two callers expecting the same state, one wins.
        ``None`` among the values matches a field that holds ``None``.

        Raises :class:`~keramos.framework.errors.Conflict` (naming the current values) when a
        field holds another value, and :class:`~keramos.framework.errors.NotFound` or
        :class:`TypeError` as :meth:`update` does.
        """

    @abc.abstractmethod
    def delete(self, record_type: type[R], key: str) -> None:
        """Delete the record. Idempotent: a missing record is not an error."""

    @abc.abstractmethod
    def find(self, record_type: type[R], **equals: Any) -> list[R]:
        """Return the records whose fields equal the given values, oldest first."""
