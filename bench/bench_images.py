"""Benchmark: image signature verification against ``openssl dgst``, and memory while verifying.

Rows, each measured in the same run against openssl on the same file:

1. RSA-PSS/SHA-256 and 2. ECDSA P-384/SHA-384 through the verifier (the ``file`` image store's
   chunks through :class:`StreamingVerifier`) against ``openssl dgst -verify`` (MiB/s);
3. RSA-PSS/SHA-256 through the whole ``verify_image`` flow (``InProcessWorker.run``: key
   manager, certificate validation, state store, and the copy into the verified image cache,
   fsynced) against ``openssl dgst -verify`` (MiB/s);
4. peak RSS of a worker process (``InProcessWorker``) verifying a larger image (4 GiB by default,
   a sparse file) through the flow, against the peak RSS of ``openssl dgst -verify`` on it (MiB);
5. how much the verification itself added to that worker's peak RSS (MiB).

``python bench/bench_images.py [--size MIB] [--rss-size MIB] [--repeats N]``; progress goes to
stderr, the table to stdout. Files go to a temporary directory that is removed at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from keramos.framework.config import make_conf
from keramos.framework.images import signature
from keramos.framework.images.certificate_validation import load_certificates
from keramos.plugins.images.file_store import FileImageStore

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import format_table, row  # noqa: E402

MIB = 1024 * 1024
TIME = "/usr/bin/time"
OPENSSL_OPTIONS = {
    "RSA-PSS": ["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:auto"],
    "ECC_SECP384R1": [],
}


def _progress(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


class Workspace:
    """A temporary directory with a file image store, a key manager and a trusted signer."""

    def __init__(self, directory: Path, certificates: dict[str, bytes], keys: dict) -> None:
        self.directory = directory
        self.images = directory / "images"
        self.config = directory / "keramos.conf"
        self.certificates = certificates
        self.keys = keys

    @classmethod
    def create(cls, directory: Path) -> Workspace:
        """Generate the signing keys and certificates and write the configuration."""
        (directory / "images").mkdir()
        keys = {
            "RSA-PSS": rsa.generate_private_key(65537, 3072),
            "ECC_SECP384R1": ec.generate_private_key(ec.SECP384R1()),
        }
        certificates = {kind: cls._self_signed(key) for kind, key in keys.items()}
        (directory / "trusted.pem").write_bytes(b"".join(certificates.values()))
        (directory / "certificates.json").write_text(
            json.dumps({kind: pem.decode() for kind, pem in certificates.items()})
        )
        (directory / "keramos.conf").write_text(
            f"[DEFAULT]\nstate_path = {directory / 'state'}\n"
            f"[file_image_store]\ndirectory = {directory / 'images'}\n"
        )
        return cls(directory, certificates, keys)

    @classmethod
    def open(cls, directory: Path) -> Workspace:
        """The workspace :meth:`create` made, without the private keys (for child processes)."""
        stored = json.loads((directory / "certificates.json").read_text())
        return cls(directory, {kind: pem.encode() for kind, pem in stored.items()}, {})

    @staticmethod
    def _self_signed(key: Any) -> bytes:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench image signer")])
        now = dt.datetime.now(dt.timezone.utc)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA384())
        )
        return certificate.public_bytes(serialization.Encoding.PEM)

    def public_key_file(self, key_type: str) -> str:
        """Write the public key of ``key_type`` for openssl; return its path."""
        path = self.directory / f"{key_type}.pub.pem"
        path.write_bytes(
            self.keys[key_type]
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        return str(path)

    def add_image(
        self, image_id: str, size: int, key_type: str, hash_method: str, *, sparse: bool = False
    ) -> Path:
        """Write an image of ``size`` bytes into the store, sign it, record its properties."""
        path = self.images / image_id
        with open(path, "wb") as image:
            if sparse:
                image.truncate(size)
            else:
                block = os.urandom(MIB)
                for _ in range(size // MIB):
                    image.write(block)
                image.write(block[: size % MIB])
        store = self.store()
        spec = signature.sign_chunks(
            store.chunks(image_id, MIB),
            self.keys[key_type],
            certificate_uuid=key_type_uuid(key_type),
            hash_method=hash_method,
        )
        (self.images / f"{image_id}.json").write_text(
            json.dumps({"size": size, **spec.to_properties()})
        )
        (self.directory / f"{image_id}.sig").write_bytes(spec.signature)
        return path

    def store(self) -> FileImageStore:
        """The file image store over :attr:`images`."""
        return FileImageStore(make_conf(["--config-file", str(self.config)], config_files=[]))


def key_type_uuid(key_type: str) -> str:
    """A fixed certificate uuid per key type."""
    return {
        "RSA-PSS": "00000000-0000-4000-8000-000000000001",
        "ECC_SECP384R1": "00000000-0000-4000-8000-000000000384",
    }[key_type]


def openssl_command(workspace: Workspace, image_id: str, key_type: str, hash_method: str):
    """``openssl dgst -verify`` of the image's signature, as an argument list."""
    return [
        "openssl", "dgst", "-" + hash_method.replace("-", "").lower(),
        *OPENSSL_OPTIONS[key_type],
        "-verify", workspace.public_key_file(key_type),
        "-signature", str(workspace.directory / f"{image_id}.sig"),
        str(workspace.images / image_id),
    ]  # fmt: skip


