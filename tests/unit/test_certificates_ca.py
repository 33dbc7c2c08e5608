"""The CA core: creating and loading the dual CA, issuing, signing CSRs, CRLs, bad input."""

from __future__ import annotations

import datetime as dt
import os
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from keramos.framework.contracts import CertKind
from keramos.framework.errors import ConfigError, DriverError
from keramos.framework.files import write_all_atomic, write_atomic
from keramos.framework.pki import errors
from keramos.framework.pki.ca import (
    CertificateAuthority,
    ca_certificate_path,
    ca_key_path,
    create_dual_ca,
    load_dual_ca,
)
from keramos.framework.pki.keys import KEY_TYPES
from keramos.framework.records import utcnow
from tests.unit.certs_helpers import PASSPHRASE, make_csr, rsa_key, tamper_signature

DAY = dt.timedelta(days=1)


@pytest.fixture
def ca_dir(tmp_path) -> str:
    directory = str(tmp_path / "ca")
    create_dual_ca(directory, PASSPHRASE)
    return directory


@pytest.fixture
def authorities(ca_dir):
    return load_dual_ca(ca_dir, PASSPHRASE)


def _files(directory: str) -> list[str]:
    return sorted(os.listdir(directory))


def test_init_writes_two_distinct_cas_keys_encrypted_and_private(ca_dir):
    assert _files(ca_dir) == [
        "client_ca.pem",
        "client_ca_key.pem",
        "server_ca.pem",
        "server_ca_key.pem",
    ]
    for kind in CertKind.ALL:
        key_file = ca_key_path(ca_dir, kind)
        assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
        with open(key_file, "rb") as stream:
            assert b"BEGIN ENCRYPTED PRIVATE KEY" in stream.read()
    server = x509.load_pem_x509_certificate(open(ca_certificate_path(ca_dir, "server"), "rb").read())
    client = x509.load_pem_x509_certificate(open(ca_certificate_path(ca_dir, "client"), "rb").read())
    assert server.subject != client.subject
    assert server.public_key() != client.public_key()
    usage = server.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign


def test_init_refuses_to_overwrite_without_force_and_keeps_the_old_ca(ca_dir):
    before = {name: open(os.path.join(ca_dir, name), "rb").read() for name in _files(ca_dir)}
    with pytest.raises(errors.CAExists, match="refusing to overwrite.*--force"):
        create_dual_ca(ca_dir, PASSPHRASE)
    after = {name: open(os.path.join(ca_dir, name), "rb").read() for name in _files(ca_dir)}
    assert after == before


def test_init_with_force_replaces_the_ca(ca_dir):
    old = open(ca_certificate_path(ca_dir, "server"), "rb").read()
    create_dual_ca(ca_dir, PASSPHRASE, force=True)
    assert open(ca_certificate_path(ca_dir, "server"), "rb").read() != old
    assert not [name for name in _files(ca_dir) if name.endswith(".tmp")]


def test_init_refuses_an_empty_passphrase(tmp_path):
    with pytest.raises(ConfigError, match="passphrase is empty"):
        create_dual_ca(str(tmp_path / "ca"), b"")
    assert not (tmp_path / "ca").exists()


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_every_key_type_makes_a_working_ca(tmp_path, key_type):
    directory = str(tmp_path / "ca")
    create_dual_ca(directory, PASSPHRASE, key_type=key_type)
    authority = load_dual_ca(directory, PASSPHRASE)[CertKind.SERVER]
    expected = rsa.RSAPrivateKey if key_type.startswith("rsa") else ec.EllipticCurvePrivateKey
    assert isinstance(authority.private_key, expected)
    issued = authority.issue("amp-1", validity=DAY, key_type=key_type)
    certificate = x509.load_pem_x509_certificate(issued.certificate_pem)
    certificate.verify_directly_issued_by(authority.certificate)


def test_unknown_key_type_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown key type 'dsa-1024'"):
        create_dual_ca(str(tmp_path / "ca"), PASSPHRASE, key_type="dsa-1024")


