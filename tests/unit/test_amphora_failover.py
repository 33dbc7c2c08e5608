"""failover_amphora: the replacement boots first and takes the configs; a failure leaves the old
amphora as it was and nothing of the replacement."""

from __future__ import annotations

import concurrent.futures
import threading

import pytest

from keramos.flows.amphora import FailoverAmphora
from keramos.flows.tasks.amphora_lifecycle import replacement_id_for
from keramos.framework.errors import Conflict, DriverError, KeramosError, NotFound
from keramos.framework.records import AmphoraRecord, AmphoraStatus, CertificateRecord
from keramos.framework.testing import InProcessWorker
from keramos.plugins import noop
from tests.unit.amphora_helpers import (
    IMAGE_TASKS,
    LB,
    InjectedFault,
    certificate_mode,
    failing,
    failing_at,
    members,
    resources,
    run_twice_at,
    task_names,
    worker_running,
)

FAILOVER_TASKS = [
    "load_failed_amphora",
    "record_amphora",
    *IMAGE_TASKS,
    "issue_amphora_server_cert",
    "boot_amphora",
    "wait_for_amphora_active",
    "plug_amphora_network",
    "wait_for_amphora_agent",
    "activate_amphora",
    "move_loadbalancer_configs",
    "mark_amphora_ready",
    "delete_amphora_resources",
    "mark_amphora_deleted",
]

#: In csr mode the replacement makes its own key, certified once its agent answers.
CSR_FAILOVER_TASKS = [
    "load_failed_amphora",
    "record_amphora",
    *IMAGE_TASKS,
    "boot_amphora",
    "wait_for_amphora_active",
    "plug_amphora_network",
    "sign_amphora_csr",
    "wait_for_amphora_agent",
    "activate_amphora",
    "move_loadbalancer_configs",
    "mark_amphora_ready",
    "delete_amphora_resources",
    "mark_amphora_deleted",
]

MODE_TASKS = {"controller": FAILOVER_TASKS, "csr": CSR_FAILOVER_TASKS}
EVERY_TASK = [(mode, name) for mode, names in MODE_TASKS.items() for name in names]



def create_with_lb(worker: InProcessWorker, image_id: str = "img-1") -> AmphoraRecord:
    worker.run("create_amphora", {"amphora_id": "amp-1", "image_id": image_id, "lb": LB})
    return worker.state_store.get(AmphoraRecord, "amp-1")


def replacements(worker: InProcessWorker) -> list[AmphoraRecord]:
    return [a for a in worker.state_store.find(AmphoraRecord) if a.amphora_id != "amp-1"]


def assert_old_as_it_was(worker: InProcessWorker, old: AmphoraRecord, before: dict) -> None:
    assert resources(worker) == before
    now = worker.state_store.get(AmphoraRecord, "amp-1")
    assert (now.status, now.compute_id, now.port_id, now.cert_serial) == (
        old.status,
        old.compute_id,
        old.port_id,
        old.cert_serial,
    )
    assert members(worker) == ["amp-1"]
    assert list(worker.drivers.amphora.configs) == [("amp-1", "lb-1")]
    for replacement in replacements(worker):
        assert replacement.status == AmphoraStatus.ERROR
        assert replacement.compute_id is None and replacement.activation_token_hash is None


def assert_old_deleted_but_not_marked(worker: InProcessWorker, old: AmphoraRecord) -> None:
    """The old amphora's resources were deleted before the failure: the replacement is deleted
    too, and the old amphora's record is ERROR and names no deleted resource."""
    assert resources(worker) == {"instances": [], "ports": [], "bundles": [], "certificates": []}
    now = worker.state_store.get(AmphoraRecord, "amp-1")
    assert (now.status, now.compute_id, now.port_id, now.cert_serial) == (
        AmphoraStatus.ERROR,
        None,
        None,
        None,
    )
    assert "resources deleted, then mark_amphora_deleted" in now.error
    assert old.compute_id is not None
    for replacement in replacements(worker):
        assert replacement.status == AmphoraStatus.ERROR
        assert replacement.compute_id is None and replacement.activation_token_hash is None


