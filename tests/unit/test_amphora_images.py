"""create_amphora verifies its image first: a signed image boots, anything else boots nothing."""

from __future__ import annotations

import io
import os

import pytest

from keramos.framework.errors import DriverError
from keramos.framework.images import signature
from keramos.framework.images.cache import image_cache_opts
from keramos.framework.images.certificate_validation import register_opts
from keramos.framework.images.signature import Reason, SignatureVerificationError
from keramos.framework.records import AmphoraRecord, AmphoraStatus, ImageRecord
from keramos.framework.testing import InProcessWorker
from keramos.plugins.images.file_store import FileImageStore
from keramos.plugins.images.key_managers import LocalKeyManager
from tests.unit.amphora_helpers import nothing_left
from tests.unit.image_helpers import issue, new_key, pki, sign, write_ca_file

DATA = os.urandom(200_000)


class Images:
    """A worker with a file image store, a local key manager and a trusted CA."""

    def __init__(self, worker: InProcessWorker, require_signed: bool) -> None:
        self.worker = worker
        self.require_signed = require_signed

    def add(self, image_id: str, data: bytes = DATA, **changes: str | None) -> None:
        signer = pki().signers["rsa"]
        bundle = signer.certificate_pem + pki().intermediate.certificate_pem
        certificate_uuid = self.worker.drivers.key_manager.store_certificate(bundle)
        properties = sign(DATA, signer, certificate_uuid, "SHA-256")
        for name, value in changes.items():
            if value is None:
                properties.pop(name)
            else:
                properties[name] = value
        self.worker.drivers.image_store.add(image_id, io.BytesIO(data), properties)

    def create(self, image_id: str) -> dict:
        return self.worker.run("create_amphora", {"amphora_id": "amp-1", "image_id": image_id})

    def refused(self, image_id: str, reason: str) -> None:
        with pytest.raises(SignatureVerificationError) as refused:
            self.create(image_id)
        assert refused.value.reason == reason
        nothing_left(self.worker)
        assert self.worker.drivers.compute.instances == {}
        amphora = self.worker.state_store.get(AmphoraRecord, "amp-1")
        assert amphora.status == AmphoraStatus.ERROR and reason in amphora.error


def images_worker(tmp_path, require_signed: bool):
    ca_file = write_ca_file(tmp_path / "trusted.pem", pki().root)
    worker = InProcessWorker(
        state_path=tmp_path / "state",
        image_store=FileImageStore,
        key_manager=LocalKeyManager,
        conf_overrides={"amphora": {"require_signed_images": require_signed}},
    )
    worker.start()
    register_opts(worker.conf)
    worker.conf.register_opts(image_cache_opts, group="image_cache")
    worker.conf.set_override("trusted_ca_file", ca_file, group="image_verification")
    return worker


@pytest.fixture(params=[True, False], ids=["signed_only", "unsigned_allowed"])
def images(request, tmp_path):
    """Images in a worker that requires signed images, or one that boots unsigned ones too."""
    worker = images_worker(tmp_path, require_signed=request.param)
    try:
        yield Images(worker, request.param)
    finally:
        worker.stop()


def test_a_signed_image_is_verified_before_the_amphora_boots(images):
    images.add("good")
    assert images.create("good")["amphora"]["status"] == AmphoraStatus.READY
    image = images.worker.state_store.get(ImageRecord, "good")
    assert image.status == "active" and "image signer" in image.signer


def test_a_tampered_image_boots_nothing(images):
    images.add("tampered", data=DATA[:-1] + bytes([DATA[-1] ^ 1]))
    images.refused("tampered", Reason.DATA_MODIFIED)
    assert images.worker.state_store.get(ImageRecord, "tampered").status == "killed"


def test_a_partly_signed_image_is_verified_and_refused(images):
    images.add("partly", **{signature.SIGNATURE: None})
    images.refused("partly", Reason.MISSING_PROPERTY)


def test_an_unsigned_image_boots_unverified_only_when_allowed(images):
    images.worker.drivers.image_store.add("plain", io.BytesIO(DATA), {})
    if images.require_signed:
        images.refused("plain", Reason.MISSING_PROPERTY)
    else:
        assert images.create("plain")["amphora"]["status"] == AmphoraStatus.READY
        assert images.worker.state_store.get(ImageRecord, "plain") is None


def test_a_failure_after_verification_keeps_the_image_active_and_cached(images, monkeypatch):
    images.add("good")

    def refuse(*args, **kwargs):
        raise DriverError("no capacity")

    monkeypatch.setattr(images.worker.drivers.compute, "build", refuse)
    with pytest.raises(DriverError, match="no capacity"):
        images.create("good")
    assert images.worker.state_store.get(ImageRecord, "good").status == "active"
    entries = os.path.join(images.worker.conf.state_path, "image_cache", "entries")
    assert os.listdir(entries) != []


def test_a_replaced_trusted_ca_file_takes_effect_in_the_flow_built_once(images, tmp_path):
    images.add("good")
    assert images.create("good")["amphora"]["status"] == AmphoraStatus.READY
    factory = images.worker.worker.runner.flows["create_amphora"]
    built = factory.flow()
    rogue = issue("another root", new_key("rsa", 5), ca=True)
    write_ca_file(tmp_path / "replacement.pem", rogue)
    os.replace(tmp_path / "replacement.pem", tmp_path / "trusted.pem")
    with pytest.raises(SignatureVerificationError) as refused:
        images.worker.run("create_amphora", {"amphora_id": "amp-2", "image_id": "good"})
    assert refused.value.reason == Reason.CERTIFICATE_UNTRUSTED
    assert factory.flow() is built
