"""The ``local`` certificate generator driver: configuration, issuing, CRL publication."""

from __future__ import annotations

import datetime as dt
import os
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from keramos.framework.contracts import CertKind
from keramos.framework.errors import ConfigError, DriverError
from keramos.framework.loader import load_driver_class
from keramos.framework.pki import ca, errors, keys
from keramos.framework.pki.options import list_opts, parse_duration, rotation_settings
from keramos.framework.records import utcnow
from keramos.plugins.certificates.generator import LocalCertGenerator
from tests.unit.certs_helpers import PASSPHRASE, cert_conf, make_ca_dir, make_csr, make_generator


def test_entry_point_is_the_local_generator():
    assert load_driver_class("cert_generator", "local") is LocalCertGenerator


def test_every_option_has_help_and_lives_in_certificates():
    [(group, opts)] = list_opts()
    assert group == "certificates"
    names = {opt.name for opt in opts}
    assert {
        "ca_dir",
        "ca_passphrase",
        "ca_passphrase_file",
        "key_type",
        "validity_days",
        "rotation_window",
        "rotation_batch_size",
    } <= names
    assert all(opt.help for opt in opts)
    assert next(opt for opt in opts if opt.name == "ca_passphrase").secret


def test_issues_from_both_cas_with_the_configured_validity(tmp_path):
    generator = make_generator(tmp_path, validity_days=10)
    server = generator.issue("amp-1", CertKind.SERVER, ip_addresses=["192.0.2.1"])
    client = generator.issue("controller", CertKind.CLIENT)
    server_ca = x509.load_pem_x509_certificate(generator.ca_certificate(CertKind.SERVER))
    client_ca = x509.load_pem_x509_certificate(generator.ca_certificate(CertKind.CLIENT))
    x509.load_pem_x509_certificate(server.certificate_pem).verify_directly_issued_by(server_ca)
    x509.load_pem_x509_certificate(client.certificate_pem).verify_directly_issued_by(client_ca)
    assert server.ca_certificate_pem == generator.ca_certificate(CertKind.SERVER)
    assert dt.timedelta(days=9) < server.not_after - utcnow() <= dt.timedelta(days=10)
    shorter = generator.issue("amp-1", CertKind.SERVER, validity=dt.timedelta(hours=1))
    assert shorter.not_after - utcnow() <= dt.timedelta(hours=1)


def test_key_type_option_sets_the_leaf_key(tmp_path):
    generator = make_generator(tmp_path, key_type="ec-p384")
    issued = generator.issue("amp-1", CertKind.SERVER)
    key = serialization.load_pem_private_key(issued.private_key_pem, None)
    assert key.curve.name == "secp384r1"


def test_ca_keys_are_decrypted_once_not_per_signing(tmp_path, monkeypatch):
    generator = make_generator(tmp_path)
    calls = []
    real = keys.load_private_key
    for module in (ca, keys):
        monkeypatch.setattr(module, "load_private_key", lambda *a, **k: calls.append(a) or real(*a, **k))
    for _ in range(5):
        generator.issue("amp-1", CertKind.SERVER)
    assert calls == []


def test_signs_a_csr_for_the_expected_identity_only(tmp_path):
    generator = make_generator(tmp_path)
    issued = generator.sign_csr(make_csr("amp-3"), CertKind.SERVER, expected_common_name="amp-3")
    assert issued.private_key_pem is None and issued.subject == "amp-3"
    with pytest.raises(errors.IdentityMismatch):
        generator.sign_csr(make_csr("amp-4"), CertKind.SERVER, expected_common_name="amp-3")


def test_unknown_kind_is_refused(tmp_path):
    with pytest.raises(DriverError, match="kind must be one of server, client, not 'peer'"):
        make_generator(tmp_path).issue("amp-1", "peer")


def test_no_passphrase_is_a_config_error(tmp_path):
    conf = cert_conf(tmp_path, make_ca_dir(tmp_path))
    conf.clear_override("ca_passphrase", group="certificates")
    with pytest.raises(ConfigError, match="no CA passphrase"):
        LocalCertGenerator(conf)


