"""``keramos ca init`` and ``keramos cert issue|list|revoke``: files, passphrase sources, errors."""

from __future__ import annotations

import argparse
import os
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from keramos.framework.cli import ca as ca_cli
from keramos.framework.cli import cert as cert_cli
from keramos.framework.config import make_conf
from keramos.framework.errors import ConfigError, KeramosError
from keramos.framework.pki import errors
from tests.unit.certs_helpers import PASSPHRASE


def parser() -> argparse.ArgumentParser:
    """The ``keramos`` parser restricted to the two certificate command modules."""
    top = argparse.ArgumentParser(prog="keramos")
    subparsers = top.add_subparsers(dest="command", required=True)
    ca_cli.register(subparsers)
    cert_cli.register(subparsers)
    return top


@pytest.fixture
def keramos(tmp_path, monkeypatch):
    """Run a certificate command with a configuration under ``tmp_path``; return (status, out)."""
    config_file = tmp_path / "keramos.conf"
    config_file.write_text(
        f"[DEFAULT]\nstate_path = {tmp_path}\n[state_store]\nconnection = sqlite:///{tmp_path}/state.sqlite\n"
    )
    monkeypatch.delenv(ca_cli.PASSPHRASE_ENV, raising=False)

    def run(*argv: str) -> int:
        args = parser().parse_args(argv)
        args.conf = lambda **overrides: make_conf(
            ["--config-file", str(config_file)], config_files=[], overrides=overrides or None
        )
        return args.func(args)

    run.config_file = config_file
    return run


@pytest.fixture
def passphrase_file(tmp_path) -> str:
    path = tmp_path / "passphrase"
    path.write_bytes(PASSPHRASE + b"\n")
    return str(path)


@pytest.fixture
def ca_dir(tmp_path, keramos, passphrase_file) -> str:
    directory = str(tmp_path / "ca")
    assert keramos("ca", "init", "--dir", directory, "--passphrase-file", passphrase_file) == 0
    return directory


def test_ca_init_writes_both_cas_with_private_keys(tmp_path, keramos, passphrase_file, capsys):
    ca_dir = str(tmp_path / "new-ca")
    assert keramos("ca", "init", "--dir", ca_dir, "--passphrase-file", passphrase_file) == 0
    assert sorted(os.listdir(ca_dir)) == [
        "client_ca.pem",
        "client_ca_key.pem",
        "server_ca.pem",
        "server_ca_key.pem",
    ]
    for name in ("client_ca_key.pem", "server_ca_key.pem"):
        assert stat.S_IMODE(os.stat(os.path.join(ca_dir, name)).st_mode) == 0o600
    assert "server CA" in capsys.readouterr().out


def test_ca_init_refuses_to_overwrite_then_force_replaces(ca_dir, keramos, passphrase_file):
    before = open(os.path.join(ca_dir, "server_ca.pem"), "rb").read()
    with pytest.raises(errors.CAExists, match="--force"):
        keramos("ca", "init", "--dir", ca_dir, "--passphrase-file", passphrase_file)
    assert open(os.path.join(ca_dir, "server_ca.pem"), "rb").read() == before
    assert keramos("ca", "init", "--dir", ca_dir, "--passphrase-file", passphrase_file, "--force") == 0
    assert open(os.path.join(ca_dir, "server_ca.pem"), "rb").read() != before


def test_ca_init_key_type(tmp_path, keramos, passphrase_file):
    directory = str(tmp_path / "rsa")
    keramos(
        "ca",
        "init",
        "--dir",
        directory,
        "--key-type",
        "rsa-2048",
        "--passphrase-file",
        passphrase_file,
    )
    certificate = x509.load_pem_x509_certificate(open(os.path.join(directory, "client_ca.pem"), "rb").read())
    assert certificate.public_key().key_size == 2048


def test_passphrase_is_never_a_command_line_argument():
    with pytest.raises(SystemExit):
        parser().parse_args(["ca", "init", "--dir", "x", "--passphrase", "secret"])


