"""Certificate flows: issue, rotate (and its revert), revoke, and what is due for rotation."""

from __future__ import annotations

import datetime as dt
import os

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from taskflow import engines

from keramos.flows.certificates import IssueCertificate, RevokeCertificate, RotateCertificate
from keramos.flows.tasks.certificates import CertificateStatus, certificates_due_for_rotation, pem_bundle
from keramos.framework import schema
from keramos.framework.config import make_conf
from keramos.framework.contracts import CertificateBundle, CertKind
from keramos.framework.errors import DriverError, NotFound, PayloadError
from keramos.framework.loader import load_flow_classes
from keramos.framework.pki import errors
from keramos.framework.records import AmphoraRecord, AmphoraStatus, CertificateRecord, utcnow
from keramos.framework.testing import InProcessWorker
from tests.unit.certs_helpers import (
    UnreachableAmphora,
    make_csr,
    make_drivers,
    make_generator,
    make_store,
)


def run(factory_class, drivers, payload) -> dict:
    """Run a flow the way the worker does: validated payload as the store, result keys back."""
    factory = factory_class(drivers, make_conf(config_files=[]))
    store = schema.validate(factory.payload, payload)
    engine = engines.load(factory.build(), store=store)
    engine.run()
    return {key: engine.storage.fetch(key) for key in factory.result_keys}


@pytest.fixture
def drivers(tmp_path):
    return make_drivers(tmp_path)


def test_flows_are_installed_under_their_names():
    classes = load_flow_classes(["issue_certificate", "rotate_certificate", "revoke_certificate"])
    assert classes == {
        "issue_certificate": IssueCertificate,
        "rotate_certificate": RotateCertificate,
        "revoke_certificate": RevokeCertificate,
    }


def test_issue_stores_the_bundle_and_records_the_certificate(drivers):
    result = run(
        IssueCertificate,
        drivers,
        {"common_name": "amp-1", "amphora_id": "amp-1", "ip_addresses": ["192.0.2.5"]},
    )
    issued = result["issued_certificate"]
    assert "private_key" not in " ".join(issued)
    record = drivers.state_store.get(CertificateRecord, issued["serial"])
    assert (record.kind, record.subject, record.amphora_id, record.status) == (
        "server",
        "amp-1",
        "amp-1",
        "active",
    )
    assert record.not_after.isoformat() == issued["not_after"]
    bundle = drivers.cert_manager.get(issued["cert_ref"])
    assert bundle.certificate.decode() == issued["certificate_pem"]
    assert bundle.private_key is not None


def test_issue_for_the_longest_name_stores_its_bundle_and_longer_is_refused(drivers):
    result = run(IssueCertificate, drivers, {"common_name": "a" * 64, "kind": "client"})
    assert drivers.cert_manager.get(result["issued_certificate"]["cert_ref"]).private_key
    with pytest.raises(DriverError, match="at most 64 characters"):
        run(IssueCertificate, drivers, {"common_name": "a" * 65})


def test_issue_for_the_controller_uses_the_client_ca(drivers):
    result = run(IssueCertificate, drivers, {"common_name": "controller-1", "kind": "client"})
    certificate = x509.load_pem_x509_certificate(result["issued_certificate"]["certificate_pem"].encode())
    certificate.verify_directly_issued_by(
        x509.load_pem_x509_certificate(drivers.cert_generator.ca_certificate(CertKind.CLIENT))
    )


def test_issue_from_a_csr_keeps_no_key(drivers):
    result = run(IssueCertificate, drivers, {"common_name": "amp-9", "csr_pem": make_csr("amp-9").decode()})
    assert drivers.cert_manager.get(result["issued_certificate"]["cert_ref"]).private_key is None


def test_issue_for_a_csr_of_another_identity_leaves_nothing(drivers):
    with pytest.raises(errors.IdentityMismatch):
        run(
            IssueCertificate,
            drivers,
            {"common_name": "amp-9", "csr_pem": make_csr("amp-1").decode()},
        )
    assert drivers.state_store.find(CertificateRecord) == []


def test_issue_failing_to_record_deletes_the_stored_bundle(drivers, monkeypatch):
    def broken_save(record):
        raise DriverError("database is gone")

    monkeypatch.setattr(drivers.state_store, "save", broken_save)
    with pytest.raises(DriverError, match="database is gone"):
        run(IssueCertificate, drivers, {"common_name": "amp-1"})
    assert os.listdir(drivers.cert_manager.storage_path) == []


def test_issue_payload_is_checked():
    with pytest.raises(PayloadError, match="common_name"):
        schema.validate(IssueCertificate.payload, {"common_name": "../x"})
    with pytest.raises(PayloadError, match="kind"):
        schema.validate(IssueCertificate.payload, {"common_name": "a", "kind": "peer"})