def test_server_certificate_has_name_ips_and_server_usage(authorities):
    issued = authorities[CertKind.SERVER].issue("amp-42", ip_addresses=["192.0.2.7", "2001:db8::1"], validity=DAY)
    certificate = x509.load_pem_x509_certificate(issued.certificate_pem)
    assert certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "amp-42"
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["amp-42"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == [
        "192.0.2.7",
        "2001:db8::1",
    ]
    eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign
    assert not certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert issued.kind == "server" and issued.subject == "amp-42"
    assert issued.not_after == certificate.not_valid_after_utc
    assert issued.private_key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    certificate.verify_directly_issued_by(authorities[CertKind.SERVER].certificate)


def test_client_certificate_has_client_usage_and_comes_from_the_client_ca(authorities):
    issued = authorities[CertKind.CLIENT].issue("controller", validity=DAY)
    certificate = x509.load_pem_x509_certificate(issued.certificate_pem)
    eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    certificate.verify_directly_issued_by(authorities[CertKind.CLIENT].certificate)
    with pytest.raises(ValueError):
        certificate.verify_directly_issued_by(authorities[CertKind.SERVER].certificate)


def test_serials_are_random_positive_128_bit_and_recorded_as_hex(authorities):
    serials = set()
    for _ in range(50):
        issued = authorities[CertKind.SERVER].issue("amp-1", validity=DAY)
        number = x509.load_pem_x509_certificate(issued.certificate_pem).serial_number
        assert 0 < number < 2**128
        assert issued.serial == format(number, "032x")
        serials.add(number)
    assert len(serials) == 50


def test_validity_is_configurable_and_never_outlives_the_ca(authorities):
    now = utcnow()
    authority = authorities[CertKind.SERVER]
    issued = authority.issue("amp-1", validity=dt.timedelta(days=30), now=now)
    assert abs(issued.not_after - (now + dt.timedelta(days=30))) < dt.timedelta(seconds=1)
    forever = authority.issue("amp-1", validity=dt.timedelta(days=100000), now=now)
    assert forever.not_after == authority.certificate.not_valid_after_utc
    with pytest.raises(DriverError, match="validity must be positive"):
        authority.issue("amp-1", validity=dt.timedelta(0))


@pytest.mark.parametrize("name", ["", "../etc/passwd", "amp 1", "-amp", "a" * 65, "amp/1"])
def test_a_name_that_is_not_an_identifier_is_refused(authorities, name):
    with pytest.raises(DriverError, match="is not an identifier"):
        authorities[CertKind.SERVER].issue(name, validity=DAY)


@pytest.mark.parametrize(("value", "shown"), [("300.1.1.1", "'300.1.1.1'"), (5, "5")])
def test_an_invalid_ip_is_refused(authorities, value, shown):
    with pytest.raises(DriverError, match=f"{shown} is not an IP address"):
        authorities[CertKind.SERVER].issue("amp-1", ip_addresses=[value], validity=DAY)


def test_csr_is_signed_for_its_amphora_and_the_key_stays_with_it(authorities):
    key = ec.generate_private_key(ec.SECP256R1())
    issued = authorities[CertKind.SERVER].sign_csr(
        make_csr("amp-7", dns_names=["amp-7"], key=key), expected_common_name="amp-7", validity=DAY
    )
    certificate = x509.load_pem_x509_certificate(issued.certificate_pem)
    assert issued.private_key_pem is None
    assert certificate.public_key() == key.public_key()
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["amp-7"]
    certificate.verify_directly_issued_by(authorities[CertKind.SERVER].certificate)


def test_csr_for_another_amphora_is_refused(authorities):
    with pytest.raises(errors.IdentityMismatch, match="common name is amp-8, expected 'amp-7'"):
        authorities[CertKind.SERVER].sign_csr(make_csr("amp-8"), expected_common_name="amp-7", validity=DAY)


def test_csr_asking_for_extra_names_is_refused(authorities):
    with pytest.raises(errors.IdentityMismatch, match="names other than 'amp-7': amp-8"):
        authorities[CertKind.SERVER].sign_csr(
            make_csr("amp-7", dns_names=["amp-7", "amp-8"]),
            expected_common_name="amp-7",
            validity=DAY,
        )


def test_csr_without_common_name_is_refused(authorities):
    with pytest.raises(errors.IdentityMismatch, match="common name is missing"):
        authorities[CertKind.SERVER].sign_csr(make_csr(None), expected_common_name="amp-7", validity=DAY)


def test_csr_whose_signature_does_not_verify_is_refused(authorities):
    with pytest.raises(errors.CSRRejected, match="signature does not verify"):
        authorities[CertKind.SERVER].sign_csr(
            tamper_signature(make_csr("amp-7")), expected_common_name="amp-7", validity=DAY
        )


def test_csr_with_a_weak_rsa_key_is_refused(authorities):
    with pytest.raises(errors.CSRRejected, match="1024-bit RSA key"):
        authorities[CertKind.SERVER].sign_csr(
            make_csr("amp-7", key=rsa_key(1024)), expected_common_name="amp-7", validity=DAY
        )


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello",
        b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
    ],
)
def test_malformed_csr_is_refused_as_malformed_pem(authorities, data):
    with pytest.raises(errors.MalformedPEM, match="CSR is not a PEM certificate signing request"):
        authorities[CertKind.SERVER].sign_csr(data, expected_common_name="amp-7", validity=DAY)


def test_wrong_passphrase_names_the_problem(ca_dir):
    with pytest.raises(errors.CAWrongPassphrase, match="server CA key.*passphrase does not decrypt"):
        load_dual_ca(ca_dir, b"not the passphrase")