def test_without_any_passphrase_the_error_lists_the_three_sources(tmp_path, keramos):
    with pytest.raises(ConfigError, match=r"--passphrase-file.*KERAMOS_CA_PASSPHRASE.*ca_passphrase_file"):
        keramos("ca", "init", "--dir", str(tmp_path / "ca"))
    assert not (tmp_path / "ca").exists()


def test_passphrase_file_wins_over_environment_which_wins_over_config(
    tmp_path, keramos, ca_dir, passphrase_file, monkeypatch
):
    issue = ("cert", "issue", "--dir", ca_dir, "--kind", "server", "--cn", "amp-1")
    issue += ("--out", str(tmp_path / "out"), "--force")
    with open(keramos.config_file, "a") as stream:
        stream.write("[certificates]\nca_passphrase = wrong-from-config\n")
    monkeypatch.setenv(ca_cli.PASSPHRASE_ENV, "wrong-from-env")
    assert keramos(*issue, "--passphrase-file", passphrase_file) == 0
    with pytest.raises(errors.CAWrongPassphrase):
        keramos(*issue)
    monkeypatch.setenv(ca_cli.PASSPHRASE_ENV, PASSPHRASE.decode())
    assert keramos(*issue) == 0
    monkeypatch.delenv(ca_cli.PASSPHRASE_ENV)
    with pytest.raises(errors.CAWrongPassphrase):
        keramos(*issue)


@pytest.mark.parametrize("kind", ["client", "server"])
def test_a_wrong_passphrase_names_the_key_of_the_ca_asked_for(tmp_path, keramos, ca_dir, kind):
    wrong = tmp_path / "wrong"
    wrong.write_text("not the passphrase\n")
    issue = ("cert", "issue", "--dir", ca_dir, "--kind", kind, "--cn", "peer")
    with pytest.raises(errors.CAWrongPassphrase) as refused:
        keramos(*issue, "--out", str(tmp_path / "out"), "--passphrase-file", str(wrong))
    message = str(refused.value)
    other = "server" if kind == "client" else "client"
    assert f"{kind}_ca_key.pem" in message and f"{other}_ca" not in message
    assert message.startswith(f"{kind} CA key:")


def test_cert_issue_writes_cert_and_private_key(tmp_path, keramos, ca_dir, passphrase_file):
    out = tmp_path / "controller"
    assert (
        keramos(
            "cert",
            "issue",
            "--dir",
            ca_dir,
            "--kind",
            "client",
            "--cn",
            "controller",
            "--ip",
            "192.0.2.1",
            "--out",
            str(out),
            "--passphrase-file",
            passphrase_file,
        )
        == 0
    )
    assert stat.S_IMODE(os.stat(out / "key.pem").st_mode) == 0o600
    certificate = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())
    key = serialization.load_pem_private_key((out / "key.pem").read_bytes(), None)
    assert certificate.public_key() == key.public_key()
    client_ca = x509.load_pem_x509_certificate(open(os.path.join(ca_dir, "client_ca.pem"), "rb").read())
    certificate.verify_directly_issued_by(client_ca)


def test_cert_issue_refuses_to_overwrite_and_rejects_bad_input(tmp_path, keramos, ca_dir, passphrase_file):
    out = tmp_path / "out"
    common = (
        "--dir",
        ca_dir,
        "--kind",
        "server",
        "--out",
        str(out),
        "--passphrase-file",
        passphrase_file,
    )
    keramos("cert", "issue", "--cn", "amp-1", *common)
    before = (out / "cert.pem").read_bytes()
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        keramos("cert", "issue", "--cn", "amp-1", *common)
    with pytest.raises(KeramosError, match="not an IP address"):
        keramos("cert", "issue", "--cn", "amp-1", "--ip", "nope", "--force", *common)
    with pytest.raises(KeramosError, match="not an identifier"):
        keramos("cert", "issue", "--cn", "../amp", "--force", *common)
    assert (out / "cert.pem").read_bytes() == before


