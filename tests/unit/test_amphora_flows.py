"""create_amphora and delete_amphora: every failure reverts to nothing left behind."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from keramos.flows.amphora import CreateAmphora, DeleteAmphora
from keramos.flows.tasks.amphora import (
    ACTIVATION_TOKEN_FILE,
    ActivateAmphora,
    hash_activation_token,
    redeem_activation_token,
)
from keramos.flows.templates import render_haproxy_config
from keramos.framework.contracts import AmphoraEndpoint
from keramos.framework.errors import AlreadyActivated, DriverError, KeramosError, NotFound, PayloadError
from keramos.framework.records import (
    AmphoraRecord,
    AmphoraStatus,
    CertificateRecord,
    LoadBalancerRecord,
    utcnow,
)
from keramos.framework.testing import InProcessWorker
from keramos.plugins import noop
from tests.unit.amphora_helpers import (
    CREATE_MODE_TASKS,
    CREATE_TASKS_IN_EVERY_MODE,
    LB,
    InjectedFault,
    RecordingCompute,
    certificate_mode,
    failing,
    failing_at,
    members,
    nothing_left,
    run_twice_at,
    task_names,
    worker_running,
)

PAYLOAD = {"amphora_id": "amp-1", "image_id": "img-1"}

FAULTS = [
    ("image_store", noop.NoopImageStore, "properties"),
    ("cert_generator", noop.NoopCertGenerator, "issue"),
    ("cert_manager", noop.NoopCertManager, "store"),
    ("cert_generator", noop.NoopCertGenerator, "ca_certificate"),
    ("compute", noop.NoopCompute, "build"),
    ("compute", noop.NoopCompute, "get"),
    ("network", noop.NoopNetwork, "plug"),
    ("amphora", noop.NoopAmphora, "wait_until_reachable"),
    ("amphora", noop.NoopAmphora, "activate"),
    ("amphora", noop.NoopAmphora, "upload_config"),
]

CSR_FAULTS = [
    ("amphora", noop.NoopAmphora, "fetch_csr"),
    ("cert_generator", noop.NoopCertGenerator, "sign_csr"),
    ("cert_manager", noop.NoopCertManager, "store"),
    ("amphora", noop.NoopAmphora, "install_signed_certificate"),
    ("amphora", noop.NoopAmphora, "activate"),
]



def assert_error_and_clean(worker: InProcessWorker, reason: str) -> None:
    nothing_left(worker)
    amphora = worker.state_store.get(AmphoraRecord, "amp-1")
    assert amphora.status == AmphoraStatus.ERROR
    assert reason in amphora.error
    assert amphora.activation_token_hash is None
    assert amphora.compute_id is None


@pytest.mark.parametrize(("kind", "cls", "method"), FAULTS, ids=lambda v: getattr(v, "__name__", v))
def test_a_driver_failure_at_any_step_leaves_nothing_behind(kind, cls, method):
    with InProcessWorker(**{kind: failing(cls, method)}) as worker:
        with pytest.raises(DriverError, match="failed on purpose"):
            worker.run("create_amphora", {**PAYLOAD, "lb": LB})
        assert_error_and_clean(worker, "failed on purpose")
        assert worker.drivers.amphora.configs == {}
        assert members(worker) == []


@pytest.mark.parametrize(("kind", "cls", "method"), CSR_FAULTS, ids=lambda v: getattr(v, "__name__", v))
def test_a_driver_failure_at_any_step_in_csr_mode_leaves_nothing_behind(kind, cls, method):
    with InProcessWorker(conf_overrides=certificate_mode("csr"), **{kind: failing(cls, method)}) as worker:
        with pytest.raises(DriverError, match="failed on purpose"):
            worker.run("create_amphora", {**PAYLOAD, "lb": LB})
        assert_error_and_clean(worker, "failed on purpose")
        assert worker.drivers.amphora.configs == {}


@pytest.mark.parametrize("mode", CREATE_MODE_TASKS)
def test_the_flow_runs_the_tasks_the_fault_tests_cover(mode):
    with InProcessWorker(conf_overrides=certificate_mode(mode)) as worker:
        assert task_names(worker, "create_amphora") == CREATE_MODE_TASKS[mode]


@pytest.mark.parametrize(("mode", "task_name"), CREATE_TASKS_IN_EVERY_MODE)
def test_a_failure_at_every_task_reverts_everything_before_it(tmp_path, mode, task_name):
    faulty = failing_at(CreateAmphora, task_name)
    with worker_running(faulty, mode, task_name, tmp_path) as (worker, image_id):
        # An earlier run of the load balancer must come back as it was.
        worker.run("create_amphora", {"amphora_id": "amp-0", "image_id": image_id, "lb": LB})
        before = worker.state_store.get(LoadBalancerRecord, "lb-1")
        kept = dict(worker.drivers.compute.instances)
        with pytest.raises(InjectedFault):
            worker.run(
                faulty.name,
                {**PAYLOAD, "image_id": image_id, "lb": {**LB, "lb_id": "lb-1"}},
            )
        assert worker.drivers.compute.instances == kept
        assert len(worker.drivers.network.ports) == 1
        assert len(worker.drivers.cert_manager.bundles) == 1
        assert list(worker.drivers.amphora.configs) == [("amp-0", "lb-1")]
        after = worker.state_store.get(LoadBalancerRecord, "lb-1")
        assert (after.config, after.running_version, after.description) == (
            before.config,
            before.running_version,
            before.description,
        )
        amphora = worker.state_store.get(AmphoraRecord, "amp-1")
        if task_name == "record_amphora":
            assert amphora is None
        else:
            assert amphora.status == AmphoraStatus.ERROR
            assert f"{task_name} failed on purpose" in amphora.error
            assert amphora.compute_id is None and amphora.activation_token_hash is None


def test_create_with_a_config_pushes_it_and_records_the_member():
    with InProcessWorker() as worker:
        created = worker.run("create_amphora", {**PAYLOAD, "lb": LB})["amphora"]
        assert created["status"] == AmphoraStatus.READY
        version, config = worker.drivers.amphora.configs[("amp-1", "lb-1")]
        record = worker.state_store.get(LoadBalancerRecord, "lb-1")
        assert (record.running_version, record.config) == (version, config)
        assert config == render_haproxy_config("lb-1", LB["listeners"], LB["pools"])
        assert members(worker) == ["amp-1"]
        assert created["config_version"] == version


def test_a_config_without_its_pools_is_refused_before_anything_boots():
    with InProcessWorker() as worker:
        with pytest.raises(PayloadError, match="field 'lb': missing field\\(s\\): pools"):
            worker.run("create_amphora", {**PAYLOAD, "lb": {"lb_id": "lb-1", "listeners": []}})
        assert worker.drivers.compute.instances == {}
        assert worker.state_store.get(AmphoraRecord, "amp-1") is None


def test_a_malformed_lb_is_refused_listing_what_is_wrong_and_nothing_is_built():
    lb = {
        "lb_id": "lb 1",
        "listeners": [{"id": "l1", "protocol": "UDP", "address": "10.0.0.300", "port": 0, "default_pool": "p1"}],
        "pools": [
            {"id": "p1", "protocol": "HTTP", "members": [{"id": "m1", "address": "x" * 100_000, "port": 1}], "x": 1}
        ],
    }
    with InProcessWorker() as worker:
        with pytest.raises(PayloadError) as raised:
            worker.run("create_amphora", {**PAYLOAD, "lb": lb})
        message = str(raised.value)
        for problem in (
            "field 'lb.lb_id' must match",
            "field 'lb.listeners[0].protocol' must be one of ['HTTP', 'TCP'], got 'UDP'",
            "field 'lb.listeners[0].address' must be an IP address, got '10.0.0.300'",
            "field 'lb.listeners[0].port' must be from 1 to 65535, got 0",
            "field 'lb.pools[0]': unknown field(s): x",
            "field 'lb.pools[0].members[0].address' must be at most 64 characters",
        ):
            assert problem in message
        assert "…(100000 bytes)" in message and len(message) < 2000
        assert worker.drivers.compute.instances == {}
        assert worker.state_store.get(AmphoraRecord, "amp-1") is None


def test_an_lb_whose_parts_do_not_fit_together_is_refused_before_anything_boots():
    lb = {**LB, "listeners": [{**LB["listeners"][0], "default_pool": "p9"}]}
    with InProcessWorker() as worker:
        with pytest.raises(PayloadError, match="default_pool 'p9' is not among the pools"):
            worker.run("create_amphora", {**PAYLOAD, "lb": lb})
        assert worker.drivers.compute.instances == {}


def test_create_then_delete_leaves_nothing_and_marks_deleted():
    with InProcessWorker() as worker:
        created = worker.cast_and_wait("create_amphora", {**PAYLOAD, "lb": LB})["amphora"]
        assert created["status"] == AmphoraStatus.READY
        assert len(worker.drivers.compute.instances) == 1
        assert len(worker.drivers.cert_manager.bundles) == 1
        worker.cast_and_wait("delete_amphora", {"amphora_id": "amp-1"})
        nothing_left(worker)
        assert members(worker) == []
        assert worker.state_store.get(AmphoraRecord, "amp-1").status == AmphoraStatus.DELETED
        with pytest.raises(NotFound):
            worker.cast_and_wait("delete_amphora", {"amphora_id": "amp-1"})
        worker.cast_and_wait("create_amphora", PAYLOAD)


@pytest.mark.parametrize(
    "task_name",
    ["load_amphora", "leave_loadbalancers", "delete_amphora_resources", "mark_amphora_deleted"],
)
def test_every_delete_task_run_again_after_its_worker_died_deletes_once(task_name):
    again = run_twice_at(DeleteAmphora, task_name)
    with InProcessWorker(flows=[again]) as worker:
        worker.run("create_amphora", {**PAYLOAD, "lb": LB})
        assert task_names(worker, "delete_amphora") == [
            "load_amphora", "leave_loadbalancers", "delete_amphora_resources", "mark_amphora_deleted"
        ]
        worker.run(again.name, {"amphora_id": "amp-1"})
        nothing_left(worker)
        assert members(worker) == []
        assert worker.state_store.get(AmphoraRecord, "amp-1").status == AmphoraStatus.DELETED


class FailingDelete(noop.NoopCompute):
    """Cannot delete instances."""

    def delete(self, compute_id: str) -> None:
        raise DriverError("delete failed on purpose")


def test_a_failed_delete_keeps_the_membership_and_marks_the_amphora_error():
    with InProcessWorker(compute=FailingDelete) as worker:
        worker.run("create_amphora", {**PAYLOAD, "lb": LB})
        with pytest.raises(DriverError, match="delete failed on purpose"):
            worker.run("delete_amphora", {"amphora_id": "amp-1"})
        assert members(worker) == ["amp-1"]
        amphora = worker.state_store.get(AmphoraRecord, "amp-1")
        assert amphora.status == AmphoraStatus.ERROR and "delete failed" in amphora.error


def test_an_existing_amphora_is_not_created_twice_nor_disturbed():
    with InProcessWorker() as worker:
        worker.run("create_amphora", PAYLOAD)
        with pytest.raises(Exception, match="already exists"):
            worker.run("create_amphora", PAYLOAD)
        assert worker.state_store.get(AmphoraRecord, "amp-1").status == AmphoraStatus.READY
        assert len(worker.drivers.compute.instances) == 1


class HashWatchingAmphora(noop.NoopAmphora):
    """Notes the activation token hash on record when the agent is first reached."""

    state_store: Any = None

    def __init__(self, conf) -> None:
        super().__init__(conf)
        self.hashes: list[str | None] = []

    def wait_until_reachable(self, endpoint, timeout):
        self.hashes.append(self.state_store.get(AmphoraRecord, endpoint.amphora_id).activation_token_hash)
        return super().wait_until_reachable(endpoint, timeout)


def test_the_token_is_in_the_config_drive_and_only_its_hash_on_record_until_activation():
    with InProcessWorker(compute=RecordingCompute, amphora=HashWatchingAmphora) as worker:
        worker.drivers.amphora.state_store = worker.state_store
        worker.run("create_amphora", PAYLOAD)
        token = worker.drivers.compute.drives["amp-1"][ACTIVATION_TOKEN_FILE].decode()
        assert len(token) >= 40
        expected = hashlib.sha256(token.encode()).hexdigest()
        assert worker.drivers.amphora.hashes == [expected]
        record = worker.state_store.get(AmphoraRecord, "amp-1")
        assert record.activation_token_hash is None
        assert token not in repr(record.to_dict())
        with pytest.raises(KeramosError, match="no unused activation token"):
            redeem_activation_token(worker.state_store, "amp-1", token)


def test_two_amphorae_get_different_tokens():
    with InProcessWorker(compute=RecordingCompute) as worker:
        worker.run("create_amphora", PAYLOAD)
        worker.run("create_amphora", {**PAYLOAD, "amphora_id": "amp-2"})
        drives = worker.drivers.compute.drives
        assert drives["amp-1"][ACTIVATION_TOKEN_FILE] != drives["amp-2"][ACTIVATION_TOKEN_FILE]


def test_a_token_is_redeemed_once_and_a_wrong_one_changes_nothing():
    with InProcessWorker() as worker:
        store = worker.state_store
        store.save(AmphoraRecord(amphora_id="amp-1", activation_token_hash=hash_activation_token("t0k")))
        with pytest.raises(KeramosError, match="refused"):
            redeem_activation_token(store, "amp-1", "wrong")
        assert store.get(AmphoraRecord, "amp-1").activation_token_hash == hash_activation_token("t0k")
        redeem_activation_token(store, "amp-1", "t0k")
        with pytest.raises(KeramosError, match="no unused activation token"):
            redeem_activation_token(store, "amp-1", "t0k")
        with pytest.raises(KeramosError, match="no unused activation token"):
            redeem_activation_token(store, "nobody", "t0k")


def test_activation_is_refused_twice_and_for_an_agent_answering_as_another_amphora():
    with InProcessWorker() as worker:
        store = worker.state_store
        store.save(AmphoraRecord(amphora_id="amp-1", activation_token_hash=hash_activation_token("t")))
        worker.drivers.amphora.instance_booted("amp-1", {ACTIVATION_TOKEN_FILE: b"t"})
        activate = ActivateAmphora(worker.drivers.amphora, store)
        instance = {"address": "127.0.0.1", "port": None}
        with pytest.raises(KeramosError, match="answered as amp-2"):
            activate.execute("amp-1", instance, {"amphora_id": "amp-2"})
        activate.execute("amp-1", instance, {"amphora_id": "amp-1"})
        assert store.get(AmphoraRecord, "amp-1").activation_token_hash is None
        with pytest.raises(KeramosError, match="no unused activation token"):
            activate.execute("amp-1", instance, {"amphora_id": "amp-1"})


class TlsBrokenAmphora(noop.NoopAmphora):
    """An agent whose mutual TLS fails: a refusal that is not "already activated"."""

    def activate(self, endpoint):
        raise DriverError(f"amphora {endpoint.amphora_id}: TLS failure: certificate verify failed")


@pytest.mark.parametrize(
    "amphora, outcome",
    [(TlsBrokenAmphora, "TLS failure"), (noop.NoopAmphora, None)],
)
def test_a_resumed_activation_takes_only_already_activated_as_the_earlier_activation(amphora, outcome):
    """Run again after its worker died between the agent's answer and the redemption, the task
    asked this same instance before: only the contract's ``AlreadyActivated`` means it was."""
    with InProcessWorker(amphora=amphora) as worker:
        store = worker.state_store
        store.save(
            AmphoraRecord(
                amphora_id="amp-1",
                compute_id="c-1",
                activation_token_hash=hash_activation_token("t"),
                activation_requested_at=utcnow(),
            )
        )
        worker.drivers.amphora.instance_booted("amp-1", {ACTIVATION_TOKEN_FILE: b"t"})
        if outcome is None:
            worker.drivers.amphora.activate(AmphoraEndpoint("amp-1", "127.0.0.1"))
        activate = ActivateAmphora(worker.drivers.amphora, store)
        instance = {"address": "127.0.0.1", "port": None}
        if outcome is None:
            activate.execute("amp-1", instance, {"amphora_id": "amp-1"}, compute_id="c-1")
            record = store.get(AmphoraRecord, "amp-1")
            assert record.activation_token_hash is None and record.activated_at is not None
        else:
            with pytest.raises(DriverError, match=outcome):
                activate.execute("amp-1", instance, {"amphora_id": "amp-1"}, compute_id="c-1")
            record = store.get(AmphoraRecord, "amp-1")
            assert record.activation_token_hash is not None and record.activated_at is None


