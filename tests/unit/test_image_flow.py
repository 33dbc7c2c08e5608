"""The verify_image flow through the in-process worker: active, or killed with the reason."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import threading

import pytest

from keramos.flows.images import VerifyImage
from keramos.framework.errors import ConfigError
from keramos.framework.images import signature
from keramos.framework.images.cache import image_cache_opts
from keramos.framework.images.certificate_validation import register_opts
from keramos.framework.images.signature import Reason, SignatureVerificationError
from keramos.framework.records import ImageRecord, TaskRecord, TaskState
from keramos.framework.testing import InProcessWorker
from keramos.plugins.images.file_store import FileImageStore
from keramos.plugins.images.key_managers import LocalKeyManager
from tests.unit.image_helpers import DAY, NOW, Issued, issue, new_key, pki, sign, write_ca_file

DATA = os.urandom(700_000)


@dataclasses.dataclass
class Setup:
    """A worker with a file image store, a local key manager and trusted CAs."""

    worker: InProcessWorker
    store: FileImageStore
    keys: LocalKeyManager

    def add_image(
        self,
        image_id: str,
        signer: Issued,
        hash_method: str = "SHA-256",
        data: bytes = DATA,
        chain: tuple[Issued, ...] | None = None,
        **changes: str | None,
    ) -> str:
        """Store ``signer``'s certificate (with the intermediate) and an image it signed."""
        chain = (pki().intermediate,) if chain is None else chain
        bundle = b"".join(cert.certificate_pem for cert in (signer, *chain))
        certificate_uuid = self.keys.store_certificate(bundle)
        properties = sign(data, signer, certificate_uuid, hash_method)
        for name, value in changes.items():
            if value is None:
                properties.pop(name)
            else:
                properties[name] = value
        self.store.add(image_id, io.BytesIO(data), properties)
        return certificate_uuid

    def verify(self, image_id: str) -> dict:
        return self.worker.run("verify_image", {"image_id": image_id})["image"]

    def failure(self, image_id: str) -> SignatureVerificationError:
        with pytest.raises(SignatureVerificationError) as excinfo:
            self.worker.run("verify_image", {"image_id": image_id})
        task = self.worker.state_store.find(TaskRecord, event="verify_image", resource_id=image_id)[
            -1
        ]
        assert task.state == TaskState.FAILURE and excinfo.value.reason in task.message
        assert task.error_type == "SignatureVerificationError"
        image = self.worker.state_store.get(ImageRecord, image_id)
        assert image.status == "killed" and excinfo.value.reason in image.message
        cache = os.path.join(self.worker.conf.state_path, "image_cache")
        assert os.listdir(os.path.join(cache, "entries")) == []
        assert os.listdir(os.path.join(cache, "staging")) == []
        return excinfo.value

    def data_path(self, image_id: str) -> str:
        return self.store.data_path(image_id)


@pytest.fixture
def setup(tmp_path):
    ca_file = write_ca_file(tmp_path / "trusted.pem", pki().root)
    overrides = {
        "image_verification": {"trusted_ca_file": ca_file, "chunk_size": 65536},
        "image_cache": {"max_size": 10 * len(DATA)},
    }
    with InProcessWorker(
        flows=[VerifyImage],
        state_path=tmp_path / "state",
        image_store=FileImageStore,
        key_manager=LocalKeyManager,
    ) as worker:
        # Plugin options exist once their module registers them, after make_conf's overrides.
        register_opts(worker.conf)
        worker.conf.register_opts(image_cache_opts, group="image_cache")
        for group, values in overrides.items():
            for name, value in values.items():
                worker.conf.set_override(name, value, group=group)
        yield Setup(worker, worker.drivers.image_store, worker.drivers.key_manager)


