"""Glance signature properties and the streaming verifier."""

from __future__ import annotations

import base64
import hashlib
import os
import tracemalloc

import pytest

from keramos.framework.images import signature
from keramos.framework.images.signature import Reason, SignatureVerificationError
from tests.unit.image_helpers import chunked, new_key, pki, sign

DATA = os.urandom(256 * 1024 + 17)
UUID = "6f0f4a4e-8c52-4a57-9d4e-0b1a5a1f0c11"


def verify(data: bytes, properties: dict, public_key, expected_size: int | None = None) -> bytes:
    spec = signature.parse_signature_properties(properties)
    verifier = signature.StreamingVerifier(spec, public_key, expected_size=expected_size)
    return verifier.verify_stream(chunked(data, 65536))


def reason_of(excinfo: pytest.ExceptionInfo) -> str:
    return excinfo.value.reason


@pytest.mark.parametrize(
    "kind,hash_method",
    [
        ("rsa", "SHA-224"),
        ("rsa", "SHA-256"),
        ("rsa", "SHA-384"),
        ("rsa", "SHA-512"),
        ("dsa", "SHA-256"),
        ("p256", "SHA-256"),
        ("p384", "SHA-384"),
        ("p521", "SHA-512"),
    ],
)
def test_signed_image_verifies_for_every_key_type_and_hash(kind, hash_method):
    signer = pki().signers[kind]
    properties = sign(DATA, signer, UUID, hash_method)
    digest = verify(DATA, properties, signer.certificate.public_key(), expected_size=len(DATA))
    assert digest == hashlib.new(hash_method.replace("-", "").lower(), DATA).digest()
    assert properties[signature.KEY_TYPE] == signature.key_type_of(signer.key)


@pytest.mark.parametrize("salt_length", [0, 20, 32, 222])
def test_given_pss_salt_length_is_honoured(salt_length):
    signer = pki().signers["rsa"]
    properties = sign(DATA, signer, UUID, salt_length=salt_length)
    assert properties[signature.PSS_SALT_LENGTH] == str(salt_length)
    verify(DATA, properties, signer.certificate.public_key())
    wrong = {**properties, signature.PSS_SALT_LENGTH: str(salt_length + 1)}
    with pytest.raises(SignatureVerificationError):
        verify(DATA, wrong, signer.certificate.public_key())


@pytest.mark.parametrize("salt_length", [None, 32])
def test_without_salt_length_both_max_and_digest_length_salts_verify(salt_length):
    signer = pki().signers["rsa"]
    properties = sign(DATA, signer, UUID, salt_length=salt_length)
    properties.pop(signature.PSS_SALT_LENGTH, None)
    verify(DATA, properties, signer.certificate.public_key())


def test_flipped_byte_fails_as_modified_data_for_rsa():
    signer = pki().signers["rsa"]
    properties = sign(DATA, signer, UUID)
    tampered = bytearray(DATA)
    tampered[1000] ^= 0x01
    with pytest.raises(SignatureVerificationError) as excinfo:
        verify(bytes(tampered), properties, signer.certificate.public_key(), len(DATA))
    assert reason_of(excinfo) == Reason.DATA_MODIFIED


def test_signature_from_another_key_fails_as_wrong_key():
    signer = pki().signers["rsa"]
    other_key = new_key("rsa", 99)
    spec = signature.sign_chunks(chunked(DATA), other_key, certificate_uuid=UUID)
    with pytest.raises(SignatureVerificationError) as excinfo:
        verify(DATA, spec.to_properties(), signer.certificate.public_key(), len(DATA))
    assert reason_of(excinfo) == Reason.WRONG_KEY
    assert UUID in str(excinfo.value)


def test_modified_data_fails_as_modified_data_for_ecdsa():
    signer = pki().signers["p384"]
    properties = sign(DATA, signer, UUID, "SHA-384")
    with pytest.raises(SignatureVerificationError) as excinfo:
        verify(DATA[:-1] + bytes([DATA[-1] ^ 1]), properties, signer.certificate.public_key(), len(DATA))
    assert reason_of(excinfo) == Reason.DATA_MODIFIED
    assert "cannot tell" in str(excinfo.value)


def test_truncated_data_fails_as_truncated():
    signer = pki().signers["rsa"]
    properties = sign(DATA, signer, UUID)
    with pytest.raises(SignatureVerificationError) as excinfo:
        verify(DATA[:-100], properties, signer.certificate.public_key(), len(DATA))
    assert reason_of(excinfo) == Reason.TRUNCATED
    assert f"{len(DATA) - 100} of {len(DATA)} bytes" in str(excinfo.value)


def test_longer_data_is_refused_as_soon_as_it_exceeds_the_size():
    signer = pki().signers["rsa"]
    spec = signature.parse_signature_properties(sign(DATA, signer, UUID))
    verifier = signature.StreamingVerifier(spec, signer.certificate.public_key(), expected_size=10)
    verifier.update(b"x" * 10)
    with pytest.raises(SignatureVerificationError) as excinfo:
        verifier.update(b"y")
    assert reason_of(excinfo) == Reason.SIZE_MISMATCH


