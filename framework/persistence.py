"""A lean, durable taskflow persistence backend on SQLAlchemy.

taskflow saves an atom detail on every state change through a new backend
connection, so the per-save cost decides how fast a persisted flow runs.
:class:`LeanSQLBackend` keeps it low: tables and read statements are defined
once at import time (SQLAlchemy's statement cache always hits), writes are
compiled once per backend and run on the DBAPI cursor of a pooled connection,
and saves write through (one ``UPDATE`` or upsert) without reading and merging
the stored copy first: the caller's detail is stored as given, the last writer
wins. Each detail is one JSON document (the models' ``to_dict()``).

On SQLite the database runs in WAL mode with pooled connections.
``synchronous="normal"`` (the default) makes every committed save survive a
crash of the process (``kill -9``); a power loss or an operating system crash
may lose the last commits. ``synchronous="full"`` syncs the WAL on every
commit, so commits also survive a power loss, at the price of one fsync per
save. Other databases use their own durability settings.

Usage::

    backend = get_backend("sqlite:////var/lib/keramos/flows.db")
    engine = taskflow.engines.load(flow, book=book, backend=backend)
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import importlib.util
import os
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import sqlalchemy as sa
from oslo_serialization import jsonutils
from sqlalchemy import exc as sa_exc
from sqlalchemy import pool as sa_pool
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from taskflow import exceptions as exc
from taskflow.persistence import base, models

from keramos.framework.migrations import SchemaMigrations, script_location

__all__ = [
    "ATOMDETAILS", "Connection", "FLOWDETAILS", "LOGBOOKS", "LeanSQLBackend", "METADATA", "MIGRATIONS",
    "SYNCHRONOUS_MODES", "get_backend",
]

#: Accepted values of the SQLite ``synchronous`` option.
SYNCHRONOUS_MODES: tuple[str, ...] = ("normal", "full")

_UUID = sa.String(64)

#: Schema of the backend; created by its migrations (:data:`MIGRATIONS`).
METADATA = sa.MetaData()


def _parent(table: str) -> sa.Column:
    return sa.Column(
        "parent_uuid", _UUID, sa.ForeignKey(f"{table}.uuid", ondelete="CASCADE"),
        nullable=False, index=True,
    )


#: Logbooks: ``data`` holds ``LogBook.to_dict(marshal_time=True)``.
LOGBOOKS = sa.Table(
    "keramos_logbooks", METADATA,
    sa.Column("uuid", _UUID, primary_key=True),
    sa.Column("data", sa.JSON, nullable=False),
)

#: Flow details: ``data`` holds ``FlowDetail.to_dict()``.
FLOWDETAILS = sa.Table(
    "keramos_flowdetails", METADATA,
    sa.Column("uuid", _UUID, primary_key=True),
    _parent("keramos_logbooks"),
    sa.Column("data", sa.JSON, nullable=False),
)

#: Atom details: ``data`` holds ``AtomDetail.to_dict()``, ``atom_type`` the
#: name from ``models.atom_detail_type``.
ATOMDETAILS = sa.Table(
    "keramos_atomdetails", METADATA,
    sa.Column("uuid", _UUID, primary_key=True),
    _parent("keramos_flowdetails"),
    sa.Column("atom_type", sa.String(32), nullable=False),
    sa.Column("data", sa.JSON, nullable=False),
)

#: The flow persistence's migrations (``framework/persistence_migrations``), run by
#: ``keramos db upgrade``; an empty database is created by :meth:`LeanSQLBackend.upgrade`.
MIGRATIONS = SchemaMigrations(
    title="flow persistence",
    location=script_location(__file__, "persistence_migrations"),
    version_table="keramos_persistence_version",
    head="persistence_0001",
    tables=tuple(table.name for table in METADATA.sorted_tables),
    revisions=("persistence_0001",),
)

_KEY = sa.bindparam("key")
# Reads go through SQLAlchemy Core; "uuid" itself is reserved for the SET
# clause of an UPDATE, hence the "key" parameter.
_SELECT_BOOK = sa.select(LOGBOOKS.c.data).where(LOGBOOKS.c.uuid == _KEY)
_SELECT_BOOKS = sa.select(LOGBOOKS.c.data)
_SELECT_FLOW = sa.select(FLOWDETAILS.c.data).where(FLOWDETAILS.c.uuid == _KEY)
_SELECT_FLOWS = sa.select(FLOWDETAILS.c.parent_uuid, FLOWDETAILS.c.data)
_SELECT_FLOWS_OF_BOOK = _SELECT_FLOWS.where(FLOWDETAILS.c.parent_uuid == _KEY)
_SELECT_ATOM = sa.select(ATOMDETAILS.c.atom_type, ATOMDETAILS.c.data).where(ATOMDETAILS.c.uuid == _KEY)
_SELECT_ATOMS = sa.select(ATOMDETAILS.c.parent_uuid, ATOMDETAILS.c.atom_type, ATOMDETAILS.c.data)
_SELECT_ATOMS_OF_FLOW = _SELECT_ATOMS.where(ATOMDETAILS.c.parent_uuid == _KEY)
_SELECT_ATOMS_OF_BOOK = _SELECT_ATOMS.join(FLOWDETAILS).where(FLOWDETAILS.c.parent_uuid == _KEY)


class _Prepared:
    """A Core DML statement compiled once for one dialect, run on a DBAPI cursor.

    SQLAlchemy's execution layer costs more than a SQLite write itself, and
    taskflow writes ~30 times per six-task flow.
    """

    __slots__ = ("sql", "_names")

    def __init__(self, stmt: Any, dialect: sa.Dialect, keys: list[str] | None = None) -> None:
        compiled = stmt.compile(dialect=dialect, column_keys=keys)
        self.sql = str(compiled)
        self._names = compiled.positiontup

    def params(self, values: dict[str, Any]) -> Any:
        """Return ``values`` in the paramstyle of the dialect."""
        if self._names is None:
            return values
        return tuple(values[name] for name in self._names)


def _upsert(table: sa.Table, dialect: sa.Dialect) -> tuple[_Prepared | None, _Prepared, _Prepared]:
    """Return (native upsert or None, update by uuid, insert) for ``table``."""
    columns = [c.name for c in table.columns if not c.primary_key]
    native = None
    if dialect.name in ("sqlite", "postgresql"):
        module = sqlite_dialect if dialect.name == "sqlite" else pg_dialect
        insert = module.insert(table)
        upsert = insert.on_conflict_do_update(
            index_elements=[table.c.uuid], set_={name: insert.excluded[name] for name in columns}
        )
        native = _Prepared(upsert, dialect)
    update = _Prepared(table.update().where(table.c.uuid == _KEY), dialect, columns)
    return native, update, _Prepared(table.insert(), dialect)


def _dumps(value: Any) -> str:
    try:
        return jsonutils.dumps(value)
    except (TypeError, ValueError):
        exc.raise_with_cause(exc.StorageFailure, f"Cannot store {value!r}: not JSON serializable")


def _atom_row(ad: models.AtomDetail, parent_uuid: str) -> dict[str, Any]:
    atom_type = models.atom_detail_type(ad)
    data = _dumps(ad.to_dict())
    return {"uuid": ad.uuid, "parent_uuid": parent_uuid, "atom_type": atom_type, "data": data}


def _to_atom(atom_type: str, data: dict[str, Any]) -> models.AtomDetail:
    return models.atom_detail_class(atom_type).from_dict(data)


def _to_book(data: dict[str, Any]) -> models.LogBook:
    return models.LogBook.from_dict(data, unmarshal_time=True)


def _flow_details(flows: list[sa.Row], atoms: list[sa.Row]) -> list[tuple[str, models.FlowDetail]]:
    """Build (parent logbook uuid, flow detail with its atoms) from selected rows."""
    by_uuid = {data["uuid"]: (parent, models.FlowDetail.from_dict(data)) for parent, data in flows}
    for parent, atom_type, data in atoms:
        if parent in by_uuid:
            by_uuid[parent][1].add(_to_atom(atom_type, data))
    return list(by_uuid.values())


class _WrittenAtoms:
    """What was last written of each atom detail, minus its progress.

    taskflow saves a task's atom detail when it starts and ends to record its progress (0.0 then
    1.0), right after and before the state changes that are saved anyway: two of the four writes
    of every task. It also saves every atom of a flow again each time the flow's own state
    changes. Progress is not used to resume a flow (a task that did not finish runs again), so an
    atom is written only when something else changed: state, results and failures always are.
    Remembers the most recent ``size`` atoms of this process, by a digest; atom uuids are never
    reused once their logbook is destroyed, and :meth:`forget_all` follows ``clear_all``.
    """

    _PROGRESS_KEYS = ("progress", "progress_details")

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._digests: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._lock = threading.Lock()

    def _digest_of(self, fields: dict[str, Any]) -> bytes:
        meta = fields.get("meta") or {}
        significant = {**fields, "meta": {k: v for k, v in meta.items() if k not in self._PROGRESS_KEYS}}
        return hashlib.blake2b(_dumps(significant).encode(), digest_size=16).digest()

    def digest(self, atom_uuid: str, fields: dict[str, Any]) -> bytes | None:
        """The digest of ``fields`` without progress, or None if the last write of the atom had
        the same (nothing worth writing)."""
        digest = self._digest_of(fields)
        with self._lock:
            return None if self._digests.get(atom_uuid) == digest else digest

    def loaded(self, atoms: Iterable[models.AtomDetail]) -> None:
        """Remember ``atoms`` as read from the database: what the rows hold now.

        Another process may have written an atom since this one last did (a job claimed again
        on a jobboard, a flow resumed elsewhere): after a read, an update is compared with the
        row, not with this process's own last write, and never skipped wrongly.
        """
        for atom in atoms:
            self.written(atom.uuid, self._digest_of(atom.to_dict()))

    def forget_all(self) -> None:
        """Forget every write (the rows are gone): the next update of any atom is written."""
        with self._lock:
            self._digests.clear()

    def written(self, atom_uuid: str, digest: bytes) -> None:
        """Remember that the atom was written with fields of ``digest``."""
        with self._lock:
            self._digests[atom_uuid] = digest
            self._digests.move_to_end(atom_uuid)
            if len(self._digests) > self._size:
                self._digests.popitem(last=False)


class LeanSQLBackend(base.Backend):
    """Durable taskflow persistence backend on any SQLAlchemy database.

    ``conf`` keys: ``connection`` (SQLAlchemy URL, required), ``synchronous``
    (SQLite only, one of :data:`SYNCHRONOUS_MODES`, default ``"normal"``) and
    ``busy_timeout`` (SQLite only, seconds to wait for a lock, default 30).
    Prefer :func:`get_backend`, which also creates the tables.

    :raises ValueError: a configuration value is invalid.
    """

    def __init__(self, conf: dict[str, Any] | None = None) -> None:
        super().__init__(conf)
        connection = self._conf.get("connection")
        if not isinstance(connection, str) or not connection.strip():
            raise ValueError(f"connection must be a SQLAlchemy URL, got {connection!r}")
        try:
            url = sa.engine.make_url(connection)
        except sa_exc.ArgumentError as err:
            raise ValueError(f"invalid connection URL {connection!r}: {err}") from None
        synchronous = self._conf.get("synchronous", "normal")
        if not isinstance(synchronous, str) or synchronous.lower() not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {SYNCHRONOUS_MODES}, got {synchronous!r}")
        busy_timeout = self._conf.get("busy_timeout", 30.0)
        if isinstance(busy_timeout, bool) or not isinstance(busy_timeout, (int, float)) or busy_timeout < 0:
            raise ValueError(f"busy_timeout must be a number of seconds >= 0, got {busy_timeout!r}")
        self._synchronous = synchronous.upper()
        self._guard: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        self._upgrade_lock = threading.Lock()
        self._engine = self._create_engine(url, float(busy_timeout))
        dialect = self._engine.dialect
        self._errors = (sa_exc.SQLAlchemyError, dialect.loaded_dbapi.Error)
        update_atom = ATOMDETAILS.update().where(ATOMDETAILS.c.uuid == _KEY)
        self._update_atom = _Prepared(update_atom, dialect, ["atom_type", "data"])
        update_flow = FLOWDETAILS.update().where(FLOWDETAILS.c.uuid == _KEY)
        self._update_flow = _Prepared(update_flow, dialect, ["data"])
        self._delete_book = _Prepared(LOGBOOKS.delete().where(LOGBOOKS.c.uuid == _KEY), dialect)
        self._clear = [_Prepared(t.delete(), dialect) for t in reversed(METADATA.sorted_tables)]
        self._upserts = {t: _upsert(t, dialect) for t in METADATA.sorted_tables}
        self._written_atoms = _WrittenAtoms()

    def _create_engine(self, url: sa.engine.URL, busy_timeout: float) -> sa.engine.Engine:
        kwargs: dict[str, Any] = {}
        if url.get_backend_name() == "sqlite":
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": busy_timeout}
            if url.database in (None, "", ":memory:") or url.query.get("mode") == "memory":
                # Every connection to ":memory:" opens a new, empty database:
                # share one connection and serialise its use between threads.
                kwargs["poolclass"] = sa_pool.StaticPool
                self._guard = threading.RLock()
            else:
                kwargs["poolclass"] = sa_pool.QueuePool
        else:
            kwargs["pool_pre_ping"] = True
            if url.drivername == "postgresql" and importlib.util.find_spec("psycopg") is None:
                # SQLAlchemy 2.1 maps a bare "postgresql://" to psycopg 3;
                # fall back to psycopg2 when that is what is installed.
                if importlib.util.find_spec("psycopg2") is not None:
                    url = url.set(drivername="postgresql+psycopg2")
        try:
            engine = sa.create_engine(url, **kwargs)
        except sa_exc.ArgumentError as err:
            raise ValueError(f"unsupported connection URL {url.render_as_string()!r}: {err}") from None
        if engine.dialect.name == "sqlite":
            sa.event.listen(engine, "connect", self._on_sqlite_connect)
        elif engine.dialect.name == "postgresql" and self._synchronous == "NORMAL":
            sa.event.listen(engine, "connect", self._on_postgresql_connect)
        return engine

    @staticmethod
    def _on_postgresql_connect(dbapi_conn: Any, _record: Any) -> None:
        # As SQLite's synchronous=NORMAL: a commit survives this process dying at once, and the
        # server's crash or a power loss within a fraction of a second may lose it (never
        # corrupt anything); "full" keeps the server's own setting.
        cursor = dbapi_conn.cursor()
        cursor.execute("SET synchronous_commit TO off")
        cursor.close()
        dbapi_conn.commit()

    def _on_sqlite_connect(self, dbapi_conn: Any, _record: Any) -> None:
        for pragma in ("foreign_keys=ON", "journal_mode=WAL", f"synchronous={self._synchronous}"):
            dbapi_conn.execute(f"PRAGMA {pragma}").close()

    @property
    def engine(self) -> sa.engine.Engine:
        """The shared SQLAlchemy engine of this backend."""
        return self._engine

    @contextlib.contextmanager
    def _reading(self, what: str) -> Iterator[sa.engine.Connection]:
        try:
            with self._guard, self._engine.connect() as conn:
                yield conn
        except self._errors:
            exc.raise_with_cause(exc.StorageFailure, f"Failed {what}")

    @contextlib.contextmanager
    def _writing(self, what: str) -> Iterator[Any]:
        """Yield a DBAPI cursor; commit if the block succeeds."""
        try:
            with self._guard:
                raw = self._engine.raw_connection()
                try:
                    cursor = raw.cursor()
                    yield cursor
                    cursor.close()
                    raw.commit()
                finally:
                    # Back to the pool, which rolls back what was not committed.
                    raw.close()
        except self._errors:
            exc.raise_with_cause(exc.StorageFailure, f"Failed {what}")

    def _upsert(self, cursor: Any, table: sa.Table, rows: list[dict[str, Any]]) -> None:
        native, update, insert = self._upserts[table]
        if native is not None:
            if rows:
                cursor.executemany(native.sql, [native.params(row) for row in rows])
            return
        for row in rows:
            cursor.execute(update.sql, update.params({"key": row["uuid"], **row}))
            if cursor.rowcount == 0:
                cursor.execute(insert.sql, insert.params(row))

    def upgrade(self) -> None:
        """Create the schema on an empty database; refuse one of another revision.

        :raises keramos.framework.migrations.SchemaOutdated: the database was made by an older
            (or newer) Keramos: ``keramos db upgrade`` upgrades it.
        :raises taskflow.exceptions.StorageFailure: the database cannot be read or written.
        """
        where = self._engine.url.render_as_string(hide_password=True)
        try:
            with self._upgrade_lock, self._guard:
                MIGRATIONS.ensure(self._engine, where)
        except self._errors:
            exc.raise_with_cause(exc.StorageFailure, "Failed creating the tables")

    def get_connection(self) -> Connection:
        """Return a cheap connection object over the shared engine."""
        return Connection(self)

    def close(self) -> None:
        """Close all pooled database connections."""
        self._engine.dispose()


class Connection(base.Connection):
    """taskflow persistence connection of a :class:`LeanSQLBackend`.

    Each call runs in its own transaction on a pooled database connection; the
    object holds no resources. Errors of the database raise ``StorageFailure``.
    """

    def __init__(self, backend: LeanSQLBackend) -> None:
        self._backend = backend

    @property
    def backend(self) -> LeanSQLBackend:
        """The backend this connection belongs to."""
        return self._backend

    def close(self) -> None:
        """Nothing to release: database connections go back to the pool per call."""

    def validate(self) -> None:
        """Check that the database answers; raise ``StorageFailure`` if not."""
        with self._backend._reading("validating the connection") as conn:
            conn.execute(sa.select(sa.literal(1)))

    def upgrade(self) -> None:
        """Create the backend's schema on an empty database (see :meth:`LeanSQLBackend.upgrade`)."""
        self._backend.upgrade()

    def clear_all(self) -> None:
        """Delete every logbook, flow detail and atom detail."""
        with self._backend._writing("clearing all entries") as cursor:
            for stmt in self._backend._clear:
                cursor.execute(stmt.sql, stmt.params({}))
        self._backend._written_atoms.forget_all()

    def update_atom_details(self, atom_detail: models.AtomDetail) -> models.AtomDetail:
        """Store an existing atom detail as given and return it (``NotFound`` if unknown).

        An update that changes nothing but the task's progress is not written (see
        :class:`_WrittenAtoms`).
        """
        stmt = self._backend._update_atom
        fields = atom_detail.to_dict()
        written_atoms = self._backend._written_atoms
        digest = written_atoms.digest(atom_detail.uuid, fields)
        if digest is None:
            return atom_detail
        data = _dumps(fields)
        atom_type = models.atom_detail_type(atom_detail)
        params = stmt.params({"key": atom_detail.uuid, "atom_type": atom_type, "data": data})
        with self._backend._writing(f"updating atom details '{atom_detail.uuid}'") as cursor:
            cursor.execute(stmt.sql, params)
            if cursor.rowcount == 0:
                raise exc.NotFound(f"No atom details found with uuid '{atom_detail.uuid}'")
        written_atoms.written(atom_detail.uuid, digest)
        return atom_detail

    def update_flow_details(self, flow_detail: models.FlowDetail) -> models.FlowDetail:
        """Store an existing flow detail and its atom details; return it (``NotFound`` if unknown)."""
        stmt = self._backend._update_flow
        params = stmt.params({"key": flow_detail.uuid, "data": _dumps(flow_detail.to_dict())})
        written_atoms = self._backend._written_atoms
        changed = []
        for ad in flow_detail:
            digest = written_atoms.digest(ad.uuid, ad.to_dict())
            if digest is not None:
                changed.append((ad, digest))
        rows = [_atom_row(ad, flow_detail.uuid) for ad, _digest in changed]
        with self._backend._writing(f"updating flow details '{flow_detail.uuid}'") as cursor:
            cursor.execute(stmt.sql, params)
            if cursor.rowcount == 0:
                raise exc.NotFound(f"No flow details found with uuid '{flow_detail.uuid}'")
            self._backend._upsert(cursor, ATOMDETAILS, rows)
        for ad, digest in changed:
            written_atoms.written(ad.uuid, digest)
        return flow_detail

    def save_logbook(self, book: models.LogBook) -> models.LogBook:
        """Create or replace a logbook, its flow and atom details; return it.

        Details stored earlier but absent from ``book`` are kept.
        """
        book_row = {"uuid": book.uuid, "data": _dumps(book.to_dict(marshal_time=True))}
        flows = [
            {"uuid": fd.uuid, "parent_uuid": book.uuid, "data": _dumps(fd.to_dict())} for fd in book
        ]
        atoms = [_atom_row(ad, fd.uuid) for fd in book for ad in fd]
        with self._backend._writing(f"saving logbook '{book.uuid}'") as cursor:
            self._backend._upsert(cursor, LOGBOOKS, [book_row])
            self._backend._upsert(cursor, FLOWDETAILS, flows)
            self._backend._upsert(cursor, ATOMDETAILS, atoms)
        return book

    def destroy_logbook(self, book_uuid: str) -> None:
        """Delete a logbook with its flow and atom details (``NotFound`` if unknown)."""
        stmt = self._backend._delete_book
        with self._backend._writing(f"destroying logbook '{book_uuid}'") as cursor:
            cursor.execute(stmt.sql, stmt.params({"key": book_uuid}))
            if cursor.rowcount == 0:
                raise exc.NotFound(f"No logbook found with uuid '{book_uuid}'")

    def get_logbook(self, book_uuid: str, lazy: bool = False) -> models.LogBook:
        """Return a logbook, with its details unless ``lazy`` (``NotFound`` if unknown)."""
        with self._backend._reading(f"getting logbook '{book_uuid}'") as conn:
            data = conn.execute(_SELECT_BOOK, {"key": book_uuid}).scalar()
            if data is None:
                raise exc.NotFound(f"No logbook found with uuid '{book_uuid}'")
            book = _to_book(data)
            if not lazy:
                flows = conn.execute(_SELECT_FLOWS_OF_BOOK, {"key": book_uuid}).all()
                atoms = conn.execute(_SELECT_ATOMS_OF_BOOK, {"key": book_uuid}).all()
                for _parent, flow_detail in _flow_details(flows, atoms):
                    book.add(flow_detail)
                    self._backend._written_atoms.loaded(flow_detail)
        return book

    def get_logbooks(self, lazy: bool = False) -> Iterator[models.LogBook]:
        """Return an iterator over all logbooks (read at call time)."""
        with self._backend._reading("getting logbooks") as conn:
            books = [_to_book(data) for data in conn.execute(_SELECT_BOOKS).scalars()]
            if not lazy and books:
                flows = conn.execute(_SELECT_FLOWS).all()
                atoms = conn.execute(_SELECT_ATOMS).all()
                by_uuid = {book.uuid: book for book in books}
                for parent, flow_detail in _flow_details(flows, atoms):
                    if parent in by_uuid:
                        by_uuid[parent].add(flow_detail)
                        self._backend._written_atoms.loaded(flow_detail)
        return iter(books)

    def get_flows_for_book(self, book_uuid: str, lazy: bool = False) -> Iterator[models.FlowDetail]:
        """Return an iterator over a logbook's flow details (with atoms unless ``lazy``)."""
        with self._backend._reading(f"getting flow details of logbook '{book_uuid}'") as conn:
            flows = conn.execute(_SELECT_FLOWS_OF_BOOK, {"key": book_uuid}).all()
            atoms = [] if lazy else conn.execute(_SELECT_ATOMS_OF_BOOK, {"key": book_uuid}).all()
        flow_details = [flow_detail for _parent, flow_detail in _flow_details(flows, atoms)]
        for flow_detail in flow_details:
            self._backend._written_atoms.loaded(flow_detail)
        return iter(flow_details)

    def get_flow_details(self, fd_uuid: str, lazy: bool = False) -> models.FlowDetail:
        """Return a flow detail, with its atoms unless ``lazy`` (``NotFound`` if unknown)."""
        with self._backend._reading(f"getting flow details '{fd_uuid}'") as conn:
            data = conn.execute(_SELECT_FLOW, {"key": fd_uuid}).scalar()
            if data is None:
                raise exc.NotFound(f"No flow details found with uuid '{fd_uuid}'")
            flow_detail = models.FlowDetail.from_dict(data)
            if not lazy:
                for _parent, atom_type, ad_data in conn.execute(_SELECT_ATOMS_OF_FLOW, {"key": fd_uuid}):
                    flow_detail.add(_to_atom(atom_type, ad_data))
        self._backend._written_atoms.loaded(flow_detail)
        return flow_detail

    def get_atom_details(self, ad_uuid: str) -> models.AtomDetail:
        """Return an atom detail (``NotFound`` if unknown)."""
        with self._backend._reading(f"getting atom details '{ad_uuid}'") as conn:
            row = conn.execute(_SELECT_ATOM, {"key": ad_uuid}).first()
        if row is None:
            raise exc.NotFound(f"No atom details found with uuid '{ad_uuid}'")
        atom = _to_atom(row.atom_type, row.data)
        self._backend._written_atoms.loaded([atom])
        return atom

    def get_atoms_for_flow(self, fd_uuid: str) -> Iterator[models.AtomDetail]:
        """Return an iterator over the atom details of a flow detail."""
        with self._backend._reading(f"getting atom details of flow '{fd_uuid}'") as conn:
            rows = conn.execute(_SELECT_ATOMS_OF_FLOW, {"key": fd_uuid}).all()
        atoms = [_to_atom(atom_type, data) for _parent, atom_type, data in rows]
        self._backend._written_atoms.loaded(atoms)
        return iter(atoms)


