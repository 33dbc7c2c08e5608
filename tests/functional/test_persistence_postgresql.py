"""Tests of keramos.framework.persistence on a PostgreSQL server.

The server is taken from ``KERAMOS_TEST_POSTGRESQL_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``). Each test module run creates
its own database and drops it at the end. Without a reachable server the
tests are skipped, and ``test_server_is_reachable`` fails when ``CI=true``.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import futurist
import pytest
import sqlalchemy as sa
from taskflow import engines, exceptions, states, task
from taskflow.patterns import linear_flow, unordered_flow
from taskflow.persistence import models
from taskflow.types import failure

from keramos.framework import persistence
from keramos.framework.persistence import LeanSQLBackend, get_backend

CRASH_HELPER = Path(__file__).parents[1] / "unit" / "persistence_crash_flow.py"
SERVER_URL = os.environ.get("KERAMOS_TEST_POSTGRESQL_URL", "postgresql://postgres@127.0.0.1:5432/test")


IN_CI = os.environ.get("CI") == "true"


def _admin_engine() -> sa.engine.Engine:
    url = sa.engine.make_url(SERVER_URL)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg2")
    return sa.create_engine(
        url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool, connect_args={"connect_timeout": 5}
    )


def _unreachable() -> str | None:
    """Return why the server cannot be used, or None when it answers."""
    try:
        with _admin_engine().connect() as db:
            db.execute(sa.text("SELECT 1"))
    except Exception as err:  # any driver or connection error means "no server"
        return f"PostgreSQL server {SERVER_URL} is unreachable: {str(err).splitlines()[0]}"
    return None


UNREACHABLE = _unreachable()


def test_server_is_reachable() -> None:
    if UNREACHABLE and not IN_CI:
        pytest.skip(UNREACHABLE)
    assert UNREACHABLE is None, UNREACHABLE


@pytest.fixture(scope="module")
def db_url() -> Iterator[str]:
    if UNREACHABLE:
        pytest.skip(UNREACHABLE)
    admin = _admin_engine()
    name = f"keramos_persistence_{uuid.uuid4().hex[:12]}"
    with admin.connect() as db:
        db.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield SERVER_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as db:
            db.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def backend(db_url: str) -> Iterator[LeanSQLBackend]:
    be = get_backend(db_url)
    yield be
    with contextlib.closing(be.get_connection()) as conn:
        conn.clear_all()
    be.close()


@pytest.fixture
def conn(backend: LeanSQLBackend) -> Iterator[persistence.Connection]:
    with contextlib.closing(backend.get_connection()) as connection:
        yield connection


def _book() -> models.LogBook:
    book = models.LogBook("book", uuid="book-1")
    book.meta = {"owner": "tests"}
    flow_detail = models.FlowDetail("flow", uuid="flow-1")
    book.add(flow_detail)
    done = models.TaskDetail("done", uuid="atom-done")
    done.state, done.results = states.SUCCESS, {"ids": [1, 2]}
    failed = models.TaskDetail("failed", uuid="atom-failed")
    failed.state = states.FAILURE
    failed.failure = failure.Failure.from_exception(RuntimeError("boom"))
    flow_detail.add(done)
    flow_detail.add(failed)
    return book


def test_uses_postgresql(backend: LeanSQLBackend) -> None:
    assert backend.engine.dialect.name == "postgresql"


def test_round_trip(conn: persistence.Connection) -> None:
    book = _book()
    conn.save_logbook(book)
    loaded = conn.get_logbook("book-1")
    assert (loaded.name, loaded.meta, loaded.created_at) == ("book", {"owner": "tests"}, book.created_at)
    flow_detail = loaded.find("flow-1")
    assert flow_detail.find("atom-done").results == {"ids": [1, 2]}
    failed = flow_detail.find("atom-failed")
    assert failed.failure.check(RuntimeError) is RuntimeError
    assert failed.failure.exception_str == "boom"
    assert [b.uuid for b in conn.get_logbooks()] == ["book-1"]


def test_updates_write_through_and_upsert(conn: persistence.Connection) -> None:
    conn.save_logbook(_book())
    ad = conn.get_atom_details("atom-failed")
    ad.failure, ad.state, ad.results = None, states.SUCCESS, [3]
    conn.update_atom_details(ad)
    flow_detail = conn.get_flow_details("flow-1")
    flow_detail.state = states.SUCCESS
    flow_detail.add(models.TaskDetail("added", uuid="atom-added"))
    conn.update_flow_details(flow_detail)
    renamed = models.LogBook("renamed", uuid="book-1")
    conn.save_logbook(renamed)
    loaded = conn.get_logbook("book-1")
    assert loaded.name == "renamed"
    stored = loaded.find("flow-1")
    assert stored.state == states.SUCCESS
    assert {ad.name for ad in stored} == {"done", "failed", "added"}
    assert (stored.find("atom-failed").results, stored.find("atom-failed").failure) == ([3], None)


def test_not_found_and_cascade(backend: LeanSQLBackend, conn: persistence.Connection) -> None:
    with pytest.raises(exceptions.NotFound):
        conn.update_atom_details(models.TaskDetail("a", uuid="missing"))
    with pytest.raises(exceptions.NotFound):
        conn.update_flow_details(models.FlowDetail("f", uuid="missing"))
    with pytest.raises(exceptions.NotFound):
        conn.get_logbook("missing")
    conn.save_logbook(_book())
    conn.destroy_logbook("book-1")
    with pytest.raises(exceptions.NotFound):
        conn.destroy_logbook("book-1")
    with pytest.raises(exceptions.NotFound):
        conn.get_atom_details("atom-done")
    with backend.engine.connect() as db:
        count = db.execute(sa.select(sa.func.count()).select_from(persistence.ATOMDETAILS)).scalar()
    assert count == 0


class Add(task.Task):
    """Return x plus a constant."""

    def __init__(self, name: str, add: int) -> None:
        super().__init__(name=name, provides=f"{name}_out")
        self._add = add

    def execute(self, x: int) -> int:
        return x + self._add


@pytest.mark.parametrize("engine_name", ["serial", "parallel"])
def test_engine_persists_results(conn: persistence.Connection, backend: LeanSQLBackend, engine_name: str) -> None:
    pattern = linear_flow if engine_name == "serial" else unordered_flow
    flow = pattern.Flow(engine_name).add(*[Add(f"t{i}", i) for i in range(6)])
    with futurist.ThreadPoolExecutor(max_workers=4) as executor:
        options = {"executor": executor} if engine_name == "parallel" else {}
        engine = engines.load(
            flow, store={"x": 5}, backend=backend, book=models.LogBook("b"), engine=engine_name, **options
        )
        engine.run()
    flow_detail = conn.get_flow_details(engine.storage.flow_uuid)
    assert flow_detail.state == states.SUCCESS
    results = {ad.name: ad.results for ad in flow_detail if ad.name.startswith("t")}
    assert results == {f"t{i}": 5 + i for i in range(6)}


def test_flow_killed_with_sigkill_resumes(backend: LeanSQLBackend, db_url: str, tmp_path: Path) -> None:
    def helper(mode: str) -> subprocess.CompletedProcess:
        command = [sys.executable, str(CRASH_HELPER), db_url, str(tmp_path), mode]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    first = helper("start")
    assert first.returncode == -9, first.stderr
    second = helper("resume")
    assert second.returncode == 0, second.stderr
    runs = {f"t{i}": len((tmp_path / f"ran-t{i}").read_text().splitlines()) for i in range(1, 7)}
    assert runs == {"t1": 1, "t2": 1, "t3": 2, "t4": 1, "t5": 1, "t6": 1}
    ids = json.loads((tmp_path / "ids.json").read_text())
    with contextlib.closing(backend.get_connection()) as conn:
        flow_detail = conn.get_flow_details(ids["flow"])
    assert flow_detail.state == states.SUCCESS
    assert {ad.name: ad.results for ad in flow_detail} == {f"t{i}": i for i in range(1, 7)}


@pytest.mark.parametrize(("mode", "expected"), [("normal", "off"), ("full", "on")])
def test_the_synchronous_mode_sets_how_durable_each_commit_is(db_url: str, mode: str, expected: str) -> None:
    backend = get_backend(db_url, synchronous=mode)
    try:
        with backend.engine.connect() as db:
            assert db.execute(sa.text("SHOW synchronous_commit")).scalar() == expected
    finally:
        backend.close()
