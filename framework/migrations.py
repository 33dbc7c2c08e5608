"""Versioned database schemas: Alembic migrations for the state store and the flow persistence.

Each schema Keramos keeps in a database (the SQL state store's records, the flows' persistence)
has its own Alembic script directory and its own version table, so that both may share one
database (as jobboard mode recommends). What a process does when it opens a database:

- **empty** (none of the schema's tables): it creates the schema by running every migration,
  so a new deployment, the demo and the tests need no extra step;
- **current** (at the newest revision this code knows): it goes on;
- **unversioned** (the tables of a release made before the schema was versioned, with no version
  table), **behind** (an older revision): it refuses with one line naming ``keramos db upgrade``,
  which runs the migrations; a worker never changes a schema other processes are using;
- **ahead** (a revision this code does not know): it refuses, a newer Keramos upgraded it.

The first revision of each schema creates exactly the tables the unversioned releases made with
``create_all``, and completes them if they are there already (missing tables and nullable
columns added, the unversioned releases' own way of growing): upgrading an unversioned database
is running the migrations from the start, with its rows left as they are.

Checking the state needs no Alembic (one query on the version table against the head revision
recorded in :class:`SchemaMigrations`; a test keeps that equal to the script directory's head);
Alembic is imported only to upgrade.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
from collections.abc import Iterable, Iterator

import sqlalchemy as sa

from keramos.framework.errors import ConfigError

#: The command that upgrades every schema of a configuration.
UPGRADE_COMMAND = "keramos db upgrade"


class SchemaOutdated(ConfigError):
    """A database's schema is not the one this Keramos runs on (older, unversioned or newer)."""


class SchemaState:
    """Where a database stands against a schema's migrations."""

    EMPTY = "empty"
    UNVERSIONED = "unversioned"
    BEHIND = "behind"
    CURRENT = "current"
    AHEAD = "ahead"


@dataclasses.dataclass(frozen=True)
class SchemaMigrations:
    """One schema's migrations.

    ``title`` names it in messages (``state store``), ``location`` is its Alembic script
    directory, ``version_table`` the table holding its revision, ``head`` the newest revision
    (the script directory's head; a test checks), ``tables`` the names of the tables it owns
    now (a database holding one of them but no version table is unversioned), and
    ``revisions`` every revision of the directory, oldest first.
    """

    title: str
    location: str
    version_table: str
    head: str
    tables: tuple[str, ...]
    revisions: tuple[str, ...]

    def current(self, connection: sa.Connection) -> str | None:
        """The revision stamped in the database, or ``None`` if it has no version table."""
        if not sa.inspect(connection).has_table(self.version_table):
            return None
        table = sa.table(self.version_table, sa.column("version_num"))
        return connection.execute(sa.select(table.c.version_num)).scalar()

    def state(self, engine: sa.Engine) -> tuple[str, str | None]:
        """``(SchemaState.*, revision or None)`` of the database behind ``engine``."""
        with engine.connect() as connection:
            # One read of the table names: two reads may straddle another process's commit.
            existing = set(sa.inspect(connection).get_table_names())
            if self.version_table not in existing:
                found = SchemaState.UNVERSIONED if existing & set(self.tables) else SchemaState.EMPTY
                return found, None
            revision = self.current(connection)
        if revision is None:
            return SchemaState.UNVERSIONED, None
        if revision == self.head:
            return SchemaState.CURRENT, revision
        if revision in self.revisions:
            return SchemaState.BEHIND, revision
        return SchemaState.AHEAD, revision

    def describe(self, state: str, revision: str | None) -> str:
        """One line on ``state`` for ``keramos db current`` and the refusals."""
        if state == SchemaState.CURRENT:
            return f"at {revision} (the newest)"
        if state == SchemaState.EMPTY:
            return f"empty (created at {self.head} when first used)"
        if state == SchemaState.UNVERSIONED:
            return f"unversioned (made by a release before its schema was versioned): run {UPGRADE_COMMAND}"
        if state == SchemaState.BEHIND:
            return f"at {revision}, older than this Keramos ({self.head}): run {UPGRADE_COMMAND}"
        return (
            f"at {revision}, which this Keramos does not know (newest: {self.head}): a newer "
            "Keramos upgraded it; run that release"
        )

    def upgrade(self, engine: sa.Engine) -> tuple[str | None, str]:
        """Run the migrations the database lacks; return ``(revision before, revision after)``.

        An empty or unversioned database runs them all (the first completes what is there).
        """
        from alembic import command

        with _one_writer(engine) as connection:
            before = self.current(connection)
            command.upgrade(self._config(connection), "head")
            after = self.current(connection)
        return before, after or self.head

    def ensure(self, engine: sa.Engine, where: str) -> None:
        """Make a database usable by this code, or refuse it (:class:`SchemaOutdated`).

        An empty database is created at the head revision; processes creating one at once
        race, and the loser finds the winner's schema when it checks again.
        """
        state, revision = self.state(engine)
        if state == SchemaState.EMPTY:
            with _CREATING, _alembic_quiet():
                try:
                    self.upgrade(engine)
                except sa.exc.SQLAlchemyError:
                    state, revision = self.state(engine)
                    if state != SchemaState.CURRENT:
                        raise
                return
        if state != SchemaState.CURRENT:
            raise SchemaOutdated(f"{self.title} {where} is {self.describe(state, revision)}")

    def _config(self, connection: sa.Connection):
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", self.location)
        config.attributes["connection"] = connection
        config.attributes["version_table"] = self.version_table
        return config


