"""The dual CA checked by the openssl CLI: each CA accepts only its own kind; CRLs are valid.

Needs the ``openssl`` program: the test fails in CI (``CI=true``) when it is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from keramos.framework.config import make_conf
from keramos.framework.contracts import CertKind
from keramos.framework.pki.ca import create_dual_ca
from keramos.framework.pki.options import register_opts
from keramos.framework.records import utcnow
from keramos.plugins.certificates.generator import LocalCertGenerator

OPENSSL = shutil.which("openssl")
PASSPHRASE = "functional test passphrase"


def make_generator(tmp_path, key_type: str) -> LocalCertGenerator:
    """A local generator on a new dual CA of ``key_type`` under ``tmp_path``."""
    ca_dir = os.path.join(str(tmp_path), "ca")
    create_dual_ca(ca_dir, PASSPHRASE.encode(), key_type=key_type)
    conf = make_conf(config_files=[], overrides={"DEFAULT": {"state_path": str(tmp_path)}})
    register_opts(conf)
    for name, value in {
        "ca_dir": ca_dir,
        "ca_passphrase": PASSPHRASE,
        "key_type": key_type,
    }.items():
        conf.set_override(name, value, group="certificates")
    return LocalCertGenerator(conf)


@pytest.fixture(scope="module")
def openssl() -> str:
    if OPENSSL is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("the openssl program is required in CI and is missing", pytrace=False)
        pytest.skip("the openssl program is not installed")
    return OPENSSL


@pytest.fixture(scope="module", params=["ec-p256", "rsa-2048"])
def pki(request, tmp_path_factory):
    """A generator on a fresh dual CA, a server and a client certificate, written as files."""
    tmp_path = tmp_path_factory.mktemp(request.param)
    generator = make_generator(tmp_path, key_type=request.param)
    ca_dir = generator.ca_dir
    files = {
        "server_ca": os.path.join(ca_dir, "server_ca.pem"),
        "client_ca": os.path.join(ca_dir, "client_ca.pem"),
    }
    for name, kind, common_name in (
        ("server", CertKind.SERVER, "amp-1"),
        ("client", CertKind.CLIENT, "controller"),
    ):
        issued = generator.issue(common_name, kind, ip_addresses=["192.0.2.1"])
        files[name] = os.path.join(str(tmp_path), f"{name}.pem")
        with open(files[name], "wb") as stream:
            stream.write(issued.certificate_pem)
        files[f"{name}_serial"] = issued.serial
    return generator, files


def verify(openssl: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([openssl, "verify", *args], capture_output=True, text=True, check=False)


@pytest.mark.parametrize(
    ("certificate", "own_ca", "other_ca", "purpose"),
    [
        ("server", "server_ca", "client_ca", "sslserver"),
        ("client", "client_ca", "server_ca", "sslclient"),
    ],
)
def test_each_ca_accepts_its_own_kind_only(openssl, pki, certificate, own_ca, other_ca, purpose):
    _generator, files = pki
    accepted = verify(openssl, "-CAfile", files[own_ca], "-purpose", purpose, files[certificate])
    assert accepted.returncode == 0, accepted.stderr
    refused = verify(openssl, "-CAfile", files[other_ca], files[certificate])
    assert refused.returncode != 0
    assert "unable to get local issuer certificate" in refused.stderr + refused.stdout


def test_server_certificate_is_not_a_client_certificate(openssl, pki):
    _generator, files = pki
    wrong_purpose = verify(
        openssl, "-CAfile", files["server_ca"], "-purpose", "sslclient", files["server"]
    )
    assert wrong_purpose.returncode != 0


def test_crl_is_accepted_by_openssl_crl(openssl, pki):
    generator, files = pki
    generator.publish_crl(CertKind.SERVER, {})
    path = generator.crl_location(CertKind.SERVER)
    checked = subprocess.run(
        [openssl, "crl", "-in", path, "-noout", "-CAfile", files["server_ca"]],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    assert "verify OK" in checked.stderr + checked.stdout


def test_crl_check_accepts_a_valid_certificate_and_refuses_a_revoked_one(openssl, pki):
    generator, files = pki
    crl = generator.crl_location(CertKind.SERVER)
    generator.publish_crl(CertKind.SERVER, {})
    good = verify(
        openssl, "-crl_check", "-CAfile", files["server_ca"], "-CRLfile", crl, files["server"]
    )
    assert good.returncode == 0, good.stderr
    generator.publish_crl(CertKind.SERVER, {files["server_serial"]: utcnow()})
    revoked = verify(
        openssl, "-crl_check", "-CAfile", files["server_ca"], "-CRLfile", crl, files["server"]
    )
    assert revoked.returncode != 0
    assert "certificate revoked" in revoked.stderr + revoked.stdout


def test_client_crl_is_checked_against_the_client_ca(openssl, pki):
    generator, files = pki
    generator.publish_crl(CertKind.CLIENT, {files["client_serial"]: utcnow()})
    crl = generator.crl_location(CertKind.CLIENT)
    revoked = verify(
        openssl, "-crl_check", "-CAfile", files["client_ca"], "-CRLfile", crl, files["client"]
    )
    assert "certificate revoked" in revoked.stderr + revoked.stdout