@pytest.mark.parametrize("mode", MODE_TASKS)
def test_failover_boots_a_replacement_moves_the_config_and_deletes_the_old_one(mode):
    with InProcessWorker(conf_overrides=certificate_mode(mode)) as worker:
        old = create_with_lb(worker)
        result = worker.run("failover_amphora", {"amphora_id": "amp-1"})
        new = result["amphora"]
        assert new["amphora_id"].startswith("amp-1-fo-") and new["status"] == AmphoraStatus.READY
        assert result["moved_loadbalancers"] == ["lb-1"]
        configs = worker.drivers.amphora.configs
        assert configs[(new["amphora_id"], "lb-1")] == configs[("amp-1", "lb-1")]
        assert members(worker) == [new["amphora_id"]]
        assert list(worker.drivers.compute.instances) == [new["compute_id"]]
        assert list(worker.drivers.network.ports) == [new["port_id"]]
        certificates = worker.state_store.find(CertificateRecord)
        assert [(c.serial, c.amphora_id) for c in certificates] == [
            (new["cert_serial"], new["amphora_id"])
        ]
        assert new["cert_serial"] != old.cert_serial
        retired = worker.state_store.get(AmphoraRecord, "amp-1")
        assert retired.status == AmphoraStatus.DELETED and retired.compute_id is None
        again = worker.run("failover_amphora", {"amphora_id": new["amphora_id"]})
        assert again["amphora"]["amphora_id"].startswith("amp-1-fo-")
        assert again["amphora"]["amphora_id"].count("-fo-") == 1
        assert members(worker) == [again["amphora"]["amphora_id"]]


@pytest.mark.parametrize("mode", MODE_TASKS)
def test_the_flow_runs_the_tasks_the_fault_tests_cover(mode):
    with InProcessWorker(conf_overrides=certificate_mode(mode)) as worker:
        assert task_names(worker, "failover_amphora") == MODE_TASKS[mode]


@pytest.mark.parametrize(("mode", "task_name"), EVERY_TASK)
def test_a_failure_at_every_task_deletes_the_replacement_and_keeps_the_old(tmp_path, mode, task_name):
    faulty = failing_at(FailoverAmphora, task_name)
    with worker_running(faulty, mode, task_name, tmp_path) as (worker, image_id):
        old = create_with_lb(worker, image_id)
        before = resources(worker)
        with pytest.raises(InjectedFault):
            worker.run(faulty.name, {"amphora_id": "amp-1"})
        if task_name == "mark_amphora_deleted":
            assert_old_deleted_but_not_marked(worker, old)
        else:
            assert_old_as_it_was(worker, old, before)
        if task_name not in ("load_failed_amphora", "record_amphora"):
            (replacement,) = replacements(worker)
            assert f"{task_name} failed on purpose" in replacement.error


@pytest.mark.parametrize(("mode", "task_name"), EVERY_TASK)
def test_every_task_run_again_after_its_worker_died_ends_in_one_replacement(tmp_path, mode, task_name):
    again = run_twice_at(FailoverAmphora, task_name)
    with worker_running(again, mode, task_name, tmp_path) as (worker, image_id):
        create_with_lb(worker, image_id)
        result = worker.run(again.name, {"amphora_id": "amp-1"})
        new = result["amphora"]
        assert new["status"] == AmphoraStatus.READY
        assert result["moved_loadbalancers"] == ["lb-1"]
        assert members(worker) == [new["amphora_id"]]
        assert resources(worker)["instances"] == [new["compute_id"]]
        assert resources(worker)["ports"] == [new["port_id"]]
        assert resources(worker)["certificates"] == [new["cert_serial"]]
        assert len(resources(worker)["bundles"]) == 1
        assert worker.state_store.get(AmphoraRecord, "amp-1").status == AmphoraStatus.DELETED