def test_the_agent_hands_its_token_over_once_and_the_flow_spends_it():
    with InProcessWorker(compute=RecordingCompute) as worker:
        worker.run("create_amphora", PAYLOAD)
        endpoint = AmphoraEndpoint("amp-1", "127.0.0.1")
        with pytest.raises(AlreadyActivated, match="already activated"):
            worker.drivers.amphora.activate(endpoint)


class WrongTokenAmphora(noop.NoopAmphora):
    """An agent that presents another token than the one of its config drive."""

    def activate(self, endpoint):
        super().activate(endpoint)
        return "not-the-token"


def test_an_agent_presenting_a_wrong_token_is_not_activated_and_nothing_is_left():
    with InProcessWorker(amphora=WrongTokenAmphora) as worker:
        with pytest.raises(KeramosError, match="activation token refused"):
            worker.run("create_amphora", {**PAYLOAD, "lb": LB})
        assert_error_and_clean(worker, "activation token refused")
        assert worker.drivers.amphora.configs == {}


def test_csr_mode_certifies_the_key_the_amphora_made_and_keeps_no_key():
    with InProcessWorker(compute=RecordingCompute, conf_overrides=certificate_mode("csr")) as worker:
        created = worker.run("create_amphora", {**PAYLOAD, "lb": LB})["amphora"]
        assert created["status"] == AmphoraStatus.READY and created["activation_token_hash"] is None
        assert sorted(worker.drivers.compute.drives["amp-1"]) == [
            ACTIVATION_TOKEN_FILE,
            "amphora_id",
            "client_ca_cert.pem",
        ]
        (record,) = worker.state_store.find(CertificateRecord, amphora_id="amp-1")
        assert record.serial == created["cert_serial"] and record.kind == "server"
        bundle = worker.drivers.cert_manager.get(record.cert_ref)
        assert bundle.private_key is None
        assert worker.drivers.amphora.certificates["amp-1"] == bundle.certificate
        assert ("amp-1", "lb-1") in worker.drivers.amphora.configs


