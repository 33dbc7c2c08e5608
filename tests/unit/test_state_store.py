"""One behaviour suite for every state store (PostgreSQL runs it in tests/functional)."""

from __future__ import annotations

import datetime as dt
import threading

import pytest

from keramos.framework.config import make_conf
from keramos.framework.errors import ConfigError, Conflict, NotFound
from keramos.framework.records import AmphoraRecord, CertificateRecord, TaskRecord, TaskState
from keramos.plugins.state_store import sqlalchemy as sqlalchemy_store
from keramos.plugins.state_store.memory import MemoryStateStore
from keramos.plugins.state_store.sqlalchemy import SQLAlchemyStateStore


def make_store(kind: str, tmp_path):
    conf = make_conf(config_files=[], overrides={"DEFAULT": {"state_path": str(tmp_path)}})
    if kind == "memory":
        return MemoryStateStore(conf)
    return SQLAlchemyStateStore(conf)


@pytest.fixture(params=["memory", "sqlite", "sqlite-portable"])
def store(request, tmp_path, monkeypatch):
    made = make_store(request.param, tmp_path)
    if request.param == "sqlite-portable":
        # What databases without ON CONFLICT and UPDATE ... RETURNING (MySQL, MariaDB) run.
        monkeypatch.setattr(sqlalchemy_store, "_native_upsert", lambda *args: None)
        monkeypatch.setattr(sqlalchemy_store, "_insert_or_nothing", lambda *args: None)
        monkeypatch.setattr(made.engine.dialect, "update_returning", False)
    yield made
    made.close()


def state_store_behaviour(store):
    """The checks every state store must pass; also called by the PostgreSQL test."""
    task = store.save(TaskRecord(request_id="req-1", event="create_amphora", resource_id="a1"))
    fetched = store.get(TaskRecord, "req-1")
    assert fetched == task
    assert fetched.state == TaskState.PENDING
    assert fetched.created_at.tzinfo is not None

    updated = store.update(
        TaskRecord, "req-1", state=TaskState.SUCCESS, result={"amphora": {"id": "a1"}}
    )
    assert updated.state == TaskState.SUCCESS
    assert updated.updated_at >= task.updated_at
    assert store.get(TaskRecord, "req-1").result == {"amphora": {"id": "a1"}}

    with pytest.raises(NotFound):
        store.update(TaskRecord, "req-unknown", state=TaskState.FAILURE)
    with pytest.raises(TypeError, match="no field"):
        store.update(TaskRecord, "req-1", colour="blue")
    with pytest.raises(TypeError, match="is the key"):
        store.update(TaskRecord, "req-1", request_id="req-2")
    assert store.get(TaskRecord, "req-unknown") is None

    store.save(AmphoraRecord(amphora_id="a1", config_version=3))
    store.save(AmphoraRecord(amphora_id="a2", status="READY"))
    store.save(AmphoraRecord(amphora_id="a1", config_version=4))
    assert store.get(AmphoraRecord, "a1").config_version == 4
    assert [a.amphora_id for a in store.find(AmphoraRecord, status="READY")] == ["a2"]
    assert len(store.find(AmphoraRecord)) == 2

    not_after = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
    store.save(CertificateRecord(serial="ab12", kind="server", subject="a1", not_after=not_after))
    assert store.get(CertificateRecord, "ab12").not_after == not_after

    changed = store.update_if(AmphoraRecord, "a2", {"status": ("READY", "ERROR")}, status="PENDING_FAILOVER")
    assert changed.status == "PENDING_FAILOVER"
    with pytest.raises(Conflict, match="a2: status is 'PENDING_FAILOVER', expected status in \\['ERROR', 'READY'\\]"):
        store.update_if(AmphoraRecord, "a2", {"status": ("READY", "ERROR")}, status="PENDING_FAILOVER", error="x")
    assert store.get(AmphoraRecord, "a2").error is None
    assert store.update_if(AmphoraRecord, "a2", {"error": (None,)}, image_id="i1").image_id == "i1"
    assert store.update_if(AmphoraRecord, "a2", {"error": ("x", None)}, image_id="i2").image_id == "i2"
    with pytest.raises(Conflict):
        store.update_if(AmphoraRecord, "a2", {"image_id": (None,)}, image_id="i3")
    with pytest.raises(NotFound):
        store.update_if(AmphoraRecord, "nobody", {"status": ("READY",)}, status="ERROR")
    with pytest.raises(TypeError, match="no field"):
        store.update_if(AmphoraRecord, "a2", {"colour": ("blue",)}, status="ERROR")

    store.delete(AmphoraRecord, "a1")
    store.delete(AmphoraRecord, "a1")
    assert store.get(AmphoraRecord, "a1") is None

    first = TaskRecord(request_id="req-new", event="e", digest="d1", owner="h", flow_uuid="f1")
    assert store.insert_if_absent(first) == (first, True)
    second = TaskRecord(request_id="req-new", event="other", state=TaskState.FAILURE, digest="d2")
    stored, inserted = store.insert_if_absent(second)
    assert not inserted
    kept = (stored.event, stored.state, stored.digest, stored.owner, stored.flow_uuid)
    assert kept == ("e", "pending", "d1", "h", "f1")
    assert store.get(TaskRecord, "req-new") == stored


def test_of_many_threads_expecting_the_same_state_exactly_one_changes_it(store):
    store.save(AmphoraRecord(amphora_id="a1", status="READY"))
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def claim(index: int) -> None:
        barrier.wait()
        try:
            store.update_if(AmphoraRecord, "a1", {"status": ("READY",)}, status="PENDING_FAILOVER", error=str(index))
            outcomes.append("won")
        except Conflict:
            outcomes.append("refused")

    threads = [threading.Thread(target=claim, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["refused"] * 7 + ["won"]


def insert_race(store, contenders: int = 8) -> list[bool]:
    """``contenders`` threads insert one key at once; what each got back as ``inserted``."""
    outcomes: list[bool] = []
    barrier = threading.Barrier(contenders)

    def insert(index: int) -> None:
        barrier.wait()
        record = TaskRecord(request_id="req-race", event="e", message=str(index))
        outcomes.append(store.insert_if_absent(record)[1])

    threads = [threading.Thread(target=insert, args=(index,)) for index in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def test_of_many_threads_inserting_one_key_exactly_one_inserts(store):
    assert sorted(insert_race(store)) == [False] * 7 + [True]


def test_state_store_behaviour(store):
    state_store_behaviour(store)


def test_records_survive_a_new_store_on_the_same_file(tmp_path):
    first = make_store("sqlite", tmp_path)
    first.save(TaskRecord(request_id="req-9", event="e"))
    first.close()
    second = make_store("sqlite", tmp_path)
    assert second.get(TaskRecord, "req-9").event == "e"
    second.close()


def test_an_unusable_database_url_is_a_configuration_error(tmp_path):
    conf = make_conf(config_files=[], overrides={"state_store": {"connection": "not a url"}})
    with pytest.raises(ConfigError, match="not a database URL"):
        SQLAlchemyStateStore(conf)