@pytest.mark.parametrize(
    "kind,hash_method", [("rsa", "SHA-256"), ("p384", "SHA-384"), ("dsa", "SHA-224")]
)
def test_signed_image_becomes_active_and_cached(setup, kind, hash_method):
    certificate_uuid = setup.add_image("img", pki().signers[kind], hash_method)
    image = setup.verify("img")
    assert image["status"] == "active" and image["cache_hit"] is False
    assert image["certificate_uuid"] == certificate_uuid
    assert f"image signer {kind}" in image["signer"]
    with open(image["path"], "rb") as cached:
        assert cached.read() == DATA
    record = setup.worker.state_store.get(ImageRecord, "img")
    assert (record.status, record.size, record.certificate_uuid) == (
        "active",
        len(DATA),
        certificate_uuid,
    )


def test_second_verification_is_served_from_the_cache(setup):
    setup.add_image("img", pki().signers["rsa"])
    first = setup.verify("img")
    os.unlink(setup.data_path("img"))  # the store could not serve the data again
    second = setup.verify("img")
    assert second["cache_hit"] is True and second["path"] == first["path"]
    tasks = setup.worker.state_store.find(TaskRecord, event="verify_image", resource_id="img")
    assert [task.state for task in tasks] == [TaskState.SUCCESS, TaskState.SUCCESS]


def _flip_byte(path: str, offset: int) -> None:
    with open(path, "r+b") as data:
        data.seek(offset)
        byte = data.read(1)
        data.seek(offset)
        data.write(bytes([byte[0] ^ 0x40]))


@pytest.mark.parametrize("kind", ["rsa", "p256"])
def test_flipped_byte_kills_the_image_as_modified_data(setup, kind):
    setup.add_image("img", pki().signers[kind])
    _flip_byte(setup.data_path("img"), 123_456)
    assert setup.failure("img").reason == Reason.DATA_MODIFIED


def test_truncated_file_kills_the_image_as_truncated(setup):
    setup.add_image("img", pki().signers["rsa"])
    os.truncate(setup.data_path("img"), len(DATA) - 4096)
    error = setup.failure("img")
    assert error.reason == Reason.TRUNCATED and str(len(DATA)) in str(error)


# Only RSA-PSS proves which key made a signature; an ECDSA signature from another key is
# indistinguishable from one the right key made over other data (see verify_digest).
@pytest.mark.parametrize(("kind", "reason"), [("rsa", Reason.WRONG_KEY), ("p384", Reason.DATA_MODIFIED)])
def test_signature_from_another_key_kills_the_image(setup, kind, reason):
    certificate_uuid = setup.add_image("img", pki().signers[kind])
    impostor = Issued(new_key(kind, 42), pki().signers[kind].certificate)
    forged = sign(DATA, impostor, certificate_uuid)
    setup.store.add("img", io.BytesIO(DATA), forged)
    assert setup.failure("img").reason == reason


@pytest.mark.parametrize("kind", ["rsa", "p256", "p384"])
def test_data_modified_before_upload_kills_the_image_as_modified_data(setup, kind):
    certificate_uuid = setup.add_image("img", pki().signers[kind])
    signed = sign(DATA, pki().signers[kind], certificate_uuid)
    tampered = bytearray(DATA)
    tampered[4242] ^= 0x01
    setup.store.add("img", io.BytesIO(bytes(tampered)), signed)
    error = setup.failure("img")
    assert error.reason == Reason.DATA_MODIFIED, error


def test_a_failed_verification_leaves_no_lock_file(setup):
    setup.add_image("img", pki().signers["rsa"])
    _flip_byte(setup.data_path("img"), 99)
    setup.failure("img")
    locks = os.path.join(setup.worker.conf.state_path, "image_cache", "locks")
    assert [name for name in os.listdir(locks) if name != "cache.lock"] == []


def test_expired_certificate_kills_the_image(setup):
    expired = issue(
        "expired signer",
        new_key("rsa"),
        pki().intermediate,
        not_before=NOW - 10 * DAY,
        not_after=NOW - DAY,
    )
    setup.add_image("img", expired)
    assert setup.failure("img").reason == Reason.CERTIFICATE_EXPIRED