def test_a_failover_claimed_by_another_request_is_refused_even_when_run_again():
    with InProcessWorker() as worker:
        create_with_lb(worker)
        worker.state_store.update(
            AmphoraRecord, "amp-1", status=AmphoraStatus.PENDING_FAILOVER, request_id="req-other"
        )
        with pytest.raises(Conflict, match="amp-1 is not failed over"):
            worker.run("failover_amphora", {"amphora_id": "amp-1"})
        assert replacements(worker) == []


FAULTS = [
    ("cert_generator", noop.NoopCertGenerator, "issue"),
    ("compute", noop.NoopCompute, "build"),
    ("compute", noop.NoopCompute, "get"),
    ("network", noop.NoopNetwork, "plug"),
    ("amphora", noop.NoopAmphora, "wait_until_reachable"),
]


@pytest.mark.parametrize(("kind", "cls", "method"), FAULTS, ids=lambda v: getattr(v, "__name__", v))
def test_a_driver_failure_during_failover_keeps_the_old_amphora(kind, cls, method):
    broken = failing(cls, method)
    armed = {"on": False}
    original = getattr(broken, method)

    def maybe(self, *args, **kwargs):
        if armed["on"]:
            return original(self, *args, **kwargs)
        return getattr(cls, method)(self, *args, **kwargs)

    with InProcessWorker(**{kind: type("Armed", (broken,), {method: maybe})}) as worker:
        old = create_with_lb(worker)
        before = resources(worker)
        armed["on"] = True
        with pytest.raises(DriverError, match="failed on purpose"):
            worker.run("failover_amphora", {"amphora_id": "amp-1"})
        assert_old_as_it_was(worker, old, before)


class FailingUpload(noop.NoopAmphora):
    """Refuses configs for replacements (ids with -fo-)."""

    def upload_config(self, endpoint, lb_id, config, version):
        if "-fo-" in endpoint.amphora_id:
            raise DriverError("upload to the replacement failed on purpose")
        super().upload_config(endpoint, lb_id, config, version)


def test_a_config_the_replacement_refuses_keeps_the_old_amphora():
    with InProcessWorker(amphora=FailingUpload) as worker:
        old = create_with_lb(worker)
        before = resources(worker)
        with pytest.raises(DriverError, match="replacement failed on purpose"):
            worker.run("failover_amphora", {"amphora_id": "amp-1"})
        assert_old_as_it_was(worker, old, before)


class DeadAgents(noop.NoopAmphora):
    """The failed amphora's agent does not answer."""

    def get_info(self, endpoint):
        raise DriverError("connection refused", retryable=True)


def test_a_silent_old_agent_still_fails_over_from_the_recorded_membership():
    with InProcessWorker(amphora=DeadAgents) as worker:
        create_with_lb(worker)
        result = worker.run("failover_amphora", {"amphora_id": "amp-1"})
        assert result["moved_loadbalancers"] == ["lb-1"]


def test_an_amphora_without_load_balancers_fails_over_with_nothing_to_move():
    with InProcessWorker() as worker:
        worker.run("create_amphora", {"amphora_id": "amp-1", "image_id": "img-1"})
        result = worker.run("failover_amphora", {"amphora_id": "amp-1"})
        assert result["moved_loadbalancers"] == []
        assert worker.state_store.get(AmphoraRecord, "amp-1").status == AmphoraStatus.DELETED


def test_unknown_deleted_or_busy_amphorae_are_not_failed_over():
    with InProcessWorker() as worker:
        with pytest.raises(NotFound):
            worker.run("failover_amphora", {"amphora_id": "ghost"})
        worker.run("create_amphora", {"amphora_id": "amp-1", "image_id": "img-1"})
        worker.run("delete_amphora", {"amphora_id": "amp-1"})
        with pytest.raises(NotFound):
            worker.run("failover_amphora", {"amphora_id": "amp-1"})
        worker.state_store.save(AmphoraRecord(amphora_id="amp-2", image_id="img-1"))
        with pytest.raises(KeramosError, match="PENDING_CREATE"):
            worker.run("failover_amphora", {"amphora_id": "amp-2"})
        assert replacements(worker) == [worker.state_store.get(AmphoraRecord, "amp-2")]


