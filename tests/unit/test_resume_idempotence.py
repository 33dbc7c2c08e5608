"""create_amphora resumed after a kill -9 at any point ends READY with one of everything.

A helper process (``noop_ledger_crash_worker.py``) runs create_amphora on the noop drivers and
kills itself inside a task, once the task's work is done but before taskflow saved its result
(so that the task runs again on resume), or between two IGNORE states a decider would save; a
second process resumes it on the same state_path and host. The flow must succeed with one live
instance, one live server certificate, one port and one spent activation token (issue #11).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from keramos.framework import loader
from keramos.framework.records import (
    AmphoraRecord,
    AmphoraStatus,
    CertificateRecord,
    TaskRecord,
    TaskState,
)
from keramos.plugins.noop_ledger import LEDGER_FILE, NoopLedger
from tests.unit import noop_ledger_crash_worker as helper


@pytest.mark.parametrize(
    ("mode", "kill_at"),
    [
        ("controller", "record_amphora:after"),
        ("controller", "issue_amphora_server_cert:after"),
        ("controller", "issue_amphora_server_cert:stored"),
        ("controller", "boot_amphora:after"),
        ("controller", "plug_amphora_network:after"),
        ("controller", "activate_amphora:after"),
        ("csr", "boot_amphora:after"),
        ("csr", "sign_amphora_csr:after"),
        ("csr", "sign_amphora_csr:stored"),
        ("csr", "activate_amphora:after"),
        ("controller", "activate_amphora:spent"),
        ("controller", "check_amphora_image:after"),
        ("controller", "ignore:2"),
    ],
)
def test_a_flow_killed_inside_a_task_resumes_to_ready_with_one_of_everything(
    tmp_path: Path, mode: str, kill_at: str
) -> None:
    state = tmp_path / "state"
    started = helper.run_in_subprocess(state, kill_at, mode, "start")
    if started.returncode == 0:
        assert not (state / "killed").exists()
    else:
        assert started.returncode == -9, started.stderr
        resumed = helper.run_in_subprocess(state, kill_at, mode, "resume")
        assert resumed.returncode == 0, resumed.stderr

    conf = helper.make_worker_conf(str(state), mode)
    store = loader.load_state_store(conf)
    try:
        task = store.get(TaskRecord, helper.REQUEST_ID)
        amphora = store.get(AmphoraRecord, helper.AMPHORA_ID)
        certificates = store.find(CertificateRecord, amphora_id=helper.AMPHORA_ID)
    finally:
        store.close()
    assert (task.state, task.message) == (TaskState.SUCCESS, None)
    assert amphora.status == AmphoraStatus.READY
    assert [certificate.serial for certificate in certificates] == [amphora.cert_serial]
    ledger = NoopLedger(state / LEDGER_FILE)
    try:
        assert list(ledger.live("compute")) == [amphora.compute_id]
        assert len(ledger.live("cert_manager")) == 1
        assert [port["compute_id"] for port in ledger.live("network").values()] == [amphora.compute_id]
        assert ledger.count("amphora.token", "activate", subject=helper.AMPHORA_ID) == 1
        assert ledger.live("amphora.token") == {}
    finally:
        ledger.close()