@pytest.mark.parametrize("name", signature.REQUIRED_PROPERTIES)
def test_each_missing_property_is_named(name):
    properties = sign(DATA, pki().signers["rsa"], UUID)
    del properties[name]
    with pytest.raises(SignatureVerificationError) as excinfo:
        signature.parse_signature_properties(properties)
    assert reason_of(excinfo) == Reason.MISSING_PROPERTY
    assert name in str(excinfo.value)


@pytest.mark.parametrize(
    "change,reason",
    [
        ({signature.HASH_METHOD: "MD5"}, Reason.UNKNOWN_HASH_METHOD),
        ({signature.KEY_TYPE: "RSA-OAEP"}, Reason.UNKNOWN_KEY_TYPE),
        ({signature.MASK_GEN_ALGORITHM: "MGF2"}, Reason.UNKNOWN_MASK_GEN_ALGORITHM),
        ({signature.PSS_SALT_LENGTH: "-1"}, Reason.INVALID_PROPERTY),
        ({signature.PSS_SALT_LENGTH: "many"}, Reason.INVALID_PROPERTY),
        ({signature.SIGNATURE: "not base64!"}, Reason.INVALID_PROPERTY),
    ],
)
def test_bad_properties_fail_with_their_reason(change, reason):
    properties = {**sign(DATA, pki().signers["rsa"], UUID), **change}
    with pytest.raises(SignatureVerificationError) as excinfo:
        signature.parse_signature_properties(properties)
    assert reason_of(excinfo) == reason
    assert next(iter(change.values())) in str(excinfo.value) or reason == Reason.INVALID_PROPERTY


def test_reasons_are_distinct():
    values = [value for name, value in vars(Reason).items() if name.isupper()]
    assert len(values) == len(set(values))


@pytest.mark.parametrize(
    "key_type,kind", [("RSA-PSS", "p256"), ("ECC_SECP384R1", "p256"), ("DSA", "rsa")]
)
def test_key_type_that_does_not_match_the_certificate_is_refused(key_type, kind):
    signer = pki().signers[kind]
    properties = {**sign(DATA, signer, UUID), signature.KEY_TYPE: key_type}
    with pytest.raises(SignatureVerificationError) as excinfo:
        verify(DATA, properties, signer.certificate.public_key())
    assert reason_of(excinfo) == Reason.KEY_TYPE_MISMATCH


def test_error_description_carries_the_reason():
    error = SignatureVerificationError(Reason.TRUNCATED, "short")
    assert error.to_dict() == {
        "type": "SignatureVerificationError",
        "message": "truncated: short",
        "reason": "truncated",
    }


def test_signature_property_round_trips_base64():
    properties = sign(DATA, pki().signers["p256"], UUID)
    spec = signature.parse_signature_properties(properties)
    assert base64.b64encode(spec.signature).decode() == properties[signature.SIGNATURE]
    assert signature.MASK_GEN_ALGORITHM not in properties


def test_streaming_memory_stays_flat():
    signer = pki().signers["rsa"]
    chunk = os.urandom(1 << 20)
    total = 64
    spec = signature.sign_chunks((chunk for _ in range(total)), signer.key, certificate_uuid=UUID)
    verifier = signature.StreamingVerifier(
        spec, signer.certificate.public_key(), expected_size=total * len(chunk)
    )
    tracemalloc.start()
    try:
        verifier.verify_stream(bytearray(chunk) for _ in range(total))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # 64 MiB went through; what stays alive is about one chunk.
    assert peak < 4 * len(chunk)


def test_copy_stream_writes_what_it_hashes(tmp_path):
    signer = pki().signers["p256"]
    spec = signature.parse_signature_properties(sign(DATA, signer, UUID))
    verifier = signature.StreamingVerifier(spec, signer.certificate.public_key())
    with open(tmp_path / "copy", "wb") as target:
        verifier.copy_stream(chunked(DATA, 1000), target)
    assert verifier.verify() == hashlib.sha256(DATA).digest()
    assert (tmp_path / "copy").read_bytes() == DATA


def test_copy_stream_raises_a_write_error_and_stops_reading(tmp_path):
    signer = pki().signers["p256"]
    spec = signature.parse_signature_properties(sign(DATA, signer, UUID))
    verifier = signature.StreamingVerifier(spec, signer.certificate.public_key())
    read: list[int] = []

    def chunks():
        for chunk in chunked(DATA, 1000):
            read.append(len(chunk))
            yield chunk

    class FullDisk:
        def write(self, chunk):
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        verifier.copy_stream(chunks(), FullDisk(), depth=2)
    assert sum(read) < len(DATA)