def test_cert_list_and_revoke(tmp_path, keramos, ca_dir, passphrase_file, capsys):
    keramos(
        "cert",
        "issue",
        "--dir",
        ca_dir,
        "--kind",
        "server",
        "--cn",
        "amp-1",
        "--out",
        str(tmp_path / "a"),
        "--passphrase-file",
        passphrase_file,
    )
    serial = x509.load_pem_x509_certificate((tmp_path / "a" / "cert.pem").read_bytes()).serial_number
    serial_hex = format(serial, "032x")
    capsys.readouterr()
    assert keramos("cert", "list") == 0
    listing = capsys.readouterr().out
    assert serial_hex in listing and "active" in listing and "amp-1" in listing
    assert keramos("cert", "revoke", serial_hex, "--dir", ca_dir, "--passphrase-file", passphrase_file) == 0
    assert "server_ca_crl.pem" in capsys.readouterr().out
    crl = x509.load_pem_x509_crl(open(os.path.join(ca_dir, "server_ca_crl.pem"), "rb").read())
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    keramos("cert", "list", "--status", "revoked")
    assert serial_hex in capsys.readouterr().out
    assert keramos("cert", "revoke", "abcdef", "--dir", ca_dir, "--passphrase-file", passphrase_file) == 1
    assert "NotFound: no certificate with serial abcdef" in capsys.readouterr().err


def test_cert_list_when_empty(keramos, capsys):
    assert keramos("cert", "list") == 0
    assert "no certificates recorded" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["ca", "init", "--help"],
            ["--force", "--key-type", "--passphrase-file", "KERAMOS_CA_PASSPHRASE"],
        ),
        (["cert", "issue", "--help"], ["--kind", "--cn", "--ip", "--out", "0600", "clientAuth"]),
        (["cert", "revoke", "--help"], ["SERIAL", "crl_check"]),
    ],
)
def test_help_explains_the_options(argv, expected, capsys):
    with pytest.raises(SystemExit):
        parser().parse_args(argv)
    text = " ".join(capsys.readouterr().out.split())
    for word in expected:
        assert word in text


def _extended_key_usage(path: str) -> list:
    with open(path, "rb") as stream:
        certificate = x509.load_pem_x509_certificate(stream.read())
    return list(certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_the_proxy_ca_is_a_third_ca_issuing_proxy_and_controller_certificates(
    ca_dir, keramos, passphrase_file, tmp_path, capsys
):
    from cryptography.x509.oid import ExtendedKeyUsageOID

    assert keramos("ca", "init-proxy", "--dir", ca_dir, "--passphrase-file", passphrase_file) == 0
    assert stat.S_IMODE(os.stat(os.path.join(ca_dir, "proxy_ca_key.pem")).st_mode) == 0o600
    for name in ("server_ca.pem", "client_ca.pem"):
        with open(os.path.join(ca_dir, name), "rb") as dual, open(os.path.join(ca_dir, "proxy_ca.pem"), "rb") as proxy:
            assert dual.read() != proxy.read()
    for role, usage in (("server", ExtendedKeyUsageOID.SERVER_AUTH), ("client", ExtendedKeyUsageOID.CLIENT_AUTH)):
        out = tmp_path / role
        assert keramos(
            "cert", "issue-proxy", "--cn", "keramos-proxy", "--role", role, "--ip", "10.0.0.1", "--out", str(out),
            "--dir", ca_dir, "--passphrase-file", passphrase_file,
        ) == 0
        assert _extended_key_usage(str(out / "cert.pem")) == [usage]
        assert stat.S_IMODE(os.stat(out / "key.pem").st_mode) == 0o600
    assert "proxy client certificate" in capsys.readouterr().out
    with pytest.raises(errors.CAExists, match="proxy CA"):
        keramos("ca", "init-proxy", "--dir", ca_dir, "--passphrase-file", passphrase_file)


def test_a_proxy_certificate_needs_the_proxy_ca(ca_dir, keramos, passphrase_file, tmp_path):
    with pytest.raises(errors.CAUnusable, match="proxy"):
        keramos(
            "cert", "issue-proxy", "--cn", "keramos-proxy", "--role", "server", "--out", str(tmp_path / "out"),
            "--dir", ca_dir, "--passphrase-file", passphrase_file,
        )
