"""The worker's periodic task casts rotations for certificates about to expire."""

from __future__ import annotations

import datetime as dt

from keramos.framework.contracts import CertKind
from keramos.framework.records import CertificateRecord, TaskState, utcnow
from keramos.framework.testing import InProcessWorker


def test_due_certificates_are_rotated_once_and_others_left_alone():
    with InProcessWorker() as worker:
        for amphora_id in ("soon", "later"):
            worker.cast_and_wait("create_amphora", {"amphora_id": amphora_id, "image_id": "i"})
        (soon,) = worker.state_store.find(CertificateRecord, amphora_id="soon")
        worker.state_store.update(
            CertificateRecord, soon.serial, not_after=utcnow() + dt.timedelta(days=2)
        )
        rotation = worker.worker.runner.flows["rotate_certificate"]
        (task,) = rotation.periodic_tasks()
        assert task.interval == 3600

        request_ids = rotation.cast_due_rotations(worker.client.cast)
        assert len(request_ids) == 1
        assert rotation.cast_due_rotations(worker.client.cast) == []
        record = worker.client.wait(request_ids[0], timeout=30)
        assert record["state"] == TaskState.SUCCESS

        active = worker.state_store.find(
            CertificateRecord, amphora_id="soon", kind=CertKind.SERVER, status="active"
        )
        assert len(active) == 1
        assert active[0].serial != soon.serial
        assert active[0].not_after > utcnow() + dt.timedelta(days=300)
        assert worker.state_store.get(CertificateRecord, soon.serial).status == "superseded"
        assert rotation.cast_due_rotations(worker.client.cast) == []


def test_the_periodic_task_can_be_turned_off():
    overrides = {"certificates": {"rotation_check_interval": 0}}
    with InProcessWorker(conf_overrides=overrides) as worker:
        assert worker.worker.runner.flows["rotate_certificate"].periodic_tasks() == []