def test_csr_signing_checks_the_token_without_spending_it():
    with InProcessWorker(amphora=HashWatchingAmphora, conf_overrides=certificate_mode("csr")) as worker:
        worker.drivers.amphora.state_store = worker.state_store
        worker.run("create_amphora", PAYLOAD)
        (seen,) = worker.drivers.amphora.hashes
        assert seen is not None
        assert worker.state_store.get(AmphoraRecord, "amp-1").activation_token_hash is None


class WrongCsrTokenAmphora(noop.NoopAmphora):
    """An agent whose CSR comes with another token than the one of its config drive."""

    def fetch_csr(self, endpoint, timeout):
        return dataclasses.replace(super().fetch_csr(endpoint, timeout), activation_token="forged")


class ImpostorKeyAmphora(noop.NoopAmphora):
    """A CSR for another key than the one the agent proved over TLS (a relayed CSR)."""

    def fetch_csr(self, endpoint, timeout):
        other = ec.generate_private_key(ec.SECP256R1()).public_key()
        proved = other.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        return dataclasses.replace(super().fetch_csr(endpoint, timeout), server_public_key_pem=proved)


@pytest.mark.parametrize(
    ("amphora", "reason"),
    [(WrongCsrTokenAmphora, "activation token refused"), (ImpostorKeyAmphora, "not for the key its agent proved")],
)
def test_csr_mode_refuses_a_wrong_token_or_a_csr_for_another_key_and_leaves_nothing(amphora, reason):
    with InProcessWorker(amphora=amphora, conf_overrides=certificate_mode("csr")) as worker:
        with pytest.raises(KeramosError, match=reason):
            worker.run("create_amphora", {**PAYLOAD, "lb": LB})
        assert_error_and_clean(worker, reason)
        assert worker.drivers.amphora.certificates == {}


