"""Images signed with the openssl CLI verify with ``keramos image verify`` (a real process), and
signatures made by ``keramos image sign`` verify with ``openssl dgst -verify``."""

from __future__ import annotations

import base64
import http.server
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from keramos.framework.config import make_conf
from keramos.plugins.images.file_store import FileImageStore
from keramos.plugins.images.key_managers import LocalKeyManager
from tests.conftest import require
from tests.functional.conftest import BIN
from tests.unit.image_helpers import pki, write_ca_file

DATA = os.urandom(3 * 1024 * 1024 + 12345)


@pytest.fixture(scope="module")
def openssl() -> str:
    """The openssl program; fails in CI and skips elsewhere when it is missing."""
    path = shutil.which("openssl")
    require(path is not None, "the openssl program")
    return path


class Site:
    """A config file, a file image store, a local key manager and the test PKI's keys."""

    def __init__(self, directory: Path, image_store: str = "file", **settings: str) -> None:
        self.directory = directory
        self.config = directory / "keramos.conf"
        lines = [
            "[DEFAULT]",
            f"state_path = {directory / 'state'}",
            "[drivers]",
            f"image_store = {image_store}",
            "key_manager = local",
            "state_store = sqlalchemy",
            "[image_verification]",
            f"trusted_ca_file = {write_ca_file(directory / 'ca.pem', pki().root)}",
            "[http_image_store]",
            *(f"{name} = {value}" for name, value in settings.items()),
        ]
        self.config.write_text("\n".join(lines) + "\n")
        conf = make_conf(["--config-file", str(self.config)], config_files=[])
        self.store = FileImageStore(conf)
        self.keys = LocalKeyManager(conf)

    def key_file(self, kind: str) -> str:
        path = self.directory / f"{kind}.key.pem"
        path.write_bytes(pki().signers[kind].key_pem)
        return str(path)

    def certificate_uuid(self, kind: str) -> str:
        signer = pki().signers[kind]
        return self.keys.store_certificate(
            signer.certificate_pem + pki().intermediate.certificate_pem
        )

    def keramos(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "keramos"), "--config-file", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=120,
        )


def openssl_sign(openssl: str, key: str, data_path: Path, *options: str) -> str:
    signature_path = data_path.with_suffix(".sig")
    subprocess.run(
        [openssl, "dgst", *options, "-sign", key, "-out", str(signature_path), str(data_path)],
        check=True,
        capture_output=True,
    )
    return base64.b64encode(signature_path.read_bytes()).decode()


def add_openssl_signed_image(
    site: Site, openssl: str, image_id: str, kind: str, hash_method: str, *options: str
) -> Path:
    image = site.directory / f"{image_id}.img"
    image.write_bytes(DATA)
    digest_option = "-" + hash_method.replace("-", "").lower()
    properties = {
        "img_signature": openssl_sign(openssl, site.key_file(kind), image, digest_option, *options),
        "img_signature_hash_method": hash_method,
        "img_signature_key_type": {"rsa": "RSA-PSS", "p384": "ECC_SECP384R1"}[kind],
        "img_signature_certificate_uuid": site.certificate_uuid(kind),
    }
    site.store.add_file(image_id, str(image), properties)
    return image


@pytest.mark.parametrize(
    "kind,hash_method,options",
    [
        ("rsa", "SHA-256", ("-sigopt", "rsa_padding_mode:pss")),
        (
            "rsa",
            "SHA-256",
            ("-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:digest"),
        ),
        ("rsa", "SHA-512", ("-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:max")),
        ("p384", "SHA-384", ()),
    ],
    ids=["rsa-pss-default-salt", "rsa-pss-digest-salt", "rsa-pss-sha512-max-salt", "ecdsa-p384"],
)
def test_openssl_signed_image_verifies(tmp_path, openssl, kind, hash_method, options):
    site = Site(tmp_path)
    add_openssl_signed_image(site, openssl, "img", kind, hash_method, *options)
    done = site.keramos("image", "verify", "img", "--quiet")
    assert done.returncode == 0, done.stderr
    image = json.loads(done.stdout)["image"]
    assert image["status"] == "active" and f"image signer {kind}" in image["signer"]
    assert Path(image["path"]).read_bytes() == DATA


@pytest.mark.parametrize("damage,reason", [("flip", "data_modified"), ("truncate", "truncated")])
def test_damaged_openssl_signed_image_is_killed(tmp_path, openssl, damage, reason):
    site = Site(tmp_path)
    add_openssl_signed_image(
        site, openssl, "img", "rsa", "SHA-256", "-sigopt", "rsa_padding_mode:pss"
    )
    data_path = site.store.data_path("img")
    if damage == "flip":
        with open(data_path, "r+b") as data:
            data.seek(1_000_000)
            data.write(bytes([DATA[1_000_000] ^ 0xFF]))
    else:
        os.truncate(data_path, len(DATA) // 2)
    done = site.keramos("image", "verify", "img", "--quiet")
    assert done.returncode == 1
    assert reason in done.stderr
    staging = tmp_path / "state" / "image_cache" / "staging"
    assert list(staging.iterdir()) == []


@pytest.mark.parametrize("kind,hash_method", [("rsa", "SHA-256"), ("p384", "SHA-384")])
def test_keramos_signature_verifies_with_openssl(tmp_path, openssl, kind, hash_method):
    site = Site(tmp_path)
    image = tmp_path / "image"
    image.write_bytes(DATA)
    done = site.keramos(
        "image",
        "sign",
        str(image),
        "--key",
        site.key_file(kind),
        "--cert-uuid",
        "9a1f7e0c-0d7e-4c1e-a3c1-1d1f1f1f1f1f",
        "--hash",
        hash_method,
    )
    assert done.returncode == 0, done.stderr
    properties = json.loads(done.stdout)
    signature_path = tmp_path / "image.sig"
    signature_path.write_bytes(base64.b64decode(properties["img_signature"]))
    public_key = tmp_path / "public.pem"
    public_key.write_bytes(
        pki()
        .signers[kind]
        .certificate.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    options = ["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:auto"]
    verified = subprocess.run(
        [
            openssl,
            "dgst",
            "-" + hash_method.replace("-", "").lower(),
            *(options if kind == "rsa" else []),
            "-verify",
            str(public_key),
            "-signature",
            str(signature_path),
            str(image),
        ],
        capture_output=True,
        text=True,
    )
    assert verified.returncode == 0 and "Verified OK" in verified.stdout, verified.stderr


@pytest.fixture
def glance(tmp_path) -> Iterator[tuple[str, FileImageStore]]:
    """A Glance-like HTTP server on 127.0.0.1 serving a file image store."""
    conf = make_conf(
        config_files=[], overrides={"DEFAULT": {"state_path": str(tmp_path / "glance")}}
    )
    store = FileImageStore(conf)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = self.path.strip("/").split("/")
            try:
                if len(parts) == 4 and parts[3] == "file":
                    body = b"".join(store.chunks(parts[2]))
                else:
                    body = json.dumps(store.properties(parts[2])).encode()
            except Exception:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            """Quiet."""

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", store
    finally:
        server.shutdown()
        server.server_close()


def test_openssl_signed_image_verifies_over_http(tmp_path, openssl, glance):
    url, glance_store = glance
    site = Site(tmp_path, image_store="http", url=url)
    site.store = glance_store
    add_openssl_signed_image(site, openssl, "remote", "p384", "SHA-384")
    done = site.keramos("image", "verify", "remote", "--quiet")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["image"]["status"] == "active"