def time_openssl(command: list[str]) -> float:
    """Seconds ``openssl dgst -verify`` takes; raises if it does not verify."""
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0 or "Verified OK" not in done.stdout:
        raise RuntimeError(f"openssl did not verify: {done.stdout} {done.stderr}")
    return elapsed


def time_verifier(workspace: Workspace, image_id: str, key_type: str) -> float:
    """Seconds the file store plus streaming verifier take over the image."""
    store = workspace.store()
    public_key = load_certificates(workspace.certificates[key_type])[0].public_key()
    start = time.perf_counter()
    properties = store.properties(image_id)
    spec = signature.parse_signature_properties(properties)
    verifier = signature.StreamingVerifier(
        spec, public_key, expected_size=int(properties["size"])
    )
    verifier.verify_stream(store.chunks(image_id, MIB))
    return time.perf_counter() - start


def best_throughputs(size: int, repeats: int, keramos, raw) -> tuple[float, float]:
    """Best MiB/s of each side over ``repeats`` alternating runs (after one warm-up each)."""
    raw()
    keramos()
    keramos_best = raw_best = float("inf")
    for _ in range(repeats):
        raw_best = min(raw_best, raw())
        keramos_best = min(keramos_best, keramos())
    return size / MIB / keramos_best, size / MIB / raw_best


def _worker(workspace: Workspace, cache_size: int):
    from keramos.flows.images import VerifyImage
    from keramos.framework.images.cache import image_cache_opts
    from keramos.framework.images.certificate_validation import register_opts
    from keramos.framework.testing import InProcessWorker
    from keramos.plugins.images.key_managers import LocalKeyManager

    worker = InProcessWorker(
        flows=[VerifyImage],
        conf_overrides={"drivers": {"flows": ["verify_image"]}},
        state_path=workspace.directory / "state",
        image_store=lambda conf: _configured(conf, workspace, FileImageStore),
        key_manager=lambda conf: _configured(conf, workspace, LocalKeyManager),
    ).start()
    register_opts(worker.conf)
    worker.conf.register_opts(image_cache_opts, group="image_cache")
    worker.conf.set_override("max_size", cache_size, group="image_cache")
    worker.conf.set_override(
        "trusted_ca_file", str(workspace.directory / "trusted.pem"), group="image_verification"
    )
    for key_type, pem in workspace.certificates.items():
        worker.drivers.key_manager.write(key_type_uuid(key_type), pem)
    return worker


def _configured(conf, workspace: Workspace, driver_class):
    from keramos.plugins.images.file_store import file_image_store_opts

    conf.register_opts(file_image_store_opts, group="file_image_store")
    conf.set_override("directory", str(workspace.images), group="file_image_store")
    return driver_class(conf)


def time_flow(worker, image_id: str) -> float:
    """Seconds one ``verify_image`` run takes, its cache entry evicted first."""
    from keramos.framework.images.cache import VerifiedImageCache, checksum_of

    properties = worker.drivers.image_store.properties(image_id)
    VerifiedImageCache(worker.conf).evict(image_id, checksum_of(properties))
    start = time.perf_counter()
    result = worker.run("verify_image", {"image_id": image_id})
    elapsed = time.perf_counter() - start
    if result["image"]["status"] != "active":
        raise RuntimeError(f"verify_image did not succeed: {result}")
    return elapsed


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_child(directory: str, image_id: str, mode: str) -> None:
    """In a child process: verify ``image_id``; print the peak RSS before and after (MiB).

    ``mode`` ``worker`` runs the verify_image flow in an in-process worker; ``verifier`` streams
    the file store's chunks through the verifier in a process that imports nothing else.
    """
    workspace = Workspace.open(Path(directory))
    if mode == "verifier":
        before = _peak_rss_mib()
        time_verifier(workspace, image_id, "RSA-PSS")
        print(json.dumps({"before": before, "after": _peak_rss_mib()}))
        return
    worker = _worker(workspace, cache_size=1)
    try:
        before = _peak_rss_mib()
        result = worker.run("verify_image", {"image_id": image_id})
        if result["image"]["status"] != "active":
            raise RuntimeError(f"verify_image did not succeed: {result}")
        print(json.dumps({"before": before, "after": _peak_rss_mib()}))
    finally:
        worker.stop()