def _amphora_with_certificate(drivers) -> str:
    drivers.state_store.save(AmphoraRecord(amphora_id="amp-1", status=AmphoraStatus.READY, address="192.0.2.10"))
    issued = run(IssueCertificate, drivers, {"common_name": "amp-1", "amphora_id": "amp-1"})
    return issued["issued_certificate"]["serial"]


def test_rotate_pushes_the_new_certificate_and_records_it(drivers):
    old_serial = _amphora_with_certificate(drivers)
    result = run(RotateCertificate, drivers, {"amphora_id": "amp-1", "validity_days": 30})
    new = result["issued_certificate"]
    assert result["previous_serial"] == old_serial != new["serial"]
    pushed = drivers.amphora.certificates["amp-1"]
    assert pushed.startswith(new["certificate_pem"].encode())
    assert b"PRIVATE KEY" in pushed
    store = drivers.state_store
    assert store.get(CertificateRecord, old_serial).status == CertificateStatus.SUPERSEDED
    new_record = store.get(CertificateRecord, new["serial"])
    assert new_record.status == CertificateStatus.ACTIVE
    assert new_record.previous_serial == old_serial
    assert dt.timedelta(days=29) < new_record.not_after - utcnow() <= dt.timedelta(days=30)
    assert store.get(AmphoraRecord, "amp-1").cert_serial == new["serial"]


def test_rotate_failing_on_the_push_keeps_the_old_certificate_in_place_and_recorded(tmp_path):
    drivers = make_drivers(tmp_path, amphora=UnreachableAmphora(make_conf(config_files=[])))
    old_serial = _amphora_with_certificate(drivers)
    old_record = drivers.state_store.get(CertificateRecord, old_serial)
    bundles_before = sorted(os.listdir(drivers.cert_manager.storage_path))
    with pytest.raises(DriverError, match="unreachable"):
        run(RotateCertificate, drivers, {"amphora_id": "amp-1"})
    records = drivers.state_store.find(CertificateRecord)
    assert [(r.serial, r.status) for r in records] == [(old_serial, CertificateStatus.ACTIVE)]
    assert drivers.state_store.get(CertificateRecord, old_serial).cert_ref == old_record.cert_ref
    assert sorted(os.listdir(drivers.cert_manager.storage_path)) == bundles_before
    assert drivers.state_store.get(AmphoraRecord, "amp-1").cert_serial == old_serial


def test_rotate_failing_after_the_push_reinstalls_the_old_certificate(drivers, monkeypatch):
    old_serial = _amphora_with_certificate(drivers)
    old_bundle = drivers.cert_manager.get(drivers.state_store.get(CertificateRecord, old_serial).cert_ref)
    real_update = drivers.state_store.update

    def failing_update(record_type, key, **changes):
        if changes.get("status") == CertificateStatus.SUPERSEDED:
            raise DriverError("database is gone")
        return real_update(record_type, key, **changes)

    monkeypatch.setattr(drivers.state_store, "update", failing_update)
    with pytest.raises(DriverError, match="database is gone"):
        run(RotateCertificate, drivers, {"amphora_id": "amp-1"})
    assert drivers.amphora.certificates["amp-1"].startswith(old_bundle.certificate)
    assert [r.serial for r in drivers.state_store.find(CertificateRecord)] == [old_serial]
    assert drivers.state_store.get(CertificateRecord, old_serial).status == CertificateStatus.ACTIVE


def test_rotate_an_unknown_amphora_is_not_found(drivers):
    with pytest.raises(NotFound, match="no amphora amp-404"):
        run(RotateCertificate, drivers, {"amphora_id": "amp-404"})


def test_rotate_an_amphora_without_certificate_is_not_found(drivers):
    drivers.state_store.save(AmphoraRecord(amphora_id="amp-2", address="192.0.2.2"))
    with pytest.raises(NotFound, match="no active server certificate"):
        run(RotateCertificate, drivers, {"amphora_id": "amp-2"})


def test_revoke_records_the_revocation_and_publishes_the_crl(drivers):
    serial = _amphora_with_certificate(drivers)
    result = run(RevokeCertificate, drivers, {"serial": serial.upper()})
    record = drivers.state_store.get(CertificateRecord, serial)
    assert record.status == CertificateStatus.REVOKED and record.revoked_at is not None
    assert result["kind"] == "server"
    crl = x509.load_pem_x509_crl(result["crl_pem"].encode())
    assert crl.get_revoked_certificate_by_serial_number(int(serial, 16)) is not None
    with open(drivers.cert_generator.crl_location("server"), "rb") as stream:
        assert stream.read().decode() == result["crl_pem"]
    again = run(RevokeCertificate, drivers, {"serial": serial})
    assert len(x509.load_pem_x509_crl(again["crl_pem"].encode())) == 1


def test_revoke_an_unknown_serial_is_not_found(drivers):
    with pytest.raises(NotFound, match="no certificate with serial abc"):
        run(RevokeCertificate, drivers, {"serial": "abc"})