def test_missing_ca_tells_to_run_ca_init(tmp_path):
    with pytest.raises(errors.CAUnusable, match="keramos ca init"):
        load_dual_ca(str(tmp_path), PASSPHRASE)


@pytest.mark.parametrize("which", ["certificate", "key"])
def test_malformed_ca_file_names_the_file(ca_dir, which):
    path = ca_certificate_path(ca_dir, "client") if which == "certificate" else ca_key_path(ca_dir, "client")
    write_atomic(path, b"-----BEGIN GARBAGE-----\nnope\n-----END GARBAGE-----\n")
    with pytest.raises(errors.CAMalformed, match=os.path.basename(path)):
        load_dual_ca(ca_dir, PASSPHRASE)


def test_key_not_matching_its_ca_certificate_is_refused(ca_dir):
    server_key = open(ca_key_path(ca_dir, "server"), "rb").read()
    write_atomic(ca_key_path(ca_dir, "client"), server_key)
    with pytest.raises(errors.CAKeyMismatch, match="client_ca_key.pem is not the key of the client CA"):
        load_dual_ca(ca_dir, PASSPHRASE)


def test_the_same_ca_for_both_kinds_is_refused(ca_dir):
    for suffix in (".pem", "_key.pem"):
        data = open(os.path.join(ca_dir, f"server_ca{suffix}"), "rb").read()
        write_atomic(os.path.join(ca_dir, f"client_ca{suffix}"), data)
    with pytest.raises(errors.CAUnusable, match="share one key; they must differ"):
        load_dual_ca(ca_dir, PASSPHRASE)


def test_leaf_certificate_as_ca_is_refused(ca_dir, authorities):
    issued = authorities[CertKind.SERVER].issue("amp-1", validity=DAY)
    write_atomic(ca_certificate_path(ca_dir, "server"), issued.certificate_pem)
    with pytest.raises(errors.CAUnusable, match="is not a CA certificate"):
        load_dual_ca(ca_dir, PASSPHRASE)


def test_expired_ca_is_refused_at_load_and_at_issue(tmp_path):
    old = utcnow() - dt.timedelta(days=30)
    authority = CertificateAuthority.create("server", validity=dt.timedelta(days=10), now=old)
    with pytest.raises(errors.CAValidityError, match="server CA certificate expired on"):
        authority.issue("amp-1", validity=DAY)
    directory = str(tmp_path)
    write_atomic(ca_certificate_path(directory, "server"), authority.certificate_pem)
    write_atomic(ca_key_path(directory, "server"), authority.key_pem(PASSPHRASE))
    with pytest.raises(errors.CAValidityError, match="expired"):
        CertificateAuthority.load(directory, "server", PASSPHRASE)


def test_not_yet_valid_ca_is_refused(authorities):
    authority = authorities[CertKind.SERVER]
    before = authority.certificate.not_valid_before_utc - DAY
    with pytest.raises(errors.CAValidityError, match="not valid yet"):
        authority.issue("amp-1", validity=DAY, now=before)


def test_crl_lists_the_revoked_serials_and_is_signed_by_its_ca(authorities):
    authority = authorities[CertKind.SERVER]
    issued = authority.issue("amp-1", validity=DAY)
    revoked_at = utcnow().replace(microsecond=0)
    crl = x509.load_pem_x509_crl(authority.crl({issued.serial: revoked_at}, next_update=DAY))
    assert crl.is_signature_valid(authority.certificate.public_key())
    assert crl.issuer == authority.certificate.subject
    entry = crl.get_revoked_certificate_by_serial_number(int(issued.serial, 16))
    assert entry is not None and entry.revocation_date_utc == revoked_at
    assert crl.next_update_utc > crl.last_update_utc
    assert not crl.is_signature_valid(authorities[CertKind.CLIENT].certificate.public_key())


def test_crl_refuses_a_serial_that_is_not_hex(authorities):
    with pytest.raises(DriverError, match="'xyz' is not hexadecimal"):
        authorities[CertKind.SERVER].crl({"xyz": utcnow()}, next_update=DAY)


def test_unknown_kind_is_a_driver_error(tmp_path):
    with pytest.raises(DriverError, match="kind must be one of server, client, proxy, not 'peer'"):
        ca_certificate_path(str(tmp_path), "peer")


def test_a_failed_multi_file_write_leaves_no_file_behind(tmp_path):
    first, second = str(tmp_path / "first.pem"), str(tmp_path / "missing-dir" / "second.pem")
    with pytest.raises(FileNotFoundError):
        write_all_atomic({first: (b"one", 0o600), second: (b"two", 0o600)})
    assert os.listdir(tmp_path) == []


def test_atomic_write_replaces_whole_and_private(tmp_path):
    path = str(tmp_path / "key.pem")
    write_atomic(path, b"old")
    write_atomic(path, b"new")
    assert open(path, "rb").read() == b"new"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert os.listdir(tmp_path) == ["key.pem"]
