"""Versioned schemas on SQLite: creation, refusal of older databases, ``keramos db``."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest
import sqlalchemy as sa
from alembic.config import Config
from alembic.script import ScriptDirectory

from keramos.framework import persistence
from keramos.framework.config import make_conf
from keramos.framework.migrations import SchemaOutdated
from keramos.framework.records import AmphoraRecord
from keramos.plugins.state_store import sqlalchemy as state_sql
from tests.unit.migration_helpers import (
    SCHEMAS,
    check_empty_database_is_created_at_head,
    check_previous_release_is_refused_then_upgraded,
    run_keramos,
    schema_differences,
    write_config,
)


@pytest.mark.parametrize("migrations", [schema[0] for schema in SCHEMAS], ids=lambda m: m.title)
def test_recorded_head_and_revisions_are_the_script_directory_s(migrations):
    config = Config()
    config.set_main_option("script_location", migrations.location)
    script = ScriptDirectory.from_config(config)
    assert script.get_heads() == [migrations.head]
    oldest_first = [revision.revision for revision in reversed(list(script.walk_revisions()))]
    assert tuple(oldest_first) == migrations.revisions


def test_a_store_opening_an_empty_database_creates_the_schema_the_code_uses(tmp_path):
    url = f"sqlite:///{tmp_path}/state.sqlite"
    conf = make_conf(config_files=[], overrides={"state_store": {"connection": url}})
    state_sql.SQLAlchemyStateStore(conf).close()
    persistence.get_backend(url).close()
    assert schema_differences(url) == []


def test_db_upgrade_on_empty_databases(capsys, tmp_path):
    check_empty_database_is_created_at_head(capsys, tmp_path, f"sqlite:///{tmp_path}/both.sqlite")


def test_previous_release_database_is_refused_then_upgraded_with_its_rows(capsys, tmp_path):
    check_previous_release_is_refused_then_upgraded(capsys, tmp_path, f"sqlite:///{tmp_path}/old.sqlite")


def test_an_older_unversioned_database_missing_columns_is_completed(capsys, tmp_path):
    """Releases before versioning added a record field's column at start-up; a database from
    before such a field is completed by the upgrade too."""
    database = tmp_path / "keramos.sqlite"
    with sqlite3.connect(database) as old:
        old.execute(
            "CREATE TABLE keramos_amphorae (amphora_id VARCHAR(255) PRIMARY KEY, status TEXT,"
            " created_at DATETIME, updated_at DATETIME)"
        )
        old.execute("INSERT INTO keramos_amphorae VALUES ('old-1', 'READY', NULL, NULL)")
    config = write_config(tmp_path, f"sqlite:///{database}")
    assert run_keramos(capsys, config, "db", "upgrade")[0] == 0
    conf = make_conf(["--config-file", str(config)], config_files=[])
    store = state_sql.SQLAlchemyStateStore(conf)
    try:
        store.update(AmphoraRecord, "old-1", compute_id="c-1")
        assert store.get(AmphoraRecord, "old-1").compute_id == "c-1"
        assert store.get(AmphoraRecord, "old-1").status == "READY"
    finally:
        store.close()


def test_a_database_upgraded_by_a_newer_keramos_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path}/new.sqlite"
    persistence.get_backend(url).close()
    engine = sa.create_engine(url)
    with engine.begin() as db:
        db.execute(sa.text("UPDATE keramos_persistence_version SET version_num = 'persistence_9999'"))
    engine.dispose()
    with pytest.raises(SchemaOutdated, match="persistence_9999, which this Keramos does not know"):
        persistence.get_backend(url)


def test_db_reports_an_unreachable_database_in_one_line(capsys, tmp_path):
    config = write_config(tmp_path, f"sqlite:///{tmp_path}/missing-dir/x/y.sqlite")
    (tmp_path / "missing-dir").write_text("a file where a directory should be")
    code, _, err = run_keramos(capsys, config, "db", "current")
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and "keramos db: error:" in err


OPEN_BOTH = """
import sys
import sqlalchemy as sa
from keramos.framework.persistence import MIGRATIONS as flows
from keramos.plugins.state_store.sqlalchemy import MIGRATIONS as store
engine = sa.create_engine(sys.argv[1])
store.ensure(engine, "racing")
flows.ensure(engine, "racing")
"""


def test_processes_creating_one_new_sqlite_database_at_once_all_start_on_one_schema(tmp_path):
    url = f"sqlite:///{tmp_path}/raced.sqlite"
    racers = [
        subprocess.Popen([sys.executable, "-c", OPEN_BOTH, url], stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    for racer in racers:
        _, err = racer.communicate(timeout=120)
        assert racer.returncode == 0, err
    engine = sa.create_engine(url)
    with engine.connect() as db:
        assert db.execute(sa.text("SELECT version_num FROM keramos_state_store_version")).all() == [
            (state_sql.MIGRATIONS.head,)
        ]
        assert db.execute(sa.text("SELECT version_num FROM keramos_persistence_version")).all() == [
            (persistence.MIGRATIONS.head,)
        ]
    engine.dispose()
    assert schema_differences(url) == []