def test_revoke_failing_to_publish_leaves_the_certificate_active(drivers, monkeypatch):
    serial = _amphora_with_certificate(drivers)

    def broken(kind, revoked):
        raise DriverError("disk full")

    monkeypatch.setattr(drivers.cert_generator, "publish_crl", broken)
    with pytest.raises(DriverError, match="disk full"):
        run(RevokeCertificate, drivers, {"serial": serial})
    record = drivers.state_store.get(CertificateRecord, serial)
    assert record.status == CertificateStatus.ACTIVE and record.revoked_at is None


def test_due_for_rotation_is_bounded_soonest_first_and_skips_others(drivers):
    now = utcnow()
    store = drivers.state_store

    def record(serial, days, amphora_status=AmphoraStatus.READY, kind="server", **fields):
        if fields.get("amphora_id"):
            store.save(AmphoraRecord(amphora_id=fields["amphora_id"], status=amphora_status))
        store.save(
            CertificateRecord(
                serial=serial, kind=kind, subject=serial, not_after=now + dt.timedelta(days=days), **fields
            )
        )

    record("a", 20, amphora_id="amp-a")
    record("b", 5, amphora_id="amp-b")
    record("c", 10, amphora_id="amp-c")
    record("late", 60, amphora_id="amp-d")
    record("controller", 1)
    record("client-kind", 1, kind="client", amphora_id="amp-k")
    record("revoked", 1, amphora_id="amp-e", status="revoked")
    record("superseded", 1, amphora_id="amp-f", status="superseded")
    record("broken", 1, amphora_id="amp-g", amphora_status=AmphoraStatus.ERROR)
    record("booting", 1, amphora_id="amp-h", amphora_status=AmphoraStatus.BOOTING)
    record("orphan", 1, amphora_id=None)
    window = dt.timedelta(days=30)
    assert [r.serial for r in certificates_due_for_rotation(store, now, window, 10)] == ["b", "c", "a"]
    assert [r.serial for r in certificates_due_for_rotation(store, now, window, 2)] == ["b", "c"]
    assert certificates_due_for_rotation(store, now, window, 0) == []


def test_flows_run_through_the_worker_runner(tmp_path):
    generator, store = make_generator(tmp_path), make_store(tmp_path)
    failing = UnreachableAmphora(make_conf(config_files=[]))
    with InProcessWorker(cert_generator=generator, cert_manager=store, amphora=failing) as worker:
        worker.state_store.save(AmphoraRecord(amphora_id="amp-1", address="192.0.2.10"))
        issued = worker.run("issue_certificate", {"common_name": "amp-1", "amphora_id": "amp-1"})
        serial = issued["issued_certificate"]["serial"]
        with pytest.raises(DriverError, match="unreachable"):
            worker.run("rotate_certificate", {"amphora_id": "amp-1"})
        assert [r.serial for r in worker.state_store.find(CertificateRecord)] == [serial]
        revoked = worker.run("revoke_certificate", {"serial": serial})
        assert revoked["kind"] == "server"
        assert worker.state_store.get(CertificateRecord, serial).status == "revoked"


def test_rotate_an_amphora_made_by_create_amphora(tmp_path):
    generator, store = make_generator(tmp_path), make_store(tmp_path)
    with InProcessWorker(cert_generator=generator, cert_manager=store) as worker:
        worker.run("create_amphora", {"amphora_id": "amp-5", "image_id": "image-1"})
        [first] = worker.state_store.find(CertificateRecord, amphora_id="amp-5")
        rotated = worker.run("rotate_certificate", {"amphora_id": "amp-5"})
        assert rotated["previous_serial"] == first.serial
        new_serial = rotated["issued_certificate"]["serial"]
        assert worker.state_store.get(CertificateRecord, first.serial).status == "superseded"
        assert worker.state_store.get(AmphoraRecord, "amp-5").cert_serial == new_serial
        pushed = worker.drivers.amphora.certificates["amp-5"]
        assert pushed.startswith(rotated["issued_certificate"]["certificate_pem"].encode())


def test_pem_bundle_decrypts_a_key_stored_with_its_passphrase(drivers):
    issued = drivers.cert_generator.issue("amp-1", CertKind.SERVER)
    key = serialization.load_pem_private_key(issued.private_key_pem, None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    bundle = pem_bundle(CertificateBundle(issued.certificate_pem, encrypted, (), b"secret"))
    assert bundle.startswith(issued.certificate_pem)
    assert serialization.load_pem_private_key(bundle, None).private_numbers() == key.private_numbers()
    with pytest.raises(DriverError, match="passphrase does not decrypt"):
        pem_bundle(CertificateBundle(issued.certificate_pem, encrypted, (), b"wrong"))
    with pytest.raises(DriverError, match="no private key"):
        pem_bundle(CertificateBundle(issued.certificate_pem))
