"""Certificate managers (``local`` and ``castellan``): round trips and every error case."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import stat

import pytest

from keramos.framework.config import make_conf
from keramos.framework.contracts import CertificateBundle, CertKind
from keramos.framework.errors import ConfigError, DriverError, NotFound
from keramos.framework.loader import load_driver_class
from keramos.framework.pki import errors
from keramos.framework.pki.keys import load_private_key, private_key_pem
from keramos.plugins.certificates import castellan_store, local_store
from tests.unit.certs_helpers import make_generator, make_store


@pytest.fixture(scope="module")
def issued(tmp_path_factory):
    generator = make_generator(tmp_path_factory.mktemp("ca"))
    return {
        "server": generator.issue("amp-1", CertKind.SERVER),
        "other": generator.issue("amp-2", CertKind.SERVER),
        "ca": generator.ca_certificate(CertKind.SERVER),
    }


@pytest.fixture
def bundle(issued) -> CertificateBundle:
    server = issued["server"]
    return CertificateBundle(server.certificate_pem, server.private_key_pem, (issued["ca"],))


@pytest.fixture
def store(tmp_path):
    return make_store(tmp_path)


def test_entry_points():
    assert load_driver_class("cert_manager", "local") is local_store.LocalCertManager
    assert load_driver_class("cert_manager", "castellan") is castellan_store.CastellanCertManager


def test_options_have_help():
    for module in (local_store, castellan_store):
        for _group, opts in module.list_opts():
            assert all(opt.help for opt in opts)


def test_local_round_trip_keeps_the_key_encrypted_in_a_private_file(store, bundle):
    ref = store.store(bundle, name="amp-1-server")
    path = os.path.join(store.storage_path, f"{ref}.json")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with open(path) as stream:
        stored = json.load(stream)
    assert "BEGIN ENCRYPTED PRIVATE KEY" in stored["private_key"]
    assert bundle.private_key.decode() not in json.dumps(stored)
    fetched = store.get(ref)
    assert fetched.certificate == bundle.certificate
    assert fetched.intermediates == bundle.intermediates
    original = load_private_key(bundle.private_key, None, what="original")
    assert load_private_key(fetched.private_key, None, what="fetched").private_numbers() == (original.private_numbers())


def test_local_store_accepts_a_key_encrypted_with_its_own_passphrase(store, bundle):
    key = load_private_key(bundle.private_key, None, what="key")
    encrypted = CertificateBundle(bundle.certificate, private_key_pem(key, b"bundle secret"), (), b"bundle secret")
    fetched = store.get(store.store(encrypted, name="amp-1"))
    assert fetched.private_key_passphrase is None
    assert load_private_key(fetched.private_key, None, what="fetched").private_numbers() == (key.private_numbers())


def test_local_store_keeps_a_certificate_without_key(store, issued):
    ref = store.store(CertificateBundle(issued["server"].certificate_pem), name="amp-1")
    assert store.get(ref).private_key is None


def test_local_find_returns_the_references_stored_under_a_name_only(store, bundle):
    first = store.store(bundle, name="amphora-a-server")
    second = store.store(bundle, name="amphora-a-server")
    store.store(bundle, name="amphora-a-server-old")
    store.store(bundle, name="amphora-a")
    assert store.find("amphora-a-server") == sorted([first, second])
    store.delete(first)
    assert store.find("amphora-a-server") == [second]
    assert store.find("nothing-here") == []
    assert store.find("../etc") == []


def test_local_delete_is_idempotent(store, bundle):
    ref = store.store(bundle, name="amp-1")
    store.delete(ref)
    store.delete(ref)
    store.delete("not a reference")
    with pytest.raises(NotFound, match=f"no certificate bundle {ref}"):
        store.get(ref)


@pytest.mark.parametrize("ref", ["amp-1.0123", "../../etc/passwd", "", "amp-1." + "0" * 32])
def test_local_unknown_or_malformed_reference_is_not_found(store, ref):
    with pytest.raises(errors.BundleNotFound):
        store.get(ref)


def test_local_wrong_store_passphrase_is_named(tmp_path, bundle):
    ref = make_store(tmp_path).store(bundle, name="amp-1")
    with pytest.raises(errors.BadPassphrase, match=r"\[cert_manager_local\] passphrase does not"):
        make_store(tmp_path, passphrase="another one").get(ref)


def test_bundle_key_with_a_wrong_passphrase_is_refused(store, bundle):
    key = load_private_key(bundle.private_key, None, what="key")
    wrong = CertificateBundle(bundle.certificate, private_key_pem(key, b"right"), (), b"wrong")
    with pytest.raises(errors.BadPassphrase, match="bundle's private key: the passphrase"):
        store.store(wrong, name="amp-1")
    assert os.listdir(store.storage_path) == []


def test_encrypted_bundle_key_without_passphrase_is_refused(store, bundle):
    key = load_private_key(bundle.private_key, None, what="key")
    with pytest.raises(errors.BadPassphrase, match="no passphrase was given"):
        store.store(CertificateBundle(bundle.certificate, private_key_pem(key, b"x")), name="a")


@pytest.mark.parametrize("part", ["certificate", "private_key", "intermediate"])
def test_malformed_pem_is_refused_and_nothing_is_written(store, bundle, part):
    garbage = b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n"
    broken = {
        "certificate": CertificateBundle(garbage, bundle.private_key),
        "private_key": CertificateBundle(bundle.certificate, b"garbage"),
        "intermediate": CertificateBundle(bundle.certificate, bundle.private_key, (garbage,)),
    }[part]
    with pytest.raises(errors.MalformedPEM):
        store.store(broken, name="amp-1")
    assert os.listdir(store.storage_path) == []


def test_key_not_matching_the_certificate_is_refused(store, issued):
    mismatched = CertificateBundle(issued["server"].certificate_pem, issued["other"].private_key_pem)
    with pytest.raises(errors.KeyMismatch, match="not the key of its certificate"):
        store.store(mismatched, name="amp-1")


def test_bad_bundle_name_is_refused(store, bundle):
    with pytest.raises(DriverError, match="not an identifier"):
        store.store(bundle, name="../escape")


def test_corrupt_stored_bundle_is_reported_as_malformed(store, bundle):
    ref = store.store(bundle, name="amp-1")
    with open(os.path.join(store.storage_path, f"{ref}.json"), "w") as stream:
        stream.write("{not json")
    with pytest.raises(errors.MalformedPEM, match=f"bundle {ref} is corrupt"):
        store.get(ref)


def test_unreachable_storage_is_retryable(store, bundle):
    ref = store.store(bundle, name="amp-1")
    shutil.rmtree(store.storage_path)
    for call in (lambda: store.get(ref), lambda: store.store(bundle, name="amp-1")):
        with pytest.raises(errors.StoreUnreachable, match="storage directory .* is missing") as info:
            call()
        assert info.value.retryable


def test_permission_denied_is_forbidden(store, bundle, monkeypatch):
    ref = store.store(bundle, name="amp-1")

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(local_store, "open", refuse, raising=False)
    monkeypatch.setattr(local_store, "write_atomic", refuse)
    monkeypatch.setattr(local_store.os, "unlink", refuse)
    with pytest.raises(errors.Forbidden, match="cannot read .*permission denied"):
        store.get(ref)
    with pytest.raises(errors.Forbidden, match="cannot store"):
        store.store(bundle, name="amp-1")
    with pytest.raises(errors.Forbidden, match="cannot delete"):
        store.delete(ref)


def test_local_store_needs_a_passphrase(tmp_path):
    conf = make_conf(config_files=[], overrides={"DEFAULT": {"state_path": str(tmp_path)}})
    with pytest.raises(ConfigError, match="passphrase_file .* must be set"):
        local_store.LocalCertManager(conf)


# --- castellan -------------------------------------------------------------------------------

MOCK_BACKEND = "castellan.tests.unit.key_manager.mock_key_manager.MockKeyManager"


def castellan_manager(tmp_path) -> castellan_store.CastellanCertManager:
    pytest.importorskip("castellan", reason="castellan is an optional extra")
    conf = make_conf(config_files=[], overrides={"DEFAULT": {"state_path": str(tmp_path)}})
    from castellan import options

    options.set_defaults(conf, backend=MOCK_BACKEND)
    from castellan.common import utils

    conf.register_opts(utils.credential_opts, group="key_manager")
    conf.set_override("auth_type", "token", group="key_manager")
    conf.set_override("token", "a-token", group="key_manager")
    return castellan_store.CastellanCertManager(conf)


def test_castellan_round_trip_through_the_mock_key_manager(tmp_path, bundle):
    manager = castellan_manager(tmp_path)
    ref = manager.store(bundle, name="amp-1-server")
    assert manager.get(ref) == bundle
    manager.delete(ref)
    manager.delete(ref)
    with pytest.raises(NotFound, match=f"no certificate bundle {ref}"):
        manager.get(ref)


def test_castellan_refuses_bad_bundles_before_storing(tmp_path, issued):
    manager = castellan_manager(tmp_path)
    with pytest.raises(errors.KeyMismatch):
        manager.store(
            CertificateBundle(issued["server"].certificate_pem, issued["other"].private_key_pem),
            name="amp-1",
        )
    assert manager.key_manager.keys == {}


def test_castellan_errors_are_mapped(tmp_path, bundle):
    manager = castellan_manager(tmp_path)
    from castellan.common import exception

    def raising(error):
        def call(*args, **kwargs):
            raise error

        return call

    manager.key_manager.get = raising(exception.Forbidden())
    with pytest.raises(errors.Forbidden, match="refused to read certificate bundle x"):
        manager.get("x")
    manager.key_manager.store = raising(exception.KeyManagerError(reason="connection refused"))
    with pytest.raises(errors.StoreUnreachable, match="connection refused") as info:
        manager.store(bundle, name="amp-1")
    assert info.value.retryable
    manager.key_manager.delete = raising(exception.KeyManagerError(reason="timed out"))
    with pytest.raises(errors.StoreUnreachable):
        manager.delete("x")


def test_castellan_secret_that_is_not_a_bundle_is_malformed(tmp_path):
    manager = castellan_manager(tmp_path)
    from castellan.common.objects import opaque_data

    ref = manager.key_manager.store(manager._context, opaque_data.OpaqueData(b"not json"))
    with pytest.raises(errors.MalformedPEM, match="not a Keramos certificate bundle"):
        manager.get(ref)


def test_castellan_without_credentials_is_a_config_error(tmp_path):
    pytest.importorskip("castellan", reason="castellan is an optional extra")
    conf = make_conf(config_files=[], overrides={"DEFAULT": {"state_path": str(tmp_path)}})
    from castellan import options

    options.set_defaults(conf, backend=MOCK_BACKEND)
    with pytest.raises(ConfigError, match=r"castellan credentials.*\[key_manager\] auth_type"):
        castellan_store.CastellanCertManager(conf)


def test_missing_castellan_package_is_a_config_error_naming_it(tmp_path, monkeypatch):
    real_import = importlib.import_module

    def no_castellan(name, *args):
        if name.startswith("castellan"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args)

    monkeypatch.setattr(castellan_store.importlib, "import_module", no_castellan)
    conf = make_conf(config_files=[], overrides={"DEFAULT": {"state_path": str(tmp_path)}})
    with pytest.raises(ConfigError, match=r"needs the 'castellan' package.*keramos\[castellan\]"):
        castellan_store.CastellanCertManager(conf)
