"""``keramos ca init``: create the dual CA (a server CA and a client CA) in one command.

This replaces the page of hand-run openssl commands Octavia operators follow. The CA passphrase
is read from ``--passphrase-file``, the ``KERAMOS_CA_PASSPHRASE`` environment variable or the
configuration file (``[certificates] ca_passphrase_file`` / ``ca_passphrase``), in that order;
never from a command-line argument, where any user of the host could read it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os

from oslo_config import cfg

from keramos.framework.errors import ConfigError

PASSPHRASE_ENV = "KERAMOS_CA_PASSPHRASE"

_PASSPHRASE_HELP = (
    "file holding the CA passphrase (default: $KERAMOS_CA_PASSPHRASE, then [certificates] "
    "ca_passphrase_file or ca_passphrase of the configuration file)"
)


def add_passphrase_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--passphrase-file`` (the only way to give the passphrase on the command line)."""
    parser.add_argument("--passphrase-file", metavar="PATH", help=_PASSPHRASE_HELP)


def add_dir_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--dir``, the CA directory (default: ``[certificates] ca_dir``)."""
    parser.add_argument(
        "--dir",
        metavar="DIR",
        help="CA directory (default: [certificates] ca_dir of the configuration file)",
    )


def certificates_conf(args: argparse.Namespace) -> cfg.ConfigOpts:
    """The configuration with ``[certificates]`` registered, ``ca_dir`` set from ``--dir``."""
    from keramos.framework.pki.options import register_opts

    conf = args.conf()
    register_opts(conf)
    if getattr(args, "dir", None):
        conf.set_override("ca_dir", os.path.abspath(args.dir), group="certificates")
    return conf


def resolve_passphrase(args: argparse.Namespace, conf: cfg.ConfigOpts) -> bytes:
    """The CA passphrase: ``--passphrase-file``, then the environment, then the configuration."""
    from keramos.framework.pki.options import configured_passphrase, read_passphrase_file

    if getattr(args, "passphrase_file", None):
        return read_passphrase_file(args.passphrase_file)
    from_env = os.environ.get(PASSPHRASE_ENV)
    if from_env:
        return from_env.encode()
    from_conf = configured_passphrase(conf)
    if from_conf:
        return from_conf
    raise ConfigError(
        f"no CA passphrase: give --passphrase-file, set {PASSPHRASE_ENV}, or set "
        "[certificates] ca_passphrase_file in the configuration file"
    )


def _init(args: argparse.Namespace) -> int:
    from keramos.framework.pki.ca import create_dual_ca

    conf = certificates_conf(args)
    passphrase = resolve_passphrase(args, conf)
    validity_days = args.validity_days or conf.certificates.ca_validity_days
    authorities = create_dual_ca(
        conf.certificates.ca_dir,
        passphrase,
        key_type=args.key_type or conf.certificates.key_type,
        validity=dt.timedelta(days=validity_days),
        force=args.force,
    )
    for kind, authority in authorities.items():
        print(
            f"{kind} CA: {authority.certificate.subject.rfc4514_string()}, valid until "
            f"{authority.certificate.not_valid_after_utc.isoformat()}"
        )
    print(
        f"written to {conf.certificates.ca_dir}: server_ca.pem, client_ca.pem (share these), "
        "server_ca_key.pem, client_ca_key.pem (encrypted, 0600; keep these private)"
    )
    return 0


def _init_proxy(args: argparse.Namespace) -> int:
    from keramos.framework.pki.ca import create_proxy_ca

    conf = certificates_conf(args)
    authority = create_proxy_ca(
        conf.certificates.ca_dir,
        resolve_passphrase(args, conf),
        key_type=args.key_type or conf.certificates.key_type,
        validity=dt.timedelta(days=args.validity_days or conf.certificates.ca_validity_days),
        force=args.force,
    )
    print(
        f"proxy CA: {authority.certificate.subject.rfc4514_string()}, valid until "
        f"{authority.certificate.not_valid_after_utc.isoformat()}"
    )
    print(
        f"written to {conf.certificates.ca_dir}: proxy_ca.pem (share it with proxies and "
        "controllers), proxy_ca_key.pem (encrypted, 0600; keep it private)"
    )
    return 0


def _register_proxy_commands(ca_commands: argparse._SubParsersAction, key_types: tuple[str, ...]) -> None:
    init = ca_commands.add_parser(
        "init-proxy",
        allow_abbrev=False,
        help="create the proxy CA (a third CA, for keramos-proxy and the controllers using it; "
        "'keramos cert issue-proxy' issues its certificates)",
        description="Create the proxy CA in DIR: proxy_ca.pem (public) and proxy_ca_key.pem "
        "(encrypted with the CA passphrase, mode 0600). It signs proxies' server certificates "
        "and controllers' client certificates for proxies, never an amphora's.",
    )
    add_dir_argument(init)
    init.add_argument("--key-type", choices=key_types, help="key type (default: [certificates] key_type)")
    init.add_argument("--validity-days", type=int, metavar="DAYS", help="days the CA is valid")
    init.add_argument("--force", action="store_true", help="replace an existing proxy CA")
    add_passphrase_argument(init)
    init.set_defaults(func=_init_proxy)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``keramos ca``."""
    from keramos.framework.pki.keys import KEY_TYPES

    ca_parser = subparsers.add_parser(
        "ca",
        help="manage the controller's certificate authorities",
        description="Manage the two CAs of the controller: the server CA signs the amphora "
        "agents' certificates, the client CA the controller's; a stolen amphora certificate "
        "therefore controls nothing else.",
    )
    ca_commands = ca_parser.add_subparsers(dest="ca_command", metavar="ACTION", required=True)
    init = ca_commands.add_parser(
        "init",
        allow_abbrev=False,
        help="create the server CA and the client CA",
        description="Create the server CA and the client CA in DIR: server_ca.pem and "
        "client_ca.pem (public), server_ca_key.pem and client_ca_key.pem (encrypted with the CA "
        "passphrase, mode 0600). Refuses to replace an existing CA unless --force is given.",
        epilog=f"The passphrase comes from --passphrase-file, ${PASSPHRASE_ENV} or the "
        "configuration file, in that order; it is never a command-line argument.",
    )
    add_dir_argument(init)
    init.add_argument(
        "--key-type",
        choices=KEY_TYPES,
        help="key type of both CAs (default: [certificates] key_type, ec-p256)",
    )
    init.add_argument(
        "--validity-days",
        type=int,
        metavar="DAYS",
        help="days the CAs are valid (default: [certificates] ca_validity_days, 3650)",
    )
    init.add_argument(
        "--force",
        action="store_true",
        help="replace an existing CA; every certificate it issued stops verifying",
    )
    add_passphrase_argument(init)
    init.set_defaults(func=_init)
    _register_proxy_commands(ca_commands, KEY_TYPES)