@dataclasses.dataclass
class Database:
    """A schema's migrations and the database a configuration keeps that schema in."""

    migrations: SchemaMigrations
    engine: sa.Engine

    @property
    def where(self) -> str:
        """The database's URL, password hidden."""
        return self.engine.url.render_as_string(hide_password=True)

    def close(self) -> None:
        """Close the engine's connections."""
        self.engine.dispose()


#: One thread of a process creates a schema at a time (the worker's threads open stores too).
_CREATING = threading.Lock()


@contextlib.contextmanager
def _alembic_quiet() -> Iterator[None]:
    """Keep Alembic's INFO lines (each migration it runs) out of the log of a process that
    creates a new database as it starts: only ``keramos db upgrade`` reports migrations."""
    alembic_log = logging.getLogger("alembic")
    level = alembic_log.level
    alembic_log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        alembic_log.setLevel(level)


@contextlib.contextmanager
def _one_writer(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A connection in a transaction that holds the database's write lock from its start.

    PostgreSQL and MySQL run DDL in the migration's transaction; processes migrating at once
    conflict and the loser rolls back. SQLite's driver would commit each ``CREATE`` on its own:
    a file database gets ``BEGIN IMMEDIATE`` instead, so that a second process waits for the
    first and then finds the schema made (an in-memory database has no other process).
    """
    url = engine.url
    if engine.dialect.name != "sqlite" or url.database in (None, "", ":memory:"):
        with engine.begin() as connection:
            yield connection
        return
    locking = sa.create_engine(url, connect_args={"isolation_level": None, "timeout": 60}, poolclass=sa.pool.NullPool)

    @sa.event.listens_for(locking, "begin")
    def _immediately(connection: sa.Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    try:
        with locking.begin() as connection:
            yield connection
    finally:
        locking.dispose()


def script_location(module_file: str, directory: str = "migrations") -> str:
    """The script directory ``directory`` beside the module ``module_file`` (its ``__file__``)."""
    return os.path.join(os.path.dirname(os.path.abspath(module_file)), directory)


def run_environment() -> None:
    """The body of every script directory's ``env.py``: run the migrations on the connection
    and version table :meth:`SchemaMigrations.upgrade` handed over (never from a URL of its own)."""
    from alembic import context

    attributes = context.config.attributes
    context.configure(
        connection=attributes["connection"],
        version_table=attributes["version_table"],
    )
    with context.begin_transaction():
        context.run_migrations()


def complete_schema(connection: sa.Connection, metadata: sa.MetaData) -> list[str]:
    """Create ``metadata``'s missing tables and add its missing columns to the existing ones.

    What the unversioned releases did at every start (a field added to a record became a
    nullable column), kept for first revisions: bringing any unversioned database to the first
    revision. Returns ``table.column`` of each column added.
    """
    metadata.create_all(connection, checkfirst=True)
    inspector = sa.inspect(connection)
    added = []
    for table in metadata.sorted_tables:
        existing = {column["name"] for column in inspector.get_columns(table.name)}
        for column in _missing(table.columns, existing):
            ddl = sa.schema.CreateColumn(column).compile(dialect=connection.dialect)
            connection.execute(sa.text(f"ALTER TABLE {table.name} ADD COLUMN {ddl}"))
            added.append(f"{table.name}.{column.name}")
    return added


def _missing(columns: Iterable[sa.Column], existing: set[str]) -> list[sa.Column]:
    return [column for column in columns if column.name not in existing]