class ImpostorAmphora(noop.NoopAmphora):
    """An agent that answers as another amphora."""

    def wait_until_reachable(self, endpoint, timeout):
        return {"amphora_id": "someone-else", "api_version": "1.0"}


def test_an_agent_answering_as_another_amphora_is_not_activated_and_nothing_is_left():
    with InProcessWorker(amphora=ImpostorAmphora) as worker:
        with pytest.raises(KeramosError, match="answered as someone-else"):
            worker.run("create_amphora", PAYLOAD)
        assert_error_and_clean(worker, "answered as someone-else")


def test_creations_at_once_share_one_built_flow_and_each_gets_its_own_amphora():
    with InProcessWorker(compute=RecordingCompute) as worker:
        factory = worker.worker.runner.flows["create_amphora"]
        assert factory.reusable and factory.flow() is factory.flow()
        requests = {
            worker.cast("create_amphora", {"amphora_id": f"amp-{i}", "image_id": "img-1"}): f"amp-{i}"
            for i in range(20)
        }
        for request_id, amphora_id in requests.items():
            assert worker.wait(request_id, timeout=60)["amphora"]["amphora_id"] == amphora_id
        amphorae = [worker.state_store.get(AmphoraRecord, f"amp-{i}") for i in range(20)]
        assert all(a.status == AmphoraStatus.READY and a.activation_token_hash is None for a in amphorae)
        assert len({a.compute_id for a in amphorae}) == len({a.cert_serial for a in amphorae}) == 20
        tokens = {drive[ACTIVATION_TOKEN_FILE] for drive in worker.drivers.compute.drives.values()}
        assert len(tokens) == 20