def make_sqlite_directory(url: sa.engine.URL) -> None:
    """Create the directory of a SQLite database file (0700), so a first start just works."""
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        os.makedirs(os.path.dirname(os.path.abspath(url.database)), mode=0o700, exist_ok=True)


def get_backend(connection: str, synchronous: str = "normal") -> LeanSQLBackend:
    """Return a :class:`LeanSQLBackend` for a SQLAlchemy URL, tables created.

    ``synchronous`` applies to SQLite: ``"normal"`` survives process crashes,
    ``"full"`` also survives power loss (one fsync per save).

    :raises ValueError: ``connection`` or ``synchronous`` is invalid.
    :raises taskflow.exceptions.StorageFailure: the tables cannot be created.
    :raises keramos.framework.migrations.SchemaOutdated: the database needs ``keramos db upgrade``.
    """
    backend = LeanSQLBackend({"connection": connection, "synchronous": synchronous})
    try:
        make_sqlite_directory(backend.engine.url)
        backend.upgrade()
    except BaseException:
        backend.close()
        raise
    return backend


class VolatileBackend(base.Backend):
    """A backend that keeps nothing: for flows run without durability.

    taskflow's engine keeps every detail in memory anyway; its own memory backend copies and
    re-validates a tree of paths on every save, which costs more than the flow itself. Saves
    here return what they are given; lookups find nothing.
    """

    def __init__(self) -> None:
        super().__init__({})
        self._connection = _VolatileConnection(self)

    def get_connection(self) -> _VolatileConnection:
        """The one, stateless, connection."""
        return self._connection

    def close(self) -> None:
        """Nothing to release."""


