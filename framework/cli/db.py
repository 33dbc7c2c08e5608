"""``keramos db upgrade`` and ``keramos db current``: the schema versions of Keramos's databases.

Two schemas, each with its own Alembic migrations and version table: the state store's (when
``[drivers] state_store`` keeps one, as ``sqlalchemy`` does) and the flow persistence's (when
``[persistence] enabled``). See doc/upgrades.md.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from oslo_config import cfg

from keramos.framework import loader
from keramos.framework.errors import KeramosError
from keramos.framework.migrations import Database, SchemaState


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "db",
        help="upgrade the state store and flow persistence schemas, or show their revisions",
        description="Keramos versions the schemas of the state store and the flow persistence "
        "with Alembic. A worker refuses a database older than its code; 'upgrade' brings it to "
        "the newest revision, keeping every row (stop the workers first).",
    )
    commands = parser.add_subparsers(dest="db_command", metavar="SUBCOMMAND", required=True)
    upgrade = commands.add_parser(
        "upgrade",
        help="run the migrations each database lacks (unversioned ones are adopted)",
        description="Upgrade the state store and the flow persistence of this configuration to "
        "the newest revision; a database made before the schemas were versioned is completed "
        "and stamped, its rows left as they are. Stop the workers first.",
    )
    upgrade.set_defaults(func=upgrade_databases)
    current = commands.add_parser(
        "current",
        help="show each database's revision; exit 1 if one needs 'keramos db upgrade'",
        description="Print the revision of each schema of this configuration and whether it is "
        "the newest. Exit 0 when no database needs an upgrade, 1 otherwise.",
    )
    current.set_defaults(func=show_current)


def databases(conf: cfg.ConfigOpts) -> Iterator[Database]:
    """The versioned databases of ``conf``, each closed once the caller moves on."""
    store = loader.load_driver_class("state_store", conf.drivers.state_store)
    found = [store.database(conf)]
    if conf.persistence.enabled:
        from keramos.framework.persistence import MIGRATIONS, LeanSQLBackend

        try:
            backend = LeanSQLBackend(
                {"connection": conf.persistence.connection, "synchronous": conf.persistence.synchronous}
            )
        except ValueError as error:
            raise KeramosError(f"[persistence] {error}") from None
        found.append(Database(MIGRATIONS, backend.engine))
    for database in found:
        if database is None:
            continue
        try:
            yield database
        finally:
            database.close()


def _failed(what: str, database: Database, error: Exception) -> KeramosError:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return KeramosError(f"cannot {what} the {database.migrations.title} {database.where}: {reason}")


def upgrade_databases(args: argparse.Namespace) -> int:
    import sqlalchemy as sa

    from keramos.framework.persistence import make_sqlite_directory

    for database in databases(args.conf()):
        migrations = database.migrations
        try:
            make_sqlite_directory(database.engine.url)
            state, before = migrations.state(database.engine)
            _, after = migrations.upgrade(database.engine)
        except (OSError, sa.exc.SQLAlchemyError) as error:
            raise _failed("upgrade", database, error) from None
        if before == after:
            print(f"{migrations.title} {database.where}: at {after}, nothing to do")
        else:
            print(f"{migrations.title} {database.where}: {before or state} -> {after}")
    return 0


def show_current(args: argparse.Namespace) -> int:
    import sqlalchemy as sa

    outdated = 0
    for database in databases(args.conf()):
        migrations = database.migrations
        try:
            state, revision = migrations.state(database.engine)
        except sa.exc.SQLAlchemyError as error:
            raise _failed("read", database, error) from None
        print(f"{migrations.title} {database.where}: {migrations.describe(state, revision)}")
        outdated += state in (SchemaState.UNVERSIONED, SchemaState.BEHIND, SchemaState.AHEAD)
    return 1 if outdated else 0
