"""Tests of keramos.framework.persistence on SQLite files."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
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

CRASH_HELPER = Path(__file__).with_name("persistence_crash_flow.py")


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'flows.db'}"


@pytest.fixture
def backend(db_url: str) -> Iterator[LeanSQLBackend]:
    be = get_backend(db_url)
    yield be
    be.close()


@pytest.fixture
def conn(backend: LeanSQLBackend) -> Iterator[persistence.Connection]:
    with contextlib.closing(backend.get_connection()) as connection:
        yield connection


def _failure(message: str) -> failure.Failure:
    try:
        raise RuntimeError(message)
    except RuntimeError:
        return failure.Failure()


def _book() -> models.LogBook:
    book = models.LogBook("book", uuid="book-1")
    book.meta = {"owner": "tests"}
    flow_detail = models.FlowDetail("flow", uuid="flow-1")
    flow_detail.state = states.RUNNING
    flow_detail.meta = {"factory": {"name": "f"}}
    book.add(flow_detail)
    done = models.TaskDetail("done", uuid="atom-done")
    done.state = states.SUCCESS
    done.results = {"ids": [1, 2], "name": "x"}
    failed = models.TaskDetail("failed", uuid="atom-failed")
    failed.state = states.FAILURE
    failed.failure = _failure("boom")
    retry = models.RetryDetail("retry", uuid="atom-retry")
    retry.results = [(1, {}), (2, {"failed": _failure("try again")})]
    for ad in (done, failed, retry):
        flow_detail.add(ad)
    return book


def _table_counts(backend: LeanSQLBackend) -> dict[str, int]:
    with backend.engine.connect() as db:
        return {
            t.name: db.execute(sa.select(sa.func.count()).select_from(t)).scalar()
            for t in persistence.METADATA.sorted_tables
        }


def test_logbook_round_trip(conn: persistence.Connection) -> None:
    book = _book()
    assert conn.save_logbook(book) is book
    loaded = conn.get_logbook("book-1")
    assert (loaded.name, loaded.meta, loaded.created_at) == ("book", {"owner": "tests"}, book.created_at)
    flow_detail = loaded.find("flow-1")
    expected = ("flow", states.RUNNING, {"factory": {"name": "f"}})
    assert (flow_detail.name, flow_detail.state, flow_detail.meta) == expected
    assert {ad.uuid for ad in flow_detail} == {"atom-done", "atom-failed", "atom-retry"}
    assert flow_detail.find("atom-done").results == {"ids": [1, 2], "name": "x"}
    assert len(conn.get_logbook("book-1", lazy=True)) == 0


def test_atom_details_keep_failures_results_and_type(conn: persistence.Connection) -> None:
    conn.save_logbook(_book())
    failed = conn.get_atom_details("atom-failed")
    assert isinstance(failed, models.TaskDetail)
    assert failed.state == states.FAILURE
    assert failed.failure.check(RuntimeError) is RuntimeError
    assert failed.failure.exception_str == "boom"
    assert "RuntimeError" in failed.failure.traceback_str
    retry = conn.get_atom_details("atom-retry")
    assert isinstance(retry, models.RetryDetail)
    # RetryDetail.from_dict replaces the data of an entry that has failures
    # (taskflow reuses the loop variable), so only check what it keeps.
    [(first, no_failures), (_second, failures)] = retry.results
    assert (first, no_failures) == (1, {})
    assert failures["failed"].exception_str == "try again"


def test_update_atom_details_writes_through(conn: persistence.Connection) -> None:
    conn.save_logbook(_book())
    ad = conn.get_atom_details("atom-failed")
    ad.failure = None
    ad.revert_failure = _failure("revert broke")
    ad.state, ad.results = states.REVERT_FAILURE, 42
    assert conn.update_atom_details(ad) is ad
    stored = conn.get_atom_details("atom-failed")
    assert (stored.state, stored.results, stored.failure) == (states.REVERT_FAILURE, 42, None)
    assert stored.revert_failure.exception_str == "revert broke"


@pytest.mark.parametrize("read", ["get_logbook", "get_flow_details", "get_atom_details"])
def test_an_atom_another_process_changed_is_written_back_after_a_read(db_url: str, read: str) -> None:
    """Two workers on one database (a jobboard job claimed again): what one process wrote last
    is not what the row holds once the other wrote it, so it must not skip the write."""
    first, second = get_backend(db_url), get_backend(db_url)
    try:
        with contextlib.closing(first.get_connection()) as one, contextlib.closing(
            second.get_connection()
        ) as two:
            one.save_logbook(_book())
            mine = one.get_atom_details("atom-done")
            mine.state = states.RUNNING
            one.update_atom_details(mine)
            theirs = two.get_atom_details("atom-done")
            theirs.state = states.SUCCESS
            two.update_atom_details(theirs)
            reread = {
                "get_logbook": lambda: one.get_logbook("book-1").find("flow-1").find("atom-done"),
                "get_flow_details": lambda: one.get_flow_details("flow-1").find("atom-done"),
                "get_atom_details": lambda: one.get_atom_details("atom-done"),
            }[read]()
            assert reread.state == states.SUCCESS
            reread.state = states.RUNNING
            one.update_atom_details(reread)
            assert two.get_atom_details("atom-done").state == states.RUNNING
    finally:
        first.close()
        second.close()


def _count_atom_writes(backend: LeanSQLBackend, monkeypatch) -> list[str]:
    writes: list[str] = []
    real_writing = backend._writing

    def counting(what: str):
        writes.append(what)
        return real_writing(what)

    monkeypatch.setattr(backend, "_writing", counting)
    return writes


def test_a_progress_only_update_is_not_written_but_any_other_change_is(
    backend: LeanSQLBackend, conn: persistence.Connection, monkeypatch
) -> None:
    conn.save_logbook(_book())
    writes = _count_atom_writes(backend, monkeypatch)
    ad = conn.get_atom_details("atom-done")
    ad.state = states.RUNNING
    conn.update_atom_details(ad)
    ad.meta = {**ad.meta, "progress": 0.5, "progress_details": {"at": 1}}
    conn.update_atom_details(ad)
    assert len(writes) == 1
    assert conn.get_atom_details("atom-done").meta.get("progress") is None

    ad.state, ad.results = states.SUCCESS, {"ids": [3]}
    conn.update_atom_details(ad)
    ad.meta = {**ad.meta, "owner": "kept"}
    conn.update_atom_details(ad)
    assert len(writes) == 3
    stored = conn.get_atom_details("atom-done")
    assert (stored.state, stored.results, stored.meta["owner"]) == (states.SUCCESS, {"ids": [3]}, "kept")
    assert stored.meta["progress"] == 0.5


def test_a_flow_update_writes_only_the_atoms_that_changed_since_they_were_read_or_written(
    backend: LeanSQLBackend, conn: persistence.Connection, monkeypatch
) -> None:
    upserted: list[int] = []
    real_upsert = backend._upsert

    def counting(cursor, table, rows):
        if table is persistence.ATOMDETAILS:
            upserted.append(len(rows))
        return real_upsert(cursor, table, rows)

    monkeypatch.setattr(backend, "_upsert", counting)
    for _ in range(2):
        conn.save_logbook(_book())
        upserted.clear()
        flow_detail = conn.get_flow_details("flow-1")
        conn.update_flow_details(flow_detail)
        flow_detail.state = states.SUCCESS
        conn.update_flow_details(flow_detail)
        flow_detail.find("atom-done").results = {"ids": [9]}
        conn.update_flow_details(flow_detail)
        assert upserted == [0, 0, 1]
        stored = conn.get_flow_details("flow-1")
        assert stored.state == states.SUCCESS
        assert stored.find("atom-done").results == {"ids": [9]}
        conn.clear_all()


def test_a_failed_atom_write_is_tried_again_next_time(conn: persistence.Connection) -> None:
    ad = models.TaskDetail("orphan", uuid="atom-orphan")
    for _ in range(2):
        with pytest.raises(exceptions.NotFound):
            conn.update_atom_details(ad)


def test_a_flow_run_writes_each_task_twice_and_stores_its_final_state_and_result(
    backend: LeanSQLBackend, monkeypatch
) -> None:
    calls: list[str] = []

    class Step(task.Task):
        def execute(self) -> str:
            calls.append(self.name)
            return self.name

    flow = linear_flow.Flow("f").add(Step("one", provides="a"), Step("two", provides="b"))
    book = models.LogBook("book")
    flow_detail = models.FlowDetail("f", uuid="flow-resume")
    book.add(flow_detail)
    with contextlib.closing(backend.get_connection()) as connection:
        connection.save_logbook(book)
    engine = engines.load(flow, flow_detail=flow_detail, book=book, backend=backend)
    writes = _count_atom_writes(backend, monkeypatch)
    engine.run()
    atom_writes = [what for what in writes if what.startswith("updating atom details")]
    assert len(atom_writes) == 4  # RUNNING and SUCCESS of each task; progress 0.0 and 1.0 skipped
    with contextlib.closing(backend.get_connection()) as connection:
        stored = {ad.name: (ad.state, ad.results) for ad in connection.get_flow_details("flow-resume")}
    assert stored == {"one": (states.SUCCESS, "one"), "two": (states.SUCCESS, "two")}
    assert calls == ["one", "two"]


def test_update_flow_details_stores_new_atoms(conn: persistence.Connection) -> None:
    conn.save_logbook(_book())
    flow_detail = conn.get_flow_details("flow-1")
    flow_detail.state = states.SUCCESS
    flow_detail.add(models.TaskDetail("added", uuid="atom-added"))
    assert conn.update_flow_details(flow_detail) is flow_detail
    stored = conn.get_flow_details("flow-1")
    assert stored.state == states.SUCCESS
    assert {ad.name for ad in stored} == {"done", "failed", "retry", "added"}
    assert len(conn.get_flow_details("flow-1", lazy=True)) == 0
    assert {ad.name for ad in conn.get_atoms_for_flow("flow-1")} == {"done", "failed", "retry", "added"}


def test_save_logbook_again_replaces_and_keeps_missing_flows(conn: persistence.Connection) -> None:
    conn.save_logbook(_book())
    book = models.LogBook("renamed", uuid="book-1")
    book.add(models.FlowDetail("second", uuid="flow-2"))
    conn.save_logbook(book)
    loaded = conn.get_logbook("book-1")
    assert loaded.name == "renamed"
    assert {fd.uuid for fd in loaded} == {"flow-1", "flow-2"}
    assert {fd.uuid for fd in conn.get_flows_for_book("book-1")} == {"flow-1", "flow-2"}


def test_generic_upsert_fallback(backend: LeanSQLBackend, conn: persistence.Connection) -> None:
    # Dialects without a native upsert update by uuid, then insert when no row matched.
    backend._upserts = {table: (None, update, insert) for table, (_, update, insert) in backend._upserts.items()}
    conn.save_logbook(_book())
    book = conn.get_logbook("book-1")
    book.find("flow-1").add(models.TaskDetail("added", uuid="atom-added"))
    book.find("flow-1").find("atom-done").results = "changed"
    conn.save_logbook(book)
    loaded = conn.get_flow_details("flow-1")
    assert {ad.name for ad in loaded} == {"done", "failed", "retry", "added"}
    assert loaded.find("atom-done").results == "changed"


def test_get_logbooks(conn: persistence.Connection) -> None:
    conn.save_logbook(_book())
    conn.save_logbook(models.LogBook("empty", uuid="book-2"))
    books = {book.uuid: book for book in conn.get_logbooks()}
    assert set(books) == {"book-1", "book-2"}
    assert len(books["book-1"].find("flow-1")) == 3
    assert all(len(book) == 0 for book in conn.get_logbooks(lazy=True))


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.get_logbook("missing"),
        lambda c: c.get_flow_details("missing"),
        lambda c: c.get_atom_details("missing"),
        lambda c: c.destroy_logbook("missing"),
        lambda c: c.update_flow_details(models.FlowDetail("f", uuid="missing")),
        lambda c: c.update_atom_details(models.TaskDetail("a", uuid="missing")),
    ],
)
def test_missing_items_raise_not_found(conn: persistence.Connection, call) -> None:
    with pytest.raises(exceptions.NotFound, match="missing"):
        call(conn)


def test_unknown_parents_have_no_children(conn: persistence.Connection) -> None:
    assert list(conn.get_flows_for_book("missing")) == []
    assert list(conn.get_atoms_for_flow("missing")) == []


def test_destroy_logbook_cascades(backend: LeanSQLBackend, conn: persistence.Connection) -> None:
    conn.save_logbook(_book())
    conn.save_logbook(models.LogBook("other", uuid="book-2"))
    conn.destroy_logbook("book-1")
    with pytest.raises(exceptions.NotFound):
        conn.get_flow_details("flow-1")
    with pytest.raises(exceptions.NotFound):
        conn.get_atom_details("atom-done")
    assert _table_counts(backend) == {"keramos_logbooks": 1, "keramos_flowdetails": 0, "keramos_atomdetails": 0}


def test_clear_all(backend: LeanSQLBackend, conn: persistence.Connection) -> None:
    conn.save_logbook(_book())
    conn.clear_all()
    assert set(_table_counts(backend).values()) == {0}
    assert list(conn.get_logbooks()) == []


def test_upgrade_is_idempotent_and_data_survives_reopen(db_url: str, conn: persistence.Connection) -> None:
    conn.save_logbook(_book())
    conn.upgrade()
    conn.validate()
    assert conn.backend.get_connection().backend is conn.backend
    reopened = get_backend(db_url)
    try:
        with contextlib.closing(reopened.get_connection()) as other:
            assert other.get_atom_details("atom-done").results == {"ids": [1, 2], "name": "x"}
    finally:
        reopened.close()


def test_value_that_is_not_json_is_a_storage_failure(conn: persistence.Connection) -> None:
    conn.save_logbook(_book())
    ad = conn.get_atom_details("atom-done")
    ad.results = object()
    with pytest.raises(exceptions.StorageFailure):
        conn.update_atom_details(ad)


@pytest.mark.parametrize("mode, expected", [("normal", 1), ("full", 2), ("FULL", 2)])
def test_sqlite_settings(tmp_path: Path, mode: str, expected: int) -> None:
    be = get_backend(f"sqlite:///{tmp_path / 'settings.db'}", synchronous=mode)
    try:
        assert isinstance(be.engine.pool, sa.pool.QueuePool)
        with be.engine.connect() as db:
            pragmas = {
                name: db.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
            }
        assert pragmas == {"journal_mode": "wal", "synchronous": expected, "foreign_keys": 1, "busy_timeout": 30000}
    finally:
        be.close()


def test_in_memory_database() -> None:
    be = get_backend("sqlite://")
    try:
        with contextlib.closing(be.get_connection()) as conn:
            conn.save_logbook(_book())
            assert len(conn.get_logbook("book-1").find("flow-1")) == 3
    finally:
        be.close()


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        ({"connection": "sqlite:///x.db", "synchronous": "fast"}, "'fast'"),
        ({"connection": "sqlite:///x.db", "synchronous": "off"}, "'off'"),
        ({"connection": ""}, "''"),
        ({"connection": "not a url"}, "'not a url'"),
        ({"connection": "nosuchdb://host/db"}, "'nosuchdb://host/db'"),
    ],
)
def test_get_backend_rejects_bad_values(kwargs: dict, bad: str) -> None:
    with pytest.raises(ValueError, match=bad):
        get_backend(**kwargs)


def test_backend_rejects_bad_busy_timeout() -> None:
    with pytest.raises(ValueError, match="'soon'"):
        LeanSQLBackend({"connection": "sqlite://", "busy_timeout": "soon"})


class Add(task.Task):
    """Return x plus a constant."""

    def __init__(self, name: str, add: int) -> None:
        super().__init__(name=name, provides=f"{name}_out")
        self._add = add

    def execute(self, x: int) -> int:
        return x + self._add


def _stored_results(conn: persistence.Connection, fd_uuid: str) -> tuple[str, dict]:
    flow_detail = conn.get_flow_details(fd_uuid)
    return flow_detail.state, {ad.name: (ad.state, ad.results) for ad in flow_detail if ad.name.startswith("t")}


def test_serial_engine_persists_results(conn: persistence.Connection, backend: LeanSQLBackend) -> None:
    flow = linear_flow.Flow("serial").add(*[Add(f"t{i}", i) for i in range(6)])
    book = models.LogBook("serial-book")
    engine = engines.load(flow, store={"x": 10}, backend=backend, book=book, engine="serial")
    engine.run()
    state, results = _stored_results(conn, engine.storage.flow_uuid)
    assert state == states.SUCCESS
    assert results == {f"t{i}": (states.SUCCESS, 10 + i) for i in range(6)}
    assert conn.get_logbook(book.uuid).find(engine.storage.flow_uuid) is not None


def test_parallel_engine_with_shared_executor_persists_results(
    conn: persistence.Connection, backend: LeanSQLBackend
) -> None:
    with futurist.ThreadPoolExecutor(max_workers=4) as executor:
        loaded = []
        for run in range(3):
            flow = unordered_flow.Flow(f"parallel-{run}").add(*[Add(f"t{i}", i) for i in range(6)])
            engine = engines.load(
                flow, store={"x": run}, backend=backend, book=models.LogBook("p"),
                engine="parallel", executor=executor,
            )
            engine.run()
            loaded.append((run, engine.storage.flow_uuid))
    for run, fd_uuid in loaded:
        state, results = _stored_results(conn, fd_uuid)
        assert state == states.SUCCESS
        assert results == {f"t{i}": (states.SUCCESS, run + i) for i in range(6)}


def test_flow_killed_with_sigkill_resumes_from_last_completed_task(tmp_path: Path, db_url: str) -> None:
    def helper(mode: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(CRASH_HELPER), db_url, str(tmp_path), mode],
            capture_output=True, text=True, timeout=120,
        )

    first = helper("start")
    assert first.returncode == -9, first.stderr
    second = helper("resume")
    assert second.returncode == 0, second.stderr
    runs = {f"t{i}": len((tmp_path / f"ran-t{i}").read_text().splitlines()) for i in range(1, 7)}
    assert runs == {"t1": 1, "t2": 1, "t3": 2, "t4": 1, "t5": 1, "t6": 1}
    ids = json.loads((tmp_path / "ids.json").read_text())
    be = get_backend(db_url)
    try:
        with contextlib.closing(be.get_connection()) as conn:
            state, results = _stored_results(conn, ids["flow"])
    finally:
        be.close()
    assert state == states.SUCCESS
    assert results == {f"t{i}": (states.SUCCESS, i) for i in range(1, 7)}
