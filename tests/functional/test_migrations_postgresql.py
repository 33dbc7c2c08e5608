"""Versioned schemas on PostgreSQL: the previous release's database upgraded with its rows."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tests.functional.jobboard_helpers import postgresql_database
from tests.unit.migration_helpers import (
    check_empty_database_is_created_at_head,
    check_previous_release_is_refused_then_upgraded,
)


@pytest.fixture
def fresh_pg_url():
    """A PostgreSQL database of the test's own: each test starts from nothing."""
    yield from postgresql_database()


def test_previous_release_database_is_refused_then_upgraded_with_its_rows(capsys, tmp_path, fresh_pg_url):
    check_previous_release_is_refused_then_upgraded(capsys, tmp_path, fresh_pg_url)


def test_db_upgrade_on_an_empty_database(capsys, tmp_path, fresh_pg_url):
    check_empty_database_is_created_at_head(capsys, tmp_path, fresh_pg_url)
    engine = sa.create_engine(fresh_pg_url)
    with engine.connect() as db:
        tables = set(sa.inspect(db).get_table_names())
    engine.dispose()
    assert {"keramos_state_store_version", "keramos_persistence_version", "keramos_tasks"} <= tables
