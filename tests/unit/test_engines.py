"""Keramos's taskflow engines: taskflow's own, their storage guarded by one re-entrant lock."""

from __future__ import annotations

import threading
import uuid

import pytest
from taskflow import engines as tf_engines
from taskflow import states, task
from taskflow.patterns import linear_flow, unordered_flow
from taskflow.persistence import models

from keramos.framework import engines
from keramos.framework.persistence import get_backend


class _Square(task.Task):
    """Squares its input and reports progress (from the engine's pool in a parallel engine)."""

    def execute(self, number: int) -> int:
        for step in range(5):
            self.update_progress(step / 5)
        return number * number


def _squares(flow_class, count: int):
    flow = flow_class("squares")
    for index in range(count):
        flow.add(_Square(name=f"square-{index}", provides=f"squared-{index}", rebind={"number": f"n{index}"}))
    return flow


def _saved_flow_detail(backend):
    book = models.LogBook("engines")
    flow_detail = models.FlowDetail("squares", str(uuid.uuid4()))
    book.add(flow_detail)
    backend.get_connection().save_logbook(book)
    return flow_detail


@pytest.mark.parametrize(
    ("kind", "flow_class", "options"),
    [("serial", linear_flow.Flow, {}), ("parallel", unordered_flow.Flow, {"max_workers": 4})],
)
def test_an_engine_runs_a_flow_durably_as_taskflows_own_engine_does(tmp_path, kind, flow_class, options):
    store = {f"n{index}": index for index in range(12)}
    backend = get_backend(f"sqlite:///{tmp_path / 'flows.db'}")
    try:
        flow_detail = _saved_flow_detail(backend)
        engine = engines.load(_squares(flow_class, 12), flow_detail, backend, kind=kind, store=store, options=options)
        assert isinstance(engine.storage.lock, engines.ExclusiveLock)
        engine.run()
        ours = engine.storage.fetch_all()
        stock = tf_engines.run(_squares(flow_class, 12), store=store, engine=kind, **options)
        assert ours == stock
        saved = backend.get_connection().get_flow_details(flow_detail.uuid)
        assert saved.state == states.SUCCESS
        assert {atom.name: atom.state for atom in saved if atom.name.startswith("square-")} == {
            f"square-{index}": states.SUCCESS for index in range(12)
        }
        assert {atom.name: atom.results for atom in saved if atom.name.startswith("square-")} == {
            f"square-{index}": index * index for index in range(12)
        }
    finally:
        backend.close()


def test_the_lock_is_reentrant_and_keeps_other_threads_out_while_read():
    lock = engines.ExclusiveLock()
    entered = threading.Event()

    def other_thread_writes() -> None:
        with lock.write_lock():
            entered.set()

    with lock.read_lock(), lock.write_lock():
        other = threading.Thread(target=other_thread_writes)
        other.start()
        assert not entered.wait(0.2)
    assert entered.wait(5)
    other.join()


def test_an_unknown_engine_is_refused_by_name(tmp_path):
    backend = get_backend(f"sqlite:///{tmp_path / 'flows.db'}")
    try:
        with pytest.raises(ValueError, match="unknown engine 'worker-based'"):
            engines.load(_squares(linear_flow.Flow, 1), _saved_flow_detail(backend), backend, kind="worker-based")
    finally:
        backend.close()


@pytest.mark.parametrize(("kind", "flow_class"), [("serial", linear_flow.Flow), ("parallel", unordered_flow.Flow)])
def test_engines_given_one_compiled_flow_share_its_compilation_and_each_has_its_own_results(
    tmp_path, kind, flow_class
):
    backend = get_backend(f"sqlite:///{tmp_path / 'flows.db'}")
    try:
        compiled = engines.CompiledFlow(_squares(flow_class, 3))
        ran = []
        for offset in (1, 10):
            store = {f"n{index}": index + offset for index in range(3)}
            engine = engines.load(
                compiled.flow, _saved_flow_detail(backend), backend, kind=kind, store=store, compiled=compiled
            )
            engine.run()
            ran.append(engine)
        assert ran[0].compilation is ran[1].compilation
        assert [engine.storage.fetch("squared-2") for engine in ran] == [9, 144]
    finally:
        backend.close()


def test_a_compiled_flow_serves_only_its_own_flow(tmp_path):
    backend = get_backend(f"sqlite:///{tmp_path / 'flows.db'}")
    try:
        compiled = engines.CompiledFlow(_squares(linear_flow.Flow, 1))
        with pytest.raises(ValueError, match="not the flow this engine runs"):
            engines.load(
                _squares(linear_flow.Flow, 1), _saved_flow_detail(backend), backend, kind="serial", compiled=compiled
            )
    finally:
        backend.close()
