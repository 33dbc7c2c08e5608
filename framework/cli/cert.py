"""``keramos cert``: issue, list and revoke certificates of the dual CA from the command line.

``issue`` writes a certificate and its key for a peer (typically the controller's client
certificate); ``list`` shows what the state store records; ``revoke`` runs the
``revoke_certificate`` flow in this process, which records the revocation and publishes the CRL.
Issued certificates are recorded in the state store of the configuration (``[drivers]
state_store``), so that they can be listed and revoked later.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
from typing import TYPE_CHECKING

from keramos.framework.cli.ca import (
    PASSPHRASE_ENV,
    add_dir_argument,
    add_passphrase_argument,
    certificates_conf,
    resolve_passphrase,
)
from keramos.framework.cli.progress import print_table
from keramos.framework.errors import ConfigError

if TYPE_CHECKING:
    from oslo_config import cfg

    from keramos.framework.contracts import CertGenerator, IssuedCertificate

#: The ``keramos.cert_generator`` entry point these commands drive: the dual CA of ``--dir``.
LOCAL_GENERATOR = "local"


def _generator(args: argparse.Namespace) -> tuple[cfg.ConfigOpts, CertGenerator]:
    from keramos.framework.contracts import CertKind
    from keramos.framework.loader import load_driver_class

    conf = certificates_conf(args)
    if getattr(args, "key_type", None):
        conf.set_override("key_type", args.key_type, group="certificates")
    generator_class = load_driver_class("cert_generator", LOCAL_GENERATOR)
    return conf, generator_class(
        conf,
        passphrase=resolve_passphrase(args, conf),
        first_kind=getattr(args, "kind", None) or CertKind.SERVER,
    )


def _leaf_paths(args: argparse.Namespace) -> tuple[str, str, str]:
    """``OUT``, ``OUT/cert.pem`` and ``OUT/key.pem``, refusing to overwrite without --force."""
    out = os.path.abspath(args.out)
    cert_path, key_path = os.path.join(out, "cert.pem"), os.path.join(out, "key.pem")
    existing = [path for path in (cert_path, key_path) if os.path.exists(path)]
    if existing and not args.force:
        raise ConfigError(f"refusing to overwrite {', '.join(existing)}; use --force to replace")
    return out, cert_path, key_path


def _write_leaf(out: str, cert_path: str, key_path: str, issued: IssuedCertificate) -> None:
    """Write the certificate (0644) and its key (0600), both or neither."""
    from keramos.framework.files import PRIVATE_MODE, PUBLIC_MODE, write_all_atomic

    try:
        os.makedirs(out, mode=0o700, exist_ok=True)
        write_all_atomic(
            {
                cert_path: (issued.certificate_pem, PUBLIC_MODE),
                key_path: (issued.private_key_pem or b"", PRIVATE_MODE),
            }
        )
    except OSError as error:
        raise ConfigError(f"cannot write to {out}: {error.strerror}") from None


def _issue_proxy(args: argparse.Namespace) -> int:
    from keramos.framework.pki.ca import issue_proxy_certificate

    out, cert_path, key_path = _leaf_paths(args)
    conf = certificates_conf(args)
    issued = issue_proxy_certificate(
        conf.certificates.ca_dir,
        resolve_passphrase(args, conf),
        args.cn,
        args.role,
        ip_addresses=args.ip or (),
        validity=dt.timedelta(days=args.validity_days or conf.certificates.validity_days),
        key_type=args.key_type or conf.certificates.key_type,
    )
    _write_leaf(out, cert_path, key_path, issued)
    until = issued.not_after.isoformat()
    print(f"proxy {args.role} certificate {issued.serial} for {issued.subject}, valid until {until}")
    print(f"written: {cert_path}, {key_path} (mode 0600)")
    return 0


def _issue(args: argparse.Namespace) -> int:
    from keramos.framework.loader import load_state_store
    from keramos.framework.records import CertificateRecord

    out, cert_path, key_path = _leaf_paths(args)
    conf, generator = _generator(args)
    validity = dt.timedelta(days=args.validity_days) if args.validity_days else None
    issued = generator.issue(args.cn, args.kind, ip_addresses=args.ip or (), validity=validity)
    state_store = load_state_store(conf)
    try:
        state_store.save(
            CertificateRecord(
                serial=issued.serial,
                kind=issued.kind,
                subject=issued.subject,
                not_after=issued.not_after,
            )
        )
        try:
            _write_leaf(out, cert_path, key_path, issued)
        except ConfigError:
            state_store.delete(CertificateRecord, issued.serial)
            raise
    finally:
        state_store.close()
    print(f"{issued.kind} certificate {issued.serial} for {issued.subject}, valid until {issued.not_after.isoformat()}")
    print(f"written: {cert_path}, {key_path} (mode 0600)")
    return 0


def _list(args: argparse.Namespace) -> int:
    from keramos.framework.loader import load_state_store
    from keramos.framework.records import CertificateRecord

    conf = certificates_conf(args)
    state_store = load_state_store(conf)
    try:
        filters = {name: getattr(args, name) for name in ("kind", "status") if getattr(args, name)}
        records = state_store.find(CertificateRecord, **filters)
    finally:
        state_store.close()
    if not records:
        print("no certificates recorded")
        return 0
    header = ("SERIAL", "KIND", "SUBJECT", "NOT AFTER", "STATUS", "AMPHORA")
    rows = [
        (
            r.serial,
            r.kind,
            r.subject,
            r.not_after.strftime("%Y-%m-%d %H:%M"),
            r.status,
            r.amphora_id or "-",
        )
        for r in records
    ]
    print_table(header, rows)
    return 0


def _revoke(args: argparse.Namespace) -> int:
    from keramos.framework.cli.run import run_here

    conf, generator = _generator(args)
    serial = args.serial.lower()
    result = run_here(
        conf, "revoke_certificate", {"serial": serial}, quiet=True, cert_generator=generator
    )
    if result is None:
        return 1
    kind = result["kind"]
    print(f"revoked {serial}; {kind} CRL published to {generator.crl_location(kind)}")
    return 0


def _add_leaf_arguments(parser: argparse.ArgumentParser, key_types: tuple[str, ...]) -> None:
    """The options every issuing command takes: CA directory, IPs, output, validity, key type."""
    add_dir_argument(parser)
    parser.add_argument(
        "--ip",
        action="append",
        metavar="IP",
        help="IP address added to the subject alternative names (repeatable)",
    )
    parser.add_argument(
        "--out",
        required=True,
        metavar="OUT",
        help="directory to write cert.pem and key.pem to (created if missing)",
    )
    parser.add_argument(
        "--validity-days",
        type=int,
        metavar="DAYS",
        help="days the certificate is valid (default: [certificates] validity_days)",
    )
    parser.add_argument("--key-type", choices=key_types, help="key type (default: [certificates] key_type, ec-p256)")
    parser.add_argument("--force", action="store_true", help="replace OUT/cert.pem and OUT/key.pem")
    add_passphrase_argument(parser)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``keramos cert``."""
    from keramos.framework.contracts import CertKind
    from keramos.framework.pki.keys import KEY_TYPES

    cert_parser = subparsers.add_parser(
        "cert",
        help="issue, list and revoke certificates",
        description="Issue, list and revoke certificates signed by the CAs 'keramos ca init' "
        "created. Server certificates (amphora agents) come from the server CA, client "
        "certificates (the controller) from the client CA.",
        epilog=f"The CA passphrase comes from --passphrase-file, ${PASSPHRASE_ENV} or the "
        "configuration file, in that order; it is never a command-line argument.",
    )
    commands = cert_parser.add_subparsers(dest="cert_command", metavar="ACTION", required=True)

    issue = commands.add_parser(
        "issue",
        allow_abbrev=False,
        help="issue a certificate and its key into a directory",
        description="Generate a key and a certificate for NAME (CN and SAN) signed by the server "
        "or client CA; write OUT/cert.pem and OUT/key.pem (mode 0600) and record the "
        "certificate in the state store.",
    )
    issue.add_argument(
        "--kind",
        required=True,
        choices=CertKind.ALL,
        help="server: signed by the server CA, for serverAuth (amphora agents); "
        "client: signed by the client CA, for clientAuth (the controller)",
    )
    issue.add_argument(
        "--cn",
        required=True,
        metavar="NAME",
        help="common name, also the DNS subject alternative name",
    )
    _add_leaf_arguments(issue, KEY_TYPES)
    issue.set_defaults(func=_issue)

    issue_proxy = commands.add_parser(
        "issue-proxy",
        allow_abbrev=False,
        help="issue a certificate of the proxy CA and its key into a directory",
        description="Generate a key and a certificate for NAME signed by the proxy CA ('keramos "
        "ca init-proxy'): --role server for a keramos-proxy (name it keramos-proxy, the name "
        "controllers check by default), --role client for a controller reaching amphorae "
        "through proxies. Writes OUT/cert.pem and OUT/key.pem (mode 0600).",
    )
    issue_proxy.add_argument(
        "--role", required=True, choices=("server", "client"), help="serverAuth or clientAuth"
    )
    issue_proxy.add_argument("--cn", required=True, metavar="NAME", help="common name and DNS name")
    _add_leaf_arguments(issue_proxy, KEY_TYPES)
    issue_proxy.set_defaults(func=_issue_proxy)

    listing = commands.add_parser(
        "list",
        help="list the certificates the state store records",
        description="List recorded certificates, oldest first: serial, kind, subject, expiry, "
        "status (active, superseded, revoked) and amphora.",
    )
    listing.add_argument("--kind", choices=CertKind.ALL, help="only this kind")
    listing.add_argument(
        "--status",
        choices=("active", "superseded", "revoked"),
        help="only certificates in this status",
    )
    listing.set_defaults(func=_list)

    revoke = commands.add_parser(
        "revoke",
        allow_abbrev=False,
        help="revoke a certificate and publish its CA's CRL",
        description="Record the certificate with serial SERIAL as revoked and publish the CRL "
        "of the CA that issued it (DIR/server_ca_crl.pem or DIR/client_ca_crl.pem), which "
        "'openssl verify -crl_check' and TLS peers use to refuse it.",
    )
    revoke.add_argument("serial", metavar="SERIAL", help="serial number, hexadecimal (see 'cert list')")
    add_dir_argument(revoke)
    add_passphrase_argument(revoke)
    revoke.set_defaults(func=_revoke)
