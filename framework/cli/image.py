"""``keramos image sign`` and ``keramos image verify``: Glance-style image signatures.

``sign`` prints the Glance properties of a signed image (so operators need not script openssl);
``verify`` runs the ``verify_image`` flow in this process with the configured drivers.
"""

from __future__ import annotations

import argparse
import json
import uuid
from collections.abc import Iterator

from cryptography.hazmat.primitives import serialization

from keramos.framework.errors import ConfigError
from keramos.framework.images import signature


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "image",
        help="sign images and verify their signatures (Glance image signing)",
        description="Sign an image the way Glance verifies it, or verify an image's signature "
        "and signing certificate with the verify_image flow.",
    )
    commands = parser.add_subparsers(dest="image_command", metavar="ACTION", required=True)

    sign = commands.add_parser(
        "sign",
        help="print the Glance signature properties of an image file",
        description="Hash FILE once and sign the digest with KEY; print the image properties "
        "(img_signature, img_signature_hash_method, img_signature_key_type, "
        "img_signature_certificate_uuid and, for RSA, mask_gen_algorithm) as JSON.",
    )
    sign.add_argument("file", metavar="FILE", help="the image file")
    sign.add_argument("--key", required=True, metavar="KEY", help="private key, PEM")
    sign.add_argument(
        "--cert-uuid",
        required=True,
        type=_certificate_uuid,
        metavar="UUID",
        help="uuid of the signing certificate in the key manager "
        "(e.g. 3d3e1a4c-6a1f-4f0b-9d53-2f8e2b7c9a10)",
    )
    sign.add_argument(
        "--hash", default="SHA-256", choices=tuple(signature.HASH_METHODS), help="hash method"
    )
    sign.add_argument(
        "--key-type",
        choices=signature.KEY_TYPES,
        help="expected key type (default: the key's own; RSA keys sign with RSA-PSS)",
    )
    sign.add_argument(
        "--salt-length",
        type=int,
        metavar="N",
        help="RSA-PSS salt length, recorded as pss_salt_length (default: maximum, unrecorded)",
    )
    sign.add_argument(
        "--key-password-file",
        metavar="PATH",
        help="file holding the passphrase of an encrypted key",
    )
    sign.set_defaults(func=sign_image)

    verify = commands.add_parser(
        "verify",
        help="verify an image with the verify_image flow, in this process",
        description="Run the verify_image flow for IMAGE_ID with the configured image store, "
        "key manager and trusted CAs; the image ends active, or killed with the reason.",
    )
    verify.add_argument("image_id", metavar="IMAGE_ID", help="the image to verify")
    verify.add_argument("--quiet", action="store_true", help="print only the result")
    verify.set_defaults(func=verify_image)


def _certificate_uuid(text: str) -> str:
    """The canonical form of a certificate uuid: key managers keep certificates by uuid, so an
    image signed with anything else could never be verified."""
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a uuid (8-4-4-4-12 hexadecimal digits): give the uuid the key "
            "manager keeps the signing certificate under"
        ) from None


def _read_chunks(path: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    with open(path, "rb") as image_file:
        while chunk := image_file.read(chunk_size):
            yield chunk


def _load_key(path: str, password_file: str | None):
    try:
        with open(path, "rb") as key_file:
            key_data = key_file.read()
        password = None
        if password_file:
            with open(password_file, "rb") as secret_file:
                password = secret_file.read().rstrip(b"\r\n")
    except OSError as error:
        raise ConfigError(f"{error.filename}: {error.strerror}") from error
    try:
        return serialization.load_pem_private_key(key_data, password)
    except TypeError as error:
        raise ConfigError(f"{path}: {error} (use --key-password-file)") from error
    except ValueError as error:
        raise ConfigError(f"{path}: not a usable PEM private key: {error}") from error


def sign_image(args: argparse.Namespace) -> int:
    """Print the Glance signature properties of ``args.file``."""
    key = _load_key(args.key, args.key_password_file)
    key_type = signature.key_type_of(key)
    if args.key_type and args.key_type != key_type:
        raise ConfigError(f"--key-type {args.key_type} does not match the key ({key_type})")
    if args.salt_length is not None and key_type != signature.RSA_PSS:
        raise ConfigError("--salt-length applies to RSA keys only")
    try:
        spec = signature.sign_chunks(
            _read_chunks(args.file),
            key,
            certificate_uuid=args.cert_uuid,
            hash_method=args.hash,
            salt_length=args.salt_length,
        )
    except OSError as error:
        raise ConfigError(f"{args.file}: {error.strerror}") from error
    print(json.dumps(spec.to_properties(), indent=2, sort_keys=True))
    return 0


def verify_image(args: argparse.Namespace) -> int:
    """Run the verify_image flow for ``args.image_id`` through ``keramos run``."""
    from keramos.framework.cli.run import run

    args.flow = "verify_image"
    args.payload = json.dumps({"image_id": args.image_id})
    args.store = None
    return run(args)
