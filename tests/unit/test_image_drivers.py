"""Image stores (file, http) and key managers (local, castellan)."""

from __future__ import annotations

import http.server
import io
import json
import os
import stat
import sys
import threading
import types
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives import serialization

from keramos.framework import images as image_verification
from keramos.framework.config import make_conf
from keramos.framework.contracts import ImageStore, KeyManager
from keramos.framework.errors import ConfigError, DriverError, NotFound
from keramos.plugins import images as image_drivers
from keramos.plugins.images.file_store import FileImageStore
from keramos.plugins.images.http_store import HttpImageStore
from keramos.plugins.images.key_managers import CastellanKeyManager, LocalKeyManager
from tests.unit.image_helpers import pki

DATA = os.urandom(3 * 65536 + 5)


@pytest.fixture
def conf(tmp_path):
    return make_conf(config_files=[], overrides={"DEFAULT": {"state_path": str(tmp_path)}})


@pytest.fixture
def file_store(conf) -> FileImageStore:
    return FileImageStore(conf)


def test_file_store_add_records_glance_metadata(file_store):
    document = file_store.add("img-1", io.BytesIO(DATA), {"img_signature": "c2ln", "tags": ["x"]})
    properties = file_store.properties("img-1")
    assert properties["size"] == str(len(DATA))
    assert properties["img_signature"] == "c2ln"
    assert properties["os_hash_algo"] == "sha512"
    assert properties["os_hash_value"] == document["os_hash_value"]
    assert "tags" not in properties
    assert b"".join(file_store.chunks("img-1", 65536)) == DATA
    assert all(len(chunk) <= 65536 for chunk in file_store.chunks("img-1", 65536))
    assert isinstance(file_store, ImageStore)


def test_file_store_unknown_and_unsafe_ids_are_not_found(file_store):
    with pytest.raises(NotFound):
        file_store.properties("absent")
    with pytest.raises(NotFound):
        file_store.chunks("absent")
    with pytest.raises(NotFound):
        file_store.properties("../etc/passwd")


def test_file_store_corrupt_metadata_is_a_driver_error(file_store):
    file_store.add("img-2", io.BytesIO(b"data"))
    with open(os.path.join(file_store.directory, "img-2.json"), "w") as metadata:
        metadata.write("{not json")
    with pytest.raises(DriverError, match="img-2"):
        file_store.properties("img-2")


def test_file_store_failed_add_leaves_nothing(file_store):
    class Broken(io.BytesIO):
        def read(self, size=-1):
            raise OSError("disk unplugged")

    with pytest.raises(OSError):
        file_store.add("img-3", Broken())
    assert os.listdir(file_store.directory) == []


class GlanceHandler(http.server.BaseHTTPRequestHandler):
    """Answers /v2/images/<id> and /v2/images/<id>/file like Glance's image API v2."""

    images: dict[str, tuple[dict, bytes]] = {}
    tokens: list[str | None] = []

    def do_GET(self) -> None:
        self.tokens.append(self.headers.get("X-Auth-Token"))
        parts = self.path.strip("/").split("/")
        if parts[:2] != ["v2", "images"] or len(parts) not in (3, 4):
            self.send_error(400)
            return
        if parts[2] == "broken":
            self.send_error(503)
            return
        if parts[2] not in self.images:
            self.send_error(404)
            return
        document, data = self.images[parts[2]]
        body = data if len(parts) == 4 else json.dumps(document).encode()
        self.send_response(200)
        self.send_header(
            "Content-Type", "application/octet-stream" if len(parts) == 4 else "application/json"
        )
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        """Keep test output quiet."""


@pytest.fixture
def glance_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), GlanceHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_http_store_streams_properties_and_data(conf, glance_server):
    document = {
        "id": "abc",
        "size": len(DATA),
        "img_signature": "c2ln",
        "tags": [],
        "min_ram": 0,
        "owner": None,
    }
    GlanceHandler.images["abc"] = (document, DATA)
    store = _http_store(conf, glance_server, token="secret-token")
    properties = store.properties("abc")
    assert properties["size"] == str(len(DATA)) and properties["img_signature"] == "c2ln"
    assert "owner" not in properties and properties["min_ram"] == "0"
    chunks = list(store.chunks("abc", 65536))
    assert b"".join(chunks) == DATA and max(map(len, chunks)) <= 65536
    assert GlanceHandler.tokens[-1] == "secret-token"
    store.close()


def _http_store(conf, url: str, **overrides) -> HttpImageStore:
    from keramos.plugins.images.http_store import http_image_store_opts

    conf.register_opts(http_image_store_opts, group="http_image_store")
    conf.set_override("url", url, group="http_image_store")
    for name, value in overrides.items():
        conf.set_override(name, value, group="http_image_store")
    return HttpImageStore(conf)