class _VolatileConnection(base.Connection):
    def __init__(self, backend: VolatileBackend) -> None:
        self._backend = backend

    @property
    def backend(self) -> VolatileBackend:
        return self._backend

    def close(self) -> None:
        """Nothing to release."""

    def validate(self) -> None:
        """Always usable."""

    def upgrade(self) -> None:
        """No schema."""

    def clear_all(self) -> None:
        """Nothing is kept."""

    def update_atom_details(self, atom_detail: models.AtomDetail) -> models.AtomDetail:
        return atom_detail

    def update_flow_details(self, flow_detail: models.FlowDetail) -> models.FlowDetail:
        return flow_detail

    def save_logbook(self, book: models.LogBook) -> models.LogBook:
        return book

    def destroy_logbook(self, book_uuid: str) -> None:
        """Nothing is kept."""

    def get_logbook(self, book_uuid: str, lazy: bool = False) -> models.LogBook:
        raise exc.NotFound(f"No logbook found with uuid '{book_uuid}' (nothing is kept)")

    def get_logbooks(self, lazy: bool = False) -> Iterator[models.LogBook]:
        return iter(())

    def get_flows_for_book(self, book_uuid: str, lazy: bool = False) -> Iterator[models.FlowDetail]:
        return iter(())

    def get_flow_details(self, fd_uuid: str, lazy: bool = False) -> models.FlowDetail:
        raise exc.NotFound(f"No flow details found with uuid '{fd_uuid}' (nothing is kept)")

    def get_atom_details(self, ad_uuid: str) -> models.AtomDetail:
        raise exc.NotFound(f"No atom details found with uuid '{ad_uuid}' (nothing is kept)")

    def get_atoms_for_flow(self, fd_uuid: str) -> Iterator[models.AtomDetail]:
        return iter(())
