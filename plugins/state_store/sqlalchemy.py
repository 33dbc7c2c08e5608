"""The ``sqlalchemy`` state store: one table per record type, on any SQLAlchemy database.

SQLite (the default, a file under ``state_path``) runs in WAL mode with pooled connections;
PostgreSQL and MySQL work with their usual drivers. The schema is versioned with Alembic
(:data:`MIGRATIONS`): created on an empty database, upgraded by ``keramos db upgrade``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
from collections.abc import Collection, Mapping
from typing import Any, TypeVar

import sqlalchemy as sa
from oslo_config import cfg
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect

from keramos.framework.contracts import StateStore
from keramos.framework.errors import ConfigError, Conflict, NotFound
from keramos.framework.migrations import Database, SchemaMigrations, SchemaOutdated, script_location
from keramos.framework.persistence import make_sqlite_directory
from keramos.framework.records import RECORD_TYPES, Record, utcnow
from keramos.plugins.state_store import check_changes, conflict_message, field_types

R = TypeVar("R", bound=Record)

METADATA = sa.MetaData()


def _column(name: str, annotation: Any, *, primary_key: bool) -> sa.Column:
    if primary_key:
        return sa.Column(name, sa.String(255), primary_key=True)
    text = str(annotation)
    if annotation is int or text.startswith("int"):
        kind: Any = sa.BigInteger
    elif "datetime" in text:
        kind = sa.DateTime(timezone=True)
    elif "dict" in text:
        kind = sa.JSON
    else:
        kind = sa.Text
    return sa.Column(name, kind, nullable=True)


def _table(record_type: type[Record]) -> sa.Table:
    columns = [
        _column(name, annotation, primary_key=(name == record_type.key))
        for name, annotation in field_types(record_type).items()
    ]
    return sa.Table(f"keramos_{record_type.table}", METADATA, *columns)


TABLES: dict[type[Record], sa.Table] = {record_type: _table(record_type) for record_type in RECORD_TYPES}

#: The state store's migrations (``migrations/`` beside this module), run by ``keramos db
#: upgrade``; an empty database is created when a store opens it. A field added to a record
#: needs a migration adding its column (a test compares the tables with the migrated schema).
MIGRATIONS = SchemaMigrations(
    title="state store",
    location=script_location(__file__),
    version_table="keramos_state_store_version",
    head="state_store_0003",
    tables=tuple(table.name for table in TABLES.values()),
    revisions=("state_store_0001", "state_store_0002", "state_store_0003"),
)


def _as_utc(value: Any) -> Any:
    # SQLite has no timezone type: datetimes come back naive, but were stored as UTC.
    if isinstance(value, dt.datetime) and value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    return value


def parse_url(url: str) -> sa.engine.URL:
    """Parse ``[state_store] connection``; a ConfigError says what is wrong with it."""
    try:
        return sa.engine.make_url(url)
    except sa.exc.ArgumentError as error:
        raise ConfigError(f"[state_store] connection is not a database URL: {error}") from error


def make_engine(url: str) -> sa.engine.Engine:
    """An engine for ``url``; SQLite files get WAL, a busy timeout and cross-thread use."""
    parsed = parse_url(url)
    if parsed.get_backend_name() != "sqlite":
        return sa.create_engine(url, pool_pre_ping=True)
    engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection, _record):
        cursor = dbapi_connection.cursor()
        if parsed.database not in (None, "", ":memory:"):
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    return engine


_KEY_PARAMETER = "record_key"


@functools.lru_cache(maxsize=1024)
def _update_statement(table: sa.Table, key: str, names: tuple[str, ...], returning: bool) -> sa.sql.Executable:
    """``UPDATE table SET names... WHERE key = :record_key`` (returning the row when the database
    can), built once per table and set of changed fields."""
    statement = (
        table.update()
        .where(table.c[key] == sa.bindparam(_KEY_PARAMETER))
        .values({name: sa.bindparam(name) for name in names})
    )
    return statement.returning(*table.c) if returning else statement


@functools.lru_cache(maxsize=None)
def _select_statement(table: sa.Table, key: str) -> sa.sql.Executable:
    """``SELECT * FROM table WHERE key = :record_key``, built once per table."""
    return table.select().where(table.c[key] == sa.bindparam(_KEY_PARAMETER))


@functools.lru_cache(maxsize=None)
def _native_upsert(dialect_name: str, table: sa.Table, key: str) -> sa.sql.Executable | None:
    """``INSERT ... ON CONFLICT (key) DO UPDATE`` for SQLite and PostgreSQL: one statement where
    other databases take an UPDATE and, for a new record, an INSERT."""
    if dialect_name not in ("sqlite", "postgresql"):
        return None
    module = sqlite_dialect if dialect_name == "sqlite" else pg_dialect
    insert = module.insert(table)
    others = {column.name: insert.excluded[column.name] for column in table.columns if column.name != key}
    return insert.on_conflict_do_update(index_elements=[table.c[key]], set_=others)


@functools.lru_cache(maxsize=None)
def _insert_or_nothing(dialect_name: str, table: sa.Table, key: str) -> sa.sql.Executable | None:
    """``INSERT ... ON CONFLICT (key) DO NOTHING`` for SQLite and PostgreSQL; other databases
    insert and take the integrity error for "already there"."""
    if dialect_name not in ("sqlite", "postgresql"):
        return None
    module = sqlite_dialect if dialect_name == "sqlite" else pg_dialect
    return module.insert(table).on_conflict_do_nothing(index_elements=[table.c[key]])


def _one_of(column: sa.Column, values: Collection[Any]) -> sa.sql.ColumnElement:
    """``column`` holds one of ``values``; ``None`` among them matches NULL (which ``IN`` never does)."""
    present = [value for value in values if value is not None]
    condition = column.in_(present)
    return sa.or_(condition, column.is_(None)) if len(present) < len(values) else condition


class SQLAlchemyStateStore(StateStore):
    """Records in ``keramos_<table>`` tables of the ``[state_store] connection`` database."""

    def __init__(self, conf: cfg.ConfigOpts, *, url: str | None = None) -> None:
        super().__init__(conf)
        self.url = url or conf.state_store.connection
        make_sqlite_directory(parse_url(self.url))
        self.engine = make_engine(self.url)
        try:
            MIGRATIONS.ensure(self.engine, self._safe_url())
        except SchemaOutdated:
            self.engine.dispose()
            raise
        except sa.exc.SQLAlchemyError as error:
            self.engine.dispose()
            raise ConfigError(f"state store {self._safe_url()} is unusable: {error}") from error

    @classmethod
    def database(cls, conf: cfg.ConfigOpts) -> Database:
        """The ``[state_store] connection`` database and this store's migrations."""
        return Database(MIGRATIONS, make_engine(conf.state_store.connection))

    def _safe_url(self) -> str:
        return sa.engine.make_url(self.url).render_as_string(hide_password=True)

    @staticmethod
    def _to_record(record_type: type[R], row: sa.engine.Row) -> R:
        values = {name: _as_utc(value) for name, value in row._mapping.items()}
        return record_type(**values)

    def save(self, record: R) -> R:
        table = TABLES[type(record)]
        values = dataclasses.asdict(record)
        key_column = table.c[record.key]
        upsert = _native_upsert(self.engine.dialect.name, table, record.key)
        with self.engine.begin() as connection:
            if upsert is not None:
                connection.execute(upsert, values)
                return record
            updated = connection.execute(
                table.update().where(key_column == record.key_value).values(values)
            )
            if updated.rowcount == 0:
                connection.execute(table.insert().values(values))
        return record

    def insert_if_absent(self, record: R) -> tuple[R, bool]:
        table = TABLES[type(record)]
        values = dataclasses.asdict(record)
        statement = _insert_or_nothing(self.engine.dialect.name, table, record.key)
        # A record deleted between a refused insert and the read is inserted on the next turn.
        for _attempt in range(3):
            try:
                with self.engine.begin() as connection:
                    if statement is None:
                        connection.execute(table.insert().values(values))
                        return record, True
                    if connection.execute(statement, values).rowcount == 1:
                        return record, True
            except sa.exc.IntegrityError:
                if statement is not None:
                    raise
            stored = self.get(type(record), record.key_value)
            if stored is not None:
                return stored, False
        raise Conflict(f"{type(record).__name__} {record.key_value} keeps appearing and disappearing")

    def get(self, record_type: type[R], key: str) -> R | None:
        table = TABLES[record_type]
        with self.engine.connect() as connection:
            row = connection.execute(_select_statement(table, record_type.key), {_KEY_PARAMETER: key}).first()
        return None if row is None else self._to_record(record_type, row)

    def update(self, record_type: type[R], key: str, **changes: Any) -> R:
        check_changes(record_type, changes)
        table = TABLES[record_type]
        if "updated_at" in table.c:
            changes = {**changes, "updated_at": utcnow()}
        key_column = table.c[record_type.key]
        returning = self.engine.dialect.update_returning
        statement = _update_statement(table, record_type.key, tuple(changes), returning)
        with self.engine.begin() as connection:
            if returning:
                row = connection.execute(statement, {**changes, _KEY_PARAMETER: key}).first()
            else:
                updated = connection.execute(statement, {**changes, _KEY_PARAMETER: key})
                row = connection.execute(table.select().where(key_column == key)).first() if updated.rowcount else None
        if row is None:
            raise NotFound(f"no {record_type.__name__} {key}")
        return self._to_record(record_type, row)

    def update_if(
        self,
        record_type: type[R],
        key: str,
        expected: Mapping[str, Collection[Any]],
        **changes: Any,
    ) -> R:
        check_changes(record_type, {**dict.fromkeys(expected), **changes})
        table = TABLES[record_type]
        if "updated_at" in table.c:
            changes = {**changes, "updated_at": utcnow()}
        key_column = table.c[record_type.key]
        condition = sa.and_(key_column == key, *(_one_of(table.c[name], values) for name, values in expected.items()))
        with self.engine.begin() as connection:
            updated = connection.execute(table.update().where(condition).values(changes))
            row = connection.execute(table.select().where(key_column == key)).first()
        if row is None:
            raise NotFound(f"no {record_type.__name__} {key}")
        record = self._to_record(record_type, row)
        if updated.rowcount == 0:
            current = {name: getattr(record, name) for name in expected}
            raise Conflict(conflict_message(record_type, key, current, expected))
        return record

    def delete(self, record_type: type[R], key: str) -> None:
        table = TABLES[record_type]
        with self.engine.begin() as connection:
            connection.execute(table.delete().where(table.c[record_type.key] == key))

    def find(self, record_type: type[R], **equals: Any) -> list[R]:
        check_changes(record_type, {k: v for k, v in equals.items() if k != record_type.key})
        table = TABLES[record_type]
        query = table.select()
        for name, value in equals.items():
            query = query.where(table.c[name] == value)
        if "created_at" in table.c:
            query = query.order_by(table.c.created_at)
        with self.engine.connect() as connection:
            rows = connection.execute(query).all()
        return [self._to_record(record_type, row) for row in rows]

    def close(self) -> None:
        self.engine.dispose()
