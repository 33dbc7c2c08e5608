"""Benchmark: certificates issued per second by Keramos against raw ``cryptography`` loops.

Rows, each measured in the same run against its raw loop:

1. EC P-256 through the ``issue_certificate`` flow (``InProcessWorker.run``: payload validation,
   the runner, durable flow persistence and the SQLite state store, the local generator);
2. EC P-256 through the ``local`` generator driver alone;
3. RSA-2048 through the ``local`` generator driver (Octavia's local generator: ~130 ms/cert).

The raw loop generates a key and signs a certificate of the same content (subject, SAN, key
usage, extended key usage, key identifiers) with a CA key already in memory, and serialises the
key and certificate to PEM: the least any issuer must do.

Run ``python bench/bench_certificates.py [DURATION_SECONDS]``; progress goes to stderr, the
table to stdout.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from keramos.framework.config import make_conf
from keramos.framework.contracts import CertKind
from keramos.framework.pki.ca import CertificateAuthority, create_dual_ca
from keramos.framework.pki.keys import generate_private_key
from keramos.framework.pki.options import register_opts
from keramos.framework.testing import InProcessWorker
from keramos.plugins.certificates.generator import LocalCertGenerator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import format_table, row  # noqa: E402

PASSPHRASE = "benchmark passphrase"
MIN_CALLS = 5
GOAL = ">= 0.8"
UNIT = "certs/s"


def _paired_rates(
    label: str, keramos: Callable[[], object], raw: Callable[[], object], duration: float
) -> tuple[float, float]:
    """Calls per second of ``keramos`` and ``raw``, measured in alternating slices.

    Alternating slices of about a tenth of a second each keeps both sides under the same machine
    load, which matters on a shared host; each side runs for about ``duration`` seconds and at
    least MIN_CALLS times, after one warm-up call.
    """
    counts, elapsed = [0, 0], [0.0, 0.0]
    keramos()
    raw()
    while min(counts) < MIN_CALLS or min(elapsed) < duration:
        for side, call in enumerate((keramos, raw)):
            start = time.perf_counter()
            while True:
                call()
                counts[side] += 1
                if time.perf_counter() - start >= 0.1:
                    break
            elapsed[side] += time.perf_counter() - start
    rates = (counts[0] / elapsed[0], counts[1] / elapsed[1])
    print(
        f"  {label}: keramos {counts[0]} in {elapsed[0]:.1f}s ({rates[0]:.1f}/s), "
        f"raw {counts[1]} in {elapsed[1]:.1f}s ({rates[1]:.1f}/s)",
        file=sys.stderr,
    )
    return rates


def local_generator(state_path: str, key_type: str) -> LocalCertGenerator:
    """The ``local`` generator on a new dual CA of ``key_type`` under ``state_path``."""
    ca_dir = os.path.join(state_path, f"ca-{key_type}")
    create_dual_ca(ca_dir, PASSPHRASE.encode(), key_type=key_type)
    conf = make_conf(config_files=[], overrides={"DEFAULT": {"state_path": state_path}})
    register_opts(conf)
    for name, value in {
        "ca_dir": ca_dir,
        "ca_passphrase": PASSPHRASE,
        "key_type": key_type,
    }.items():
        conf.set_override(name, value, group="certificates")
    return LocalCertGenerator(conf)


def raw_issue(authority: CertificateAuthority, key_type: str) -> bytes:
    """Key generation and signing straight on ``cryptography``, with a CA key in memory."""
    key = generate_private_key(key_type)
    now = dt.datetime.now(dt.timezone.utc)
    ca_ski = authority.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "amp-raw")]))
        .issuer_name(authority.certificate.subject)
        .public_key(key.public_key())
        .serial_number(secrets.randbits(128) | 1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("amp-raw")]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski.value),
            critical=False,
        )
        .sign(authority.private_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return certificate.public_bytes(serialization.Encoding.PEM) + key_pem


def rows(duration: float = 3.0) -> list[dict[str, Any]]:
    """The benchmark table: Keramos issuance rates against raw ``cryptography`` loops."""
    table = []
    with tempfile.TemporaryDirectory(prefix="keramos-bench-certs-") as state_path:
        ec_generator = local_generator(state_path, "ec-p256")
        ec_ca = ec_generator.authorities[CertKind.SERVER]

        def raw_ec() -> bytes:
            return raw_issue(ec_ca, "ec-p256")

        with InProcessWorker(cert_generator=ec_generator) as worker:
            names = (f"amp-{number}" for number in itertools.count())

            def through_flow() -> None:
                worker.run("issue_certificate", {"common_name": next(names)})

            name = "EC P-256 issue_certificate flow"
            table.append(row(name, *_paired_rates(name, through_flow, raw_ec, duration), UNIT, GOAL))

        def ec_driver() -> object:
            return ec_generator.issue("amp-1", CertKind.SERVER)

        name = "EC P-256 local generator driver"
        table.append(row(name, *_paired_rates(name, ec_driver, raw_ec, duration), UNIT, GOAL))

        rsa_generator = local_generator(state_path, "rsa-2048")
        rsa_ca = rsa_generator.authorities[CertKind.SERVER]

        def rsa_driver() -> object:
            return rsa_generator.issue("amp-1", CertKind.SERVER)

        def raw_rsa() -> bytes:
            return raw_issue(rsa_ca, "rsa-2048")

        name = "RSA-2048 local generator driver"
        rates = _paired_rates(name, rsa_driver, raw_rsa, duration)
        table.append(row(name, *rates, UNIT, "Octavia ~7.7/s"))
    return table


if __name__ == "__main__":
    print(format_table(rows(float(sys.argv[1]) if len(sys.argv) > 1 else 3.0)))
