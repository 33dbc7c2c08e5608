"""create_amphora and delete_amphora: every failure reverts to nothing left behind."""

from __future__ import annotations

import pytest

from keramos.framework.errors import DriverError, NotFound
from keramos.framework.records import AmphoraRecord, AmphoraStatus, CertificateRecord
from keramos.framework.testing import InProcessWorker
from keramos.plugins import noop

PAYLOAD = {"amphora_id": "amp-1", "image_id": "img-1"}


def failing(cls, method):
    """A noop driver class whose ``method`` raises DriverError."""

    def boom(self, *args, **kwargs):
        raise DriverError(f"{cls.__name__}.{method} failed on purpose")

    return type(f"Failing{cls.__name__}", (cls,), {method: boom})


FAULTS = [
    ("cert_generator", noop.NoopCertGenerator, "issue"),
    ("cert_manager", noop.NoopCertManager, "store"),
    ("cert_generator", noop.NoopCertGenerator, "ca_certificate"),
    ("compute", noop.NoopCompute, "build"),
    ("compute", noop.NoopCompute, "get"),
    ("network", noop.NoopNetwork, "plug"),
    ("amphora", noop.NoopAmphora, "wait_until_reachable"),
]


def nothing_left(worker: InProcessWorker) -> None:
    drivers = worker.drivers
    assert drivers.compute.instances == {}
    assert drivers.network.ports == {}
    assert drivers.cert_manager.bundles == {}
    assert worker.state_store.find(CertificateRecord) == []


@pytest.mark.parametrize(("kind", "cls", "method"), FAULTS, ids=lambda v: getattr(v, "__name__", v))
def test_a_failure_at_any_step_leaves_nothing_behind(kind, cls, method):
    with InProcessWorker(**{kind: failing(cls, method)}) as worker:
        with pytest.raises(DriverError, match="failed on purpose"):
            worker.cast_and_wait("create_amphora", PAYLOAD)
        nothing_left(worker)
        amphora = worker.state_store.get(AmphoraRecord, "amp-1")
        assert amphora.status == AmphoraStatus.ERROR
        assert "failed on purpose" in amphora.error


def test_the_fault_list_covers_every_task_of_the_flow_that_calls_a_driver():
    with InProcessWorker() as worker:
        flow = worker.worker.runner.flows["create_amphora"].build()
        task_names = [atom.name for atom in flow]
    assert task_names == [
        "record_amphora",
        "issue_amphora_server_cert",
        "boot_amphora",
        "wait_for_amphora_active",
        "plug_amphora_network",
        "wait_for_amphora_agent",
        "mark_amphora_ready",
    ]


def test_create_then_delete_leaves_nothing_and_marks_deleted():
    with InProcessWorker() as worker:
        created = worker.cast_and_wait("create_amphora", PAYLOAD)["amphora"]
        assert created["status"] == AmphoraStatus.READY
        assert len(worker.drivers.compute.instances) == 1
        assert len(worker.drivers.cert_manager.bundles) == 1
        worker.cast_and_wait("delete_amphora", {"amphora_id": "amp-1"})
        nothing_left(worker)
        assert worker.state_store.get(AmphoraRecord, "amp-1").status == AmphoraStatus.DELETED
        with pytest.raises(NotFound):
            worker.cast_and_wait("delete_amphora", {"amphora_id": "amp-1"})
        worker.cast_and_wait("create_amphora", PAYLOAD)


def test_an_existing_amphora_is_not_created_twice_nor_disturbed():
    with InProcessWorker() as worker:
        worker.cast_and_wait("create_amphora", PAYLOAD)
        with pytest.raises(Exception, match="already exists"):
            worker.cast_and_wait("create_amphora", PAYLOAD)
        assert worker.state_store.get(AmphoraRecord, "amp-1").status == AmphoraStatus.READY
        assert len(worker.drivers.compute.instances) == 1