def test_replacement_ids_keep_the_original_and_fit_the_identifier_limit():
    assert replacement_id_for("amp-1").startswith("amp-1-fo-")
    assert replacement_id_for(replacement_id_for("amp-1")).count("-fo-") == 1
    assert len(replacement_id_for("a" * 128)) == 128
    assert replacement_id_for("amp-1") != replacement_id_for("amp-1")


def test_an_original_id_containing_the_failover_mark_keeps_its_whole_name():
    first = replacement_id_for("web-fo-prod")
    assert first.startswith("web-fo-prod-fo-") and len(first) == len("web-fo-prod-fo-") + 8
    assert replacement_id_for(first).startswith("web-fo-prod-fo-")
    assert replacement_id_for("web-fo-1").startswith("web-fo-1-fo-")


class GatedCompute(noop.NoopCompute):
    """Noop compute whose builds wait until the test opens the gate."""

    def __init__(self, conf) -> None:
        super().__init__(conf)
        self.building = threading.Event()
        self.gate = threading.Event()

    def build(self, amphora_id, image_id, config_drive, *, flavor=None) -> str:
        if "-fo-" in amphora_id:
            self.building.set()
            assert self.gate.wait(30), "the test never opened the gate"
        return super().build(amphora_id, image_id, config_drive, flavor=flavor)


def test_a_second_failover_of_an_amphora_being_failed_over_is_refused_before_it_boots_anything():
    with InProcessWorker(compute=GatedCompute) as worker:
        create_with_lb(worker)
        compute = worker.drivers.compute
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            first = pool.submit(worker.run, "failover_amphora", {"amphora_id": "amp-1"})
            assert compute.building.wait(30)
            assert worker.state_store.get(AmphoraRecord, "amp-1").status == AmphoraStatus.PENDING_FAILOVER
            with pytest.raises(Conflict, match="amp-1 is not failed over: .*status is 'PENDING_FAILOVER'"):
                worker.run("failover_amphora", {"amphora_id": "amp-1"})
            compute.gate.set()
            new = first.result(timeout=30)["amphora"]
        assert [a.amphora_id for a in replacements(worker)] == [new["amphora_id"]]
        assert worker.state_store.get(AmphoraRecord, "amp-1").status == AmphoraStatus.DELETED
        assert members(worker) == [new["amphora_id"]]


def test_a_failed_failover_gives_the_amphora_its_status_back_so_it_can_be_failed_over_again():
    with InProcessWorker(compute=failing(noop.NoopCompute, "build")) as worker:
        worker.state_store.save(AmphoraRecord("amp-1", status=AmphoraStatus.ERROR, image_id="img-1"))
        with pytest.raises(DriverError):
            worker.run("failover_amphora", {"amphora_id": "amp-1"})
        assert worker.state_store.get(AmphoraRecord, "amp-1").status == AmphoraStatus.ERROR
        with pytest.raises(DriverError):
            worker.run("failover_amphora", {"amphora_id": "amp-1"})


def test_the_replacement_boots_on_the_failed_amphoras_network():
    with InProcessWorker() as worker:
        created = worker.run("create_amphora", {"amphora_id": "amp-net", "image_id": "img-1", "network_id": "tenant-a"})
        assert created["amphora"]["network_id"] == "tenant-a"
        new = worker.run("failover_amphora", {"amphora_id": "amp-net"})["amphora"]
        assert new["network_id"] == "tenant-a"
        assert worker.state_store.get(AmphoraRecord, new["amphora_id"]).network_id == "tenant-a"