def test_certificate_not_chained_to_a_trusted_ca_kills_the_image(setup):
    rogue_root = issue("rogue root", new_key("rsa", 7), ca=True)
    rogue_signer = issue("rogue signer", new_key("rsa", 8), rogue_root)
    setup.add_image("img", rogue_signer, chain=(rogue_root,))
    assert setup.failure("img").reason == Reason.CERTIFICATE_UNTRUSTED


@pytest.mark.parametrize(
    "changes,reason",
    [
        ({signature.KEY_TYPE: "RSA-X931"}, Reason.UNKNOWN_KEY_TYPE),
        ({signature.HASH_METHOD: "SHA3-256"}, Reason.UNKNOWN_HASH_METHOD),
        ({signature.SIGNATURE: None}, Reason.MISSING_PROPERTY),
        ({signature.CERTIFICATE_UUID: None}, Reason.MISSING_PROPERTY),
        (
            {signature.CERTIFICATE_UUID: "00000000-0000-4000-8000-000000000000"},
            Reason.CERTIFICATE_NOT_FOUND,
        ),
        ({signature.KEY_TYPE: "ECC_SECP256R1"}, Reason.KEY_TYPE_MISMATCH),
    ],
)
def test_bad_properties_kill_the_image_with_their_reason(setup, changes, reason):
    setup.add_image("img", pki().signers["rsa"], **changes)
    assert setup.failure("img").reason == reason


def test_failed_image_can_be_fixed_and_verified_again(setup):
    setup.add_image("img", pki().signers["rsa"])
    os.truncate(setup.data_path("img"), 10)
    setup.failure("img")
    setup.add_image("img", pki().signers["rsa"])
    assert setup.verify("img")["status"] == "active"


def test_concurrent_verifications_download_once(setup):
    setup.add_image("img", pki().signers["rsa"])
    calls: list[str] = []
    original = setup.store.chunks

    def counting_chunks(image_id, chunk_size=1 << 20):
        calls.append(image_id)
        return original(image_id, chunk_size)

    setup.store.chunks = counting_chunks
    results: list[dict] = []
    threads = [
        threading.Thread(target=lambda: results.append(setup.verify("img"))) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4 and calls == ["img"]
    assert sorted(result["cache_hit"] for result in results) == [False, True, True, True]


def test_without_trusted_cas_the_flow_refuses_to_run(tmp_path):
    with InProcessWorker(flows=[VerifyImage], state_path=tmp_path) as worker:
        with pytest.raises(ConfigError, match="trusted_ca_file"):
            worker.run("verify_image", {"image_id": "img"})


@pytest.mark.parametrize("damage,reason", [(None, None), ("flip", Reason.DATA_MODIFIED)])
def test_image_larger_than_the_cache_is_verified_without_a_copy(setup, damage, reason):
    setup.worker.conf.set_override("max_size", len(DATA) // 2, group="image_cache")
    setup.add_image("img", pki().signers["p384"], "SHA-384")
    if damage is None:
        image = setup.verify("img")
        assert image["status"] == "active" and image["path"] is None
    else:
        _flip_byte(setup.data_path("img"), 5)
        assert setup.failure("img").reason == reason


def test_image_of_unknown_size_larger_than_the_cache_is_verified_without_a_copy(setup):
    setup.worker.conf.set_override("max_size", len(DATA) // 2, group="image_cache")
    setup.add_image("img", pki().signers["rsa"])
    metadata_path = setup.data_path("img") + ".json"
    with open(metadata_path) as metadata:
        document = json.load(metadata)
    del document["size"]
    with open(metadata_path, "w") as metadata:
        json.dump(document, metadata)
    image = setup.verify("img")
    assert image["status"] == "active" and image["path"] is None
    cache = os.path.join(setup.worker.conf.state_path, "image_cache")
    assert os.listdir(os.path.join(cache, "staging")) == []