def peak_rss_mib(command: list[str]) -> tuple[float, str]:
    """Peak RSS (MiB) of ``command`` as ``/usr/bin/time`` reports it, and its stdout.

    ``/usr/bin/time`` forks a small process before exec, so the figure is the command's own
    (a child forked from this Python process would inherit this process's peak).
    """
    if not os.path.exists(TIME):
        raise RuntimeError(f"{TIME} is needed to measure peak RSS (apt-get install time)")
    done = subprocess.run([TIME, "-f", "%M", *command], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} failed: {done.stderr[-2000:]}")
    return int(done.stderr.strip().splitlines()[-1]) / 1024, done.stdout


def rows(size_mib: int = 1024, rss_size_mib: int = 4096, repeats: int = 3) -> list[dict]:
    """The benchmark rows; ``size_mib`` for throughput, ``rss_size_mib`` for memory."""
    size = size_mib * MIB
    table = []
    with tempfile.TemporaryDirectory(prefix="keramos-bench-images-") as directory:
        workspace = Workspace.create(Path(directory))
        cases = [("RSA-PSS", "SHA-256", "rsa"), ("ECC_SECP384R1", "SHA-384", "ecdsa")]
        for key_type, hash_method, image_id in cases:
            _progress(f"writing and signing a {size_mib} MiB image ({key_type}/{hash_method})")
            workspace.add_image(image_id, size, key_type, hash_method)
            command = openssl_command(workspace, image_id, key_type, hash_method)
            keramos, raw = best_throughputs(
                size,
                repeats,
                lambda i=image_id, k=key_type: time_verifier(workspace, i, k),
                lambda c=command: time_openssl(c),
            )
            _progress(f"verifier {keramos:.0f} MiB/s, openssl {raw:.0f} MiB/s")
            table.append(
                row(f"verify {size_mib} MiB {key_type}/{hash_method}: verifier vs openssl dgst",
                    keramos, raw, "MiB/s", ">= 0.9")
            )  # fmt: skip
        command = openssl_command(workspace, "rsa", "RSA-PSS", "SHA-256")
        flows = [
            (2 * size, "verify_image flow, copied into the cache"),
            (size // 2, "verify_image flow, larger than the cache"),
        ]
        for cache_size, label in flows:
            worker = _worker(workspace, cache_size=cache_size)
            try:
                keramos, raw = best_throughputs(
                    size, repeats, lambda w=worker: time_flow(w, "rsa"), lambda: time_openssl(command)
                )
            finally:
                worker.stop()
            shutil.rmtree(workspace.directory / "state", ignore_errors=True)
            _progress(f"{label}: {keramos:.0f} MiB/s, openssl {raw:.0f} MiB/s")
            table.append(
                row(f"verify {size_mib} MiB RSA-PSS/SHA-256: {label}",
                    keramos, raw, "MiB/s", ">= 0.9")
            )  # fmt: skip
        for image_id in ("rsa", "ecdsa"):
            for path in workspace.images.glob(f"{image_id}*"):
                path.unlink()
        shutil.rmtree(workspace.directory / "state" / "image_cache", ignore_errors=True)
        table += _rss_rows(workspace, rss_size_mib)
    return table


def _rss_rows(workspace: Workspace, rss_size_mib: int) -> list[dict]:
    _progress(f"writing and signing a sparse {rss_size_mib} MiB image")
    workspace.add_image("large", rss_size_mib * MIB, "RSA-PSS", "SHA-256", sparse=True)
    raw, _ = peak_rss_mib(openssl_command(workspace, "large", "RSA-PSS", "SHA-256"))
    table = []
    for mode, label in (("verifier", "verifier process"), ("worker", "worker, verify_image flow")):
        peak, output = peak_rss_mib(
            [sys.executable, __file__, "--rss-child", str(workspace.directory), "large", mode]
        )
        measured = json.loads(output.strip().splitlines()[-1])
        added = measured["after"] - measured["before"]
        _progress(f"{label}: peak RSS {peak:.1f} MiB, {added:.1f} MiB added by verifying")
        table += [
            row(f"peak RSS verifying {rss_size_mib} MiB: {label} vs openssl dgst",
                peak, raw, "MiB", "< 100 MiB"),
            row(f"peak RSS added by the verification itself ({label})",
                added, raw, "MiB", "flat"),
        ]  # fmt: skip
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, metavar="MIB", help="throughput image")
    parser.add_argument("--rss-size", type=int, default=4096, metavar="MIB", help="memory image")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side")
    parser.add_argument("--rss-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_child:
        rss_child(*args.rss_child)
        return 0
    print(format_table(rows(args.size, args.rss_size, args.repeats)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