def test_passphrase_file_and_value_together_are_refused(tmp_path):
    passphrase_file = tmp_path / "passphrase"
    passphrase_file.write_bytes(PASSPHRASE + b"\n")
    conf = cert_conf(tmp_path, make_ca_dir(tmp_path), ca_passphrase_file=str(passphrase_file))
    with pytest.raises(ConfigError, match="both set"):
        LocalCertGenerator(conf)


def test_passphrase_file_is_read_without_its_newline(tmp_path):
    passphrase_file = tmp_path / "passphrase"
    passphrase_file.write_bytes(PASSPHRASE + b"\n")
    conf = cert_conf(tmp_path, make_ca_dir(tmp_path), ca_passphrase_file=str(passphrase_file))
    conf.clear_override("ca_passphrase", group="certificates")
    assert LocalCertGenerator(conf).issue("amp-1", CertKind.SERVER).serial


def test_missing_passphrase_file_is_named(tmp_path):
    conf = cert_conf(tmp_path, make_ca_dir(tmp_path), ca_passphrase_file=str(tmp_path / "nope"))
    conf.clear_override("ca_passphrase", group="certificates")
    with pytest.raises(ConfigError, match="cannot read the CA passphrase file .*nope"):
        LocalCertGenerator(conf)


def test_wrong_passphrase_stops_the_driver_at_start(tmp_path):
    conf = cert_conf(tmp_path, make_ca_dir(tmp_path), ca_passphrase="wrong")
    with pytest.raises(errors.CAWrongPassphrase):
        LocalCertGenerator(conf)


def test_publish_crl_writes_the_crl_of_each_ca(tmp_path):
    generator = make_generator(tmp_path)
    issued = generator.issue("amp-1", CertKind.SERVER)
    crl_pem = generator.publish_crl(CertKind.SERVER, {issued.serial: utcnow()})
    path = generator.crl_location(CertKind.SERVER)
    assert os.path.basename(path) == "server_ca_crl.pem"
    with open(path, "rb") as stream:
        assert stream.read() == crl_pem
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    crl = x509.load_pem_x509_crl(crl_pem)
    assert crl.get_revoked_certificate_by_serial_number(int(issued.serial, 16)) is not None
    empty = x509.load_pem_x509_crl(generator.publish_crl(CertKind.CLIENT, {}))
    assert len(empty) == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("86400", dt.timedelta(days=1)),
        ("30d", dt.timedelta(days=30)),
        ("90s", dt.timedelta(seconds=90)),
    ],
)
def test_rotation_window_accepts_seconds_or_days(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "1w", "-5", "3.5d", "days"])
def test_rotation_window_refuses_anything_else(text):
    with pytest.raises(ConfigError, match="neither seconds"):
        parse_duration(text)


def test_rotation_settings_read_the_configuration(tmp_path):
    conf = cert_conf(tmp_path, str(tmp_path), rotation_window="7d", rotation_batch_size=3)
    assert rotation_settings(conf) == (dt.timedelta(days=7), 3)


def test_published_crl_keeps_serials_published_before(tmp_path):
    generator = make_generator(tmp_path)
    first, second = (generator.issue(f"amp-{n}", CertKind.SERVER) for n in (1, 2))
    generator.publish_crl(CertKind.SERVER, {first.serial: utcnow()})
    crl = x509.load_pem_x509_crl(generator.publish_crl(CertKind.SERVER, {second.serial: utcnow()}))
    assert {format(entry.serial_number, "032x") for entry in crl} == {first.serial, second.serial}


def test_crl_of_a_replaced_ca_is_not_carried_over(tmp_path):
    generator = make_generator(tmp_path)
    old = generator.issue("amp-1", CertKind.SERVER)
    generator.publish_crl(CertKind.SERVER, {old.serial: utcnow()})
    ca.create_dual_ca(generator.ca_dir, PASSPHRASE, force=True)
    replaced = make_generator(tmp_path, ca_dir=generator.ca_dir)
    crl = x509.load_pem_x509_crl(replaced.publish_crl(CertKind.SERVER, {}))
    assert len(crl) == 0
