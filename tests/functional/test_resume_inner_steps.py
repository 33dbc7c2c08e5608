"""A worker killed (SIGKILL) in the middle of create_amphora's image verification or initial
configuration push resumes, on restart with the same host, from the inner step that finished.

The flow runs in a helper process (``resume_inner_steps_worker.py``: a durable runner with a
signed image, a file image store, a local key manager and noop drivers otherwise) with its
persistence on a SQLite file and on PostgreSQL (a database made for this module). A task hook
blocks at a chosen task until the test kills the process; every task execution is appended to a
ledger file. The atom states are read from the persistence backend between the kill and the
restart, the outcome from the state store afterwards.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from taskflow import states

from keramos.framework import loader
from keramos.framework.persistence import get_backend
from keramos.framework.records import (
    AmphoraRecord,
    AmphoraStatus,
    ImageRecord,
    LoadBalancerRecord,
    TaskRecord,
    TaskState,
)
from tests.functional import resume_inner_steps_worker as helper
from tests.unit.amphora_helpers import CREATE_TASKS

HELPER = Path(helper.__file__)
ROOT = Path(__file__).parents[2]


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """The persistence database: a SQLite file, or a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'flows.sqlite'}"
    return request.getfixturevalue("pg_url")


def _helper(state: Path, db_url: str, block_at: str, mode: str) -> subprocess.Popen:
    log = open(state / f"{mode}.log", "ab")  # noqa: SIM115 - closed with the process below
    process = subprocess.Popen(
        [sys.executable, str(HELPER), str(state), db_url, block_at, mode],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    return process


def _ledger(state: Path) -> Counter[str]:
    return Counter((state / "ledger").read_text().split())


def _atom_states(db_url: str) -> dict[str, str]:
    """The atom states of the helper's unfinished flow, from the persistence backend."""
    backend = get_backend(db_url)
    try:
        with contextlib.closing(backend.get_connection()) as connection:
            details = [
                flow_detail
                for book in connection.get_logbooks()
                for flow_detail in book
                if (flow_detail.meta or {}).get("request_id") == helper.REQUEST_ID
            ]
        (flow_detail,) = details
        return {atom.name: atom.state for atom in flow_detail}
    finally:
        backend.close()


def _log(state: Path) -> str:
    return "".join(path.read_text(errors="replace") for path in sorted(state.glob("*.log")))


@pytest.mark.parametrize(
    ("block_at", "finished_inside"),
    [
        (
            "download_and_verify_image",
            ["mark_image_verifying", "get_image_signature", "validate_signing_certificate"],
        ),
        (
            "push_config_to_amphora",
            ["plan_initial_config", "render_haproxy_config", "snapshot_loadbalancer", "allocate_config_version"],
        ),
    ],
    ids=["image_verification", "config_push"],
)
def test_a_killed_worker_resumes_from_the_inner_step_that_finished(tmp_path, db_url, block_at, finished_inside):
    state = tmp_path / "state"
    state.mkdir()
    started = _helper(state, db_url, block_at, "start")
    try:
        deadline = time.monotonic() + 120
        while not (state / "blocked").exists():
            assert started.poll() is None, _log(state)
            assert time.monotonic() < deadline, f"{block_at} never ran:\n{_log(state)}"
            time.sleep(0.05)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(started.pid, signal.SIGKILL)
    assert started.wait(30) == -signal.SIGKILL

    before = _atom_states(db_url)
    position = CREATE_TASKS.index(block_at)
    done_before = CREATE_TASKS[:position]
    assert set(finished_inside) <= set(done_before)
    assert {name: before[name] for name in done_before} == dict.fromkeys(done_before, states.SUCCESS)
    assert before[block_at] == states.RUNNING
    assert _ledger(state) == Counter([*done_before, block_at])

    resumed = _helper(state, db_url, block_at, "resume")
    assert resumed.wait(120) == 0, _log(state)

    ledger = _ledger(state)
    # What finished before the kill ran once; the step killed in the middle ran again.
    assert {name: ledger[name] for name in done_before} == dict.fromkeys(done_before, 1)
    assert ledger[block_at] == 2
    after = CREATE_TASKS[position + 1 :]
    assert {name: ledger[name] for name in after} == dict.fromkeys(after, 1)

    conf = helper.make_worker_conf(str(state), db_url)
    store = loader.load_state_store(conf)
    try:
        record = store.get(TaskRecord, helper.REQUEST_ID)
        assert record.state == TaskState.SUCCESS, record
        amphora = store.get(AmphoraRecord, helper.PAYLOAD["amphora_id"])
        assert amphora.status == AmphoraStatus.READY
        assert store.get(ImageRecord, helper.IMAGE_ID).status == "active"
        balancer = store.get(LoadBalancerRecord, helper.LB["lb_id"])
        # One version was handed out: the allocation before the kill did not run again.
        assert (balancer.config_version, balancer.running_version) == (1, 1)
        assert balancer.description["amphora_ids"] == [helper.PAYLOAD["amphora_id"]]
        assert amphora.config_version == 1
    finally:
        store.close()
