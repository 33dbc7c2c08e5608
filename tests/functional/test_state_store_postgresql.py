"""The SQLAlchemy state store on the local PostgreSQL server: the same behaviour suite."""

from __future__ import annotations

import os
import uuid

import pytest
import sqlalchemy as sa

from keramos.framework.config import make_conf
from keramos.framework.testing import InProcessWorker
from keramos.plugins.state_store.sqlalchemy import SQLAlchemyStateStore
from tests.conftest import port_open, require
from tests.unit.test_state_store import insert_race, state_store_behaviour

SERVER = os.environ.get("KERAMOS_TEST_POSTGRESQL_SERVER", "postgresql+psycopg2://postgres@127.0.0.1:5432")


@pytest.fixture
def postgresql_url():
    require(port_open("127.0.0.1", 5432), "PostgreSQL on 127.0.0.1:5432")
    name = f"keramos_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(f"{SERVER}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield f"{SERVER}/{name}"
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def test_state_store_behaviour_on_postgresql(postgresql_url):
    conf = make_conf(config_files=[], overrides={"state_store": {"connection": postgresql_url}})
    store = SQLAlchemyStateStore(conf)
    try:
        state_store_behaviour(store)
    finally:
        store.close()


def test_of_many_threads_inserting_one_key_on_postgresql_exactly_one_inserts(postgresql_url):
    conf = make_conf(config_files=[], overrides={"state_store": {"connection": postgresql_url}})
    store = SQLAlchemyStateStore(conf)
    try:
        assert sorted(insert_race(store)) == [False] * 7 + [True]
    finally:
        store.close()


def test_a_worker_runs_flows_with_state_and_persistence_on_postgresql(postgresql_url):
    overrides = {
        "state_store": {"connection": postgresql_url},
        "persistence": {"connection": postgresql_url},
    }
    with InProcessWorker(conf_overrides=overrides) as worker:
        result = worker.cast_and_wait("create_amphora", {"amphora_id": "pg-1", "image_id": "i"})
        assert result["amphora"]["status"] == "READY"
