"""``keramos image sign`` and ``keramos image verify``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from keramos.framework.cli import main
from keramos.framework.config import make_conf
from keramos.framework.images import signature
from keramos.framework.loader import load_driver
from keramos.framework.records import ImageRecord
from keramos.plugins.images.file_store import FileImageStore
from keramos.plugins.images.key_managers import LocalKeyManager
from tests.unit.image_helpers import chunked, pki, write_ca_file

DATA = os.urandom(200_000)
UUID = "3d3e1a4c-6a1f-4f0b-9d53-2f8e2b7c9a10"


def write_key(path: Path, kind: str, password: bytes | None = None) -> str:
    key = pki().signers[kind].key
    encryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )
    return str(path)


def sign_cli(capsys, *args: str) -> tuple[int, dict | str]:
    status = main(["image", "sign", *args])
    captured = capsys.readouterr()
    return status, json.loads(captured.out) if status == 0 else captured.err


@pytest.mark.parametrize("kind,hash_method", [("rsa", "SHA-256"), ("p384", "SHA-384")])
def test_sign_prints_properties_that_verify(tmp_path, capsys, kind, hash_method):
    image = tmp_path / "image.qcow2"
    image.write_bytes(DATA)
    key = write_key(tmp_path / "key.pem", kind)
    status, properties = sign_cli(
        capsys, str(image), "--key", key, "--cert-uuid", UUID, "--hash", hash_method
    )
    assert status == 0
    assert properties[signature.CERTIFICATE_UUID] == UUID
    assert properties[signature.HASH_METHOD] == hash_method
    spec = signature.parse_signature_properties(properties)
    public_key = pki().signers[kind].certificate.public_key()
    signature.StreamingVerifier(spec, public_key).verify_stream(chunked(DATA))


def test_sign_with_encrypted_key_needs_its_password_file(tmp_path, capsys):
    image = tmp_path / "image"
    image.write_bytes(DATA)
    key = write_key(tmp_path / "key.pem", "rsa", b"correct horse")
    status, error = sign_cli(capsys, str(image), "--key", key, "--cert-uuid", UUID)
    assert status == 1 and "--key-password-file" in error
    password_file = tmp_path / "password"
    password_file.write_bytes(b"correct horse\n")
    status, properties = sign_cli(
        capsys,
        str(image),
        "--key",
        key,
        "--cert-uuid",
        UUID,
        "--salt-length",
        "32",
        "--key-password-file",
        str(password_file),
    )
    assert status == 0 and properties[signature.PSS_SALT_LENGTH] == "32"


def test_sign_refuses_a_key_type_that_does_not_match(tmp_path, capsys):
    image = tmp_path / "image"
    image.write_bytes(DATA)
    key = write_key(tmp_path / "key.pem", "p256")
    status, error = sign_cli(
        capsys, str(image), "--key", key, "--cert-uuid", UUID, "--key-type", "RSA-PSS"
    )
    assert status == 1 and "ECC_SECP256R1" in error


def test_sign_names_a_missing_file(tmp_path, capsys):
    key = write_key(tmp_path / "key.pem", "rsa")
    status, error = sign_cli(capsys, str(tmp_path / "absent"), "--key", key, "--cert-uuid", UUID)
    assert status == 1 and "absent" in error


def _config(tmp_path: Path) -> str:
    config = tmp_path / "keramos.conf"
    config.write_text(
        "[DEFAULT]\n"
        f"state_path = {tmp_path / 'state'}\n"
        "[drivers]\nimage_store = file\nkey_manager = local\nstate_store = sqlalchemy\n"
        "[persistence]\nenabled = false\n"
        "[image_verification]\n"
        f"trusted_ca_file = {write_ca_file(tmp_path / 'ca.pem', pki().root)}\n"
        f"intermediate_ca_file = {write_ca_file(tmp_path / 'inter.pem', pki().intermediate)}\n"
    )
    return str(config)


def test_verify_runs_the_flow(tmp_path, capsys):
    config = _config(tmp_path)
    conf = make_conf(["--config-file", config], config_files=[])
    certificate_uuid = LocalKeyManager(conf).store_certificate(pki().signers["rsa"].certificate_pem)
    store = FileImageStore(conf)
    image = tmp_path / "image"
    image.write_bytes(DATA)
    key = write_key(tmp_path / "key.pem", "rsa")
    _, properties = sign_cli(capsys, str(image), "--key", key, "--cert-uuid", certificate_uuid)
    store.add_file("good", str(image), properties)
    store.add_file("bad", str(image), {**properties, signature.HASH_METHOD: "SHA-1"})

    assert main(["--config-file", config, "image", "verify", "good", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["image"]["status"] == "active"

    assert main(["--config-file", config, "image", "verify", "bad", "--quiet"]) == 1
    assert "unknown_hash_method" in capsys.readouterr().err
    state_store = load_driver("state_store", "sqlalchemy", conf)
    assert state_store.get(ImageRecord, "good").status == "active"
    assert state_store.get(ImageRecord, "bad").status == "killed"
    state_store.close()