def test_http_store_errors(conf, glance_server):
    store = _http_store(conf, glance_server)
    with pytest.raises(NotFound):
        store.properties("missing")
    with pytest.raises(NotFound):
        store.chunks("missing")
    with pytest.raises(DriverError) as excinfo:
        store.properties("broken")
    assert excinfo.value.retryable and "503" in str(excinfo.value)


def test_http_store_unreachable_server_is_retryable(conf):
    store = _http_store(conf, "http://127.0.0.1:9", timeout=2.0)
    with pytest.raises(DriverError) as excinfo:
        store.properties("abc")
    assert excinfo.value.retryable


def test_http_store_requires_a_url(conf):
    with pytest.raises(ConfigError, match="url"):
        HttpImageStore(conf)


def test_local_key_manager_stores_certificates_0600(conf):
    manager = LocalKeyManager(conf)
    pem = pki().signers["rsa"].certificate_pem
    certificate_uuid = manager.store_certificate(pem)
    assert manager.get_certificate(certificate_uuid) == pem
    path = os.path.join(manager.directory, f"{certificate_uuid}.pem")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [name for name in os.listdir(manager.directory)] == [f"{certificate_uuid}.pem"]
    manager.delete(certificate_uuid)
    manager.delete(certificate_uuid)
    with pytest.raises(NotFound):
        manager.get_certificate(certificate_uuid)
    assert isinstance(manager, KeyManager)


def test_local_key_manager_refuses_garbage_and_bad_uuids(conf):
    manager = LocalKeyManager(conf)
    with pytest.raises(Exception, match="certificate"):
        manager.store_certificate(b"not a certificate")
    assert os.listdir(manager.directory) == []
    with pytest.raises(NotFound):
        manager.get_certificate("../../etc/passwd")
    manager.delete("../../etc/passwd")


def test_castellan_key_manager_names_the_missing_package(conf, monkeypatch):
    monkeypatch.setitem(sys.modules, "castellan", None)
    with pytest.raises(ConfigError, match="castellan"):
        CastellanKeyManager(conf)


class ManagedObjectNotFoundError(Exception):
    """The name castellan gives to an unknown id."""


def _fake_castellan(monkeypatch) -> dict:
    """Install a minimal castellan (the API surface the driver uses) backed by a dict."""
    stored: dict = {}

    class X509:
        def __init__(self, data):
            self.data = data

        def get_encoded(self):
            return self.data

    class Manager:
        def store(self, context, managed):
            stored[f"id-{len(stored)}"] = managed
            return f"id-{len(stored) - 1}"

        def get(self, context, object_id):
            if object_id not in stored:
                raise ManagedObjectNotFoundError(object_id)
            return stored[object_id]

        def delete(self, context, object_id):
            if object_id not in stored:
                raise ManagedObjectNotFoundError(object_id)
            del stored[object_id]

    modules = {
        "castellan": types.ModuleType("castellan"),
        "castellan.key_manager": types.SimpleNamespace(API=lambda conf: Manager()),
        "castellan.options": types.SimpleNamespace(set_defaults=lambda conf, **kw: None),
        "castellan.common": types.ModuleType("castellan.common"),
        "castellan.common.utils": types.SimpleNamespace(credential_factory=lambda conf: "ctx"),
        "castellan.common.objects": types.ModuleType("castellan.common.objects"),
        "castellan.common.objects.x_509": types.SimpleNamespace(X509=X509),
    }
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    modules["castellan"].key_manager = modules["castellan.key_manager"]
    modules["castellan"].options = modules["castellan.options"]
    modules["castellan"].common = modules["castellan.common"]
    modules["castellan.common"].utils = modules["castellan.common.utils"]
    modules["castellan.common"].objects = modules["castellan.common.objects"]
    modules["castellan.common.objects"].x_509 = modules["castellan.common.objects.x_509"]
    return stored


def test_castellan_key_manager_stores_der_and_maps_not_found(conf, monkeypatch):
    stored = _fake_castellan(monkeypatch)
    manager = CastellanKeyManager(conf)
    certificate = pki().signers["p256"].certificate
    object_id = manager.store_certificate(pki().signers["p256"].certificate_pem)
    assert manager.get_certificate(object_id) == certificate.public_bytes(
        serialization.Encoding.DER
    )
    manager.delete(object_id)
    manager.delete(object_id)
    assert stored == {}
    with pytest.raises(NotFound):
        manager.get_certificate(object_id)


def test_every_image_option_is_listed_with_help():
    groups = dict(image_verification.list_opts() + image_drivers.list_opts())
    assert {"image_verification", "image_cache", "file_image_store", "http_image_store"} <= set(
        groups
    )
    for options in groups.values():
        assert all(option.help for option in options)
