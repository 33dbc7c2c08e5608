"""Validation of image-signing certificates: dates, chains, key usage, path length, CRLs."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from keramos.framework.config import make_conf
from keramos.framework.errors import ConfigError
from keramos.framework.images.certificate_validation import (
    CertificateValidator,
    describe_certificate,
    load_certificates,
    load_crls,
    register_opts,
)
from keramos.framework.images.signature import Reason, SignatureVerificationError
from tests.unit.image_helpers import DAY, NOW, issue, new_key, pki, write_ca_file


def validator(**kwargs) -> CertificateValidator:
    return CertificateValidator([pki().root.certificate], **kwargs)


def reason(call) -> str:
    with pytest.raises(SignatureVerificationError) as excinfo:
        call()
    return excinfo.value.reason


@pytest.mark.parametrize("kind", ["rsa", "dsa", "p256", "p384", "p521"])
def test_chain_through_rsa_pss_signed_intermediate_validates(kind):
    shared = pki()
    chain = validator().validate(
        shared.signers[kind].certificate, [shared.intermediate.certificate]
    )
    assert [cert.subject for cert in chain] == [
        shared.signers[kind].certificate.subject,
        shared.intermediate.certificate.subject,
        shared.root.certificate.subject,
    ]


def test_pkcs1_and_ecdsa_signed_chains_validate():
    root = issue("ecdsa root", new_key("p521", 2), ca=True, hash_algorithm=hashes.SHA512())
    middle = issue("rsa middle", new_key("rsa", 2), root, ca=True, path_length=0)
    leaf = issue("leaf", new_key("p256", 2), middle)
    chain = CertificateValidator([root.certificate]).validate(
        leaf.certificate, [middle.certificate]
    )
    assert len(chain) == 3


def test_intermediates_from_the_configured_file_are_used():
    shared = pki()
    checker = validator(intermediates=[shared.intermediate.certificate])
    assert len(checker.validate(shared.signers["rsa"].certificate)) == 3


def test_missing_intermediate_is_untrusted():
    assert reason(lambda: validator().validate(pki().signers["rsa"].certificate)) == (
        Reason.CERTIFICATE_UNTRUSTED
    )


def test_certificate_from_another_ca_is_untrusted():
    other_root = issue("other root", new_key("rsa", 3), ca=True)
    leaf = issue("stranger", new_key("rsa", 4), other_root)
    with pytest.raises(SignatureVerificationError) as excinfo:
        validator().validate(leaf.certificate, [other_root.certificate])
    assert excinfo.value.reason == Reason.CERTIFICATE_UNTRUSTED
    assert "stranger" in str(excinfo.value)


def test_expired_signing_certificate():
    leaf = issue(
        "old signer",
        new_key("rsa"),
        pki().intermediate,
        not_before=NOW - 30 * DAY,
        not_after=NOW - DAY,
    )
    with pytest.raises(SignatureVerificationError) as excinfo:
        validator().validate(leaf.certificate, [pki().intermediate.certificate])
    assert excinfo.value.reason == Reason.CERTIFICATE_EXPIRED
    assert "old signer" in str(excinfo.value)


def test_not_yet_valid_signing_certificate():
    leaf = issue("future", new_key("rsa"), pki().intermediate, not_before=NOW + DAY)
    assert (
        reason(lambda: validator().validate(leaf.certificate, [pki().intermediate.certificate]))
        == Reason.CERTIFICATE_NOT_YET_VALID
    )


def test_expired_intermediate_is_reported_as_expired():
    root = pki().root
    middle = issue(
        "expired middle",
        new_key("p256", 5),
        root,
        ca=True,
        path_length=0,
        not_before=NOW - 30 * DAY,
        not_after=NOW - DAY,
    )
    leaf = issue("leaf", new_key("rsa"), middle, not_before=NOW - 2 * DAY)
    with pytest.raises(SignatureVerificationError) as excinfo:
        validator().validate(leaf.certificate, [middle.certificate])
    assert excinfo.value.reason == Reason.CERTIFICATE_EXPIRED
    assert "expired middle" in str(excinfo.value)


def test_key_usage_without_digital_signature_is_refused():
    leaf = issue("encipher only", new_key("rsa"), pki().intermediate, digital_signature=False)
    assert (
        reason(lambda: validator().validate(leaf.certificate, [pki().intermediate.certificate]))
        == Reason.CERTIFICATE_KEY_USAGE
    )


def test_no_key_usage_extension_allows_signatures():
    leaf = issue("no usage", new_key("rsa"), pki().intermediate, digital_signature=None)
    assert len(validator().validate(leaf.certificate, [pki().intermediate.certificate])) == 3


def test_path_length_of_a_ca_is_enforced():
    shared = pki()
    # The intermediate has path length 0: it may not issue another CA.
    sub_ca = issue("sub ca", new_key("p256", 6), shared.intermediate, ca=True)
    leaf = issue("deep leaf", new_key("rsa"), sub_ca)
    assert (
        reason(
            lambda: validator().validate(
                leaf.certificate, [sub_ca.certificate, shared.intermediate.certificate]
            )
        )
        == Reason.CERTIFICATE_UNTRUSTED
    )


def test_end_entity_certificate_cannot_act_as_ca():
    shared = pki()
    leaf = issue("child of a leaf", new_key("rsa"), shared.signers["p256"])
    assert (
        reason(
            lambda: validator().validate(
                leaf.certificate,
                [shared.signers["p256"].certificate, shared.intermediate.certificate],
            )
        )
        == Reason.CERTIFICATE_UNTRUSTED
    )


def test_directly_trusted_self_signed_certificate():
    self_signed = issue("operator signer", new_key("p384", 7))
    checker = CertificateValidator([pki().root.certificate, self_signed.certificate])
    assert checker.validate(self_signed.certificate) == [self_signed.certificate]


def _crl(issuer, serials, signer_key=None) -> x509.CertificateRevocationList:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.certificate.subject)
        .last_update(NOW - DAY)
        .next_update(NOW + DAY)
    )
    for serial in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(NOW - DAY)
            .build()
        )
    return builder.sign(signer_key or issuer.key, hashes.SHA256())


def test_revoked_signing_certificate_is_refused():
    shared = pki()
    signer = shared.signers["rsa"]
    crl = _crl(shared.intermediate, [signer.certificate.serial_number])
    with pytest.raises(SignatureVerificationError) as excinfo:
        validator(crls=[crl]).validate(signer.certificate, [shared.intermediate.certificate])
    assert excinfo.value.reason == Reason.CERTIFICATE_REVOKED


def test_revoked_intermediate_is_refused():
    shared = pki()
    crl = _crl(shared.root, [shared.intermediate.certificate.serial_number])
    assert (
        reason(
            lambda: validator(crls=[crl]).validate(
                shared.signers["p256"].certificate, [shared.intermediate.certificate]
            )
        )
        == Reason.CERTIFICATE_REVOKED
    )


def test_crl_not_signed_by_the_issuer_is_ignored():
    shared = pki()
    signer = shared.signers["rsa"]
    forged = _crl(shared.intermediate, [signer.certificate.serial_number], new_key("p384", 8))
    chain = validator(crls=[forged]).validate(signer.certificate, [shared.intermediate.certificate])
    assert len(chain) == 3


def test_from_conf_requires_a_trusted_ca_file():
    with pytest.raises(ConfigError, match="trusted_ca_file"):
        CertificateValidator.from_conf(make_conf(config_files=[]))


def test_from_conf_names_an_unreadable_file(tmp_path):
    conf = make_conf(config_files=[])
    register_opts(conf)
    missing = tmp_path / "absent.pem"
    conf.set_override("trusted_ca_file", str(missing), group="image_verification")
    with pytest.raises(ConfigError, match="absent.pem"):
        CertificateValidator.from_conf(conf)


def test_from_conf_reads_cas_intermediates_and_crls(tmp_path):
    shared = pki()
    signer = shared.signers["rsa"]
    conf = make_conf(config_files=[])
    register_opts(conf)
    crl = _crl(shared.intermediate, [signer.certificate.serial_number])
    crl_path = tmp_path / "crl.pem"
    crl_path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    conf.set_override(
        "trusted_ca_file",
        write_ca_file(tmp_path / "ca.pem", shared.root),
        group="image_verification",
    )
    conf.set_override(
        "intermediate_ca_file",
        write_ca_file(tmp_path / "inter.pem", shared.intermediate),
        group="image_verification",
    )
    conf.set_override("crl_file", str(crl_path), group="image_verification")
    checker = CertificateValidator.from_conf(conf)
    assert len(load_crls(crl_path.read_bytes())) == 1
    assert reason(lambda: checker.validate(signer.certificate)) == Reason.CERTIFICATE_REVOKED
    assert len(checker.validate(shared.signers["p256"].certificate)) == 3


def test_unparseable_certificate_has_its_own_reason():
    assert reason(lambda: load_certificates(b"-----BEGIN CERTIFICATE-----\nxx\n")) == (
        Reason.CERTIFICATE_INVALID
    )


def test_description_names_subject_and_serial():
    cert = pki().signers["rsa"].certificate
    line = describe_certificate(cert)
    assert "image signer rsa" in line and f"{cert.serial_number:x}" in line
