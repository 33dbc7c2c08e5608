"""A local cache of verified images, bounded in size (``[image_cache]``).

Seed 001: an image downloaded once is not downloaded again, and the cache must not fill the
disk. Entries are keyed by image id and checksum, so a changed image is a different entry.
Only data that passed verification enters the cache: the data is written to a staging file while
it is verified and moved into place only if verification succeeded; a failed or interrupted
download leaves nothing behind.

A hit is re-checked cheaply before it is served: the data file must still have the size, inode
and modification time recorded when it was verified (any write, truncation or replacement
changes them) and the same first and last 64 KiB; the stored digest is returned so the caller
can re-verify the signature over it without reading the data. ``verify_on_hit`` re-hashes the
whole file as well.

Filling an entry does not wait for the data to reach the disk (the cache is as fast as the
hash, not as the disk): each entry records the boot it was filled in, and an entry filled before
the last restart, whose data a crash may have lost, is re-hashed in full once before it is served.
Where the boot id is unknown, the data is fsynced before the entry is made.

Concurrent requests for the same entry, from threads or processes, download it once: the first
holds the entry's lock (``flock``) while it fills the entry, the others wait and then hit.
Least-recently-used entries are evicted to keep the total under ``max_size``.

Layout: ``entries/<key>.img`` and ``entries/<key>.json``, ``staging/``, ``locks/<key>.lock``
(only while the entry is being filled) and ``locks/cache.lock``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, BinaryIO

from oslo_config import cfg
from oslo_log import log as logging

from keramos.framework.errors import ConfigError
from keramos.framework.files import write_atomic

LOG = logging.getLogger(__name__)

GROUP = "image_cache"

image_cache_opts = [
    cfg.StrOpt(
        "directory",
        default="$state_path/image_cache",
        help="Directory of the verified image cache (created 0700 if missing).",
    ),
    cfg.IntOpt(
        "max_size",
        default=10 * 1024**3,
        min=0,
        help="Most bytes of image data the cache keeps; least recently used images are "
        "evicted to stay under it. An image larger than this is verified but not kept.",
    ),
    cfg.BoolOpt(
        "verify_on_hit",
        default=False,
        help="Re-hash a cached image's whole data on every hit, on top of the cheap check of "
        "its size, inode and modification time.",
    ),
]


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """The options of the cache, for the sample-config generator."""
    return [(GROUP, list(image_cache_opts))]


_SAMPLE = 64 * 1024
_BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"


def _sample_digest(path: str, size: int) -> str:
    """SHA-256 of the first and last 64 KiB: catches truncation and damaged ends cheaply."""
    digest = hashlib.sha256(size.to_bytes(8, "big"))
    with open(path, "rb") as data_file:
        digest.update(data_file.read(_SAMPLE))
        if size > _SAMPLE:
            data_file.seek(max(_SAMPLE, size - _SAMPLE))
            digest.update(data_file.read(_SAMPLE))
    return digest.hexdigest()


def boot_id() -> str | None:
    """This boot's id (Linux), or None where the kernel does not tell it."""
    try:
        with open(_BOOT_ID_PATH, encoding="ascii") as boot_id_file:
            return boot_id_file.read().strip() or None
    except OSError:
        return None


def _touch(path: str) -> None:
    """Mark an entry used now: the metadata file's mtime is the LRU clock."""
    now = time.time_ns()
    with contextlib.suppress(FileNotFoundError):
        os.utime(path, ns=(now, now))


def checksum_of(properties: Mapping[str, str]) -> str:
    """The checksum that keys an image in the cache: the store's SHA-512 or MD5 checksum, or,
    for a store that records none, a hash of the signature (a new signature means new data)."""
    if properties.get("os_hash_value"):
        return f"{properties.get('os_hash_algo', 'sha512')}:{properties['os_hash_value']}"
    if properties.get("checksum"):
        return f"md5:{properties['checksum']}"
    signature = properties.get("img_signature", "")
    return "img_signature:" + hashlib.sha256(signature.encode()).hexdigest()


#: ``produce(target)`` writes verified data to ``target`` (a staging file open for reading and
#: writing) and returns what to record with it: at least ``digest`` (hex) and ``hash_method``.
#: It raises if the data does not verify.
Producer = Callable[[BinaryIO], Mapping[str, Any]]


class CacheEntryTooLarge(Exception):
    """The data written to a staging file exceeded ``max_size``; the entry was abandoned."""


class _BoundedFile:
    """A staging file that refuses to grow beyond the cache's size (for images of unknown size)."""

    def __init__(self, target: BinaryIO, limit: int) -> None:
        self._target = target
        self._limit = limit
        self._written = 0

    def write(self, data: bytes) -> int:
        self._written += len(data)
        if self._written > self._limit:
            raise CacheEntryTooLarge(f"more than {self._limit} bytes")
        return self._target.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


@dataclasses.dataclass(frozen=True)
class CachedImage:
    """A verified image in the cache."""

    image_id: str
    checksum: str
    path: str
    size: int
    digest: str
    hash_method: str
    details: dict[str, Any]


class VerifiedImageCache:
    """The verified image cache; safe to share between threads and processes."""

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        conf.register_opts(image_cache_opts, group=GROUP)
        group = conf[GROUP]
        self.directory = group.directory
        self.max_size = group.max_size
        self.verify_on_hit = group.verify_on_hit
        self._entries = os.path.join(self.directory, "entries")
        self._staging = os.path.join(self.directory, "staging")
        self._locks = os.path.join(self.directory, "locks")
        try:
            for path in (self.directory, self._entries, self._staging, self._locks):
                os.makedirs(path, mode=0o700, exist_ok=True)
        except OSError as error:
            raise ConfigError(f"[{GROUP}] directory {self.directory}: {error.strerror}") from error
        self._remove_orphaned_staging()

    @staticmethod
    def key(image_id: str, checksum: str) -> str:
        """The entry key of an image id and checksum (safe as a file name)."""
        return hashlib.sha256(f"{image_id}\0{checksum}".encode()).hexdigest()

    def _paths(self, key: str) -> tuple[str, str]:
        base = os.path.join(self._entries, key)
        return base + ".img", base + ".json"

    @contextlib.contextmanager
    def _locked(self, name: str, *, remove: bool = False) -> Iterator[None]:
        """Hold the lock file ``locks/<name>.lock``; with ``remove``, delete it when done.

        A lock file may be deleted by its holder, so a waiter that got the lock checks that its
        file is still the one at the path, and starts over on the new one if it is not.
        """
        path = os.path.join(self._locks, name + ".lock")
        while True:
            lock_file = open(path, "a+b")
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
            try:
                current = os.stat(path).st_ino == os.fstat(lock_file.fileno()).st_ino
            except FileNotFoundError:
                current = False
            if current:
                break
            lock_file.close()
        try:
            yield
        finally:
            if remove:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)
            lock_file.close()

    def get(self, image_id: str, checksum: str) -> CachedImage | None:
        """Return the cached, still intact image, or None (removing a damaged entry)."""
        key = self.key(image_id, checksum)
        data_path, meta_path = self._paths(key)
        try:
            with open(meta_path, encoding="utf-8") as meta_file:
                meta = json.load(meta_file)
            stat = os.stat(data_path)
            intact = (
                meta.get("image_id") == image_id
                and meta.get("checksum") == checksum
                and (stat.st_size, stat.st_ino, stat.st_mtime_ns)
                == (meta.get("size"), meta.get("inode"), meta.get("mtime_ns"))
                and _sample_digest(data_path, stat.st_size) == meta.get("sample_digest")
            )
            filled_before_boot = meta.get("boot_id") != boot_id()
            if intact and (self.verify_on_hit or filled_before_boot):
                intact = self._hash_file(data_path, meta.get("hashlib", "")) == meta.get("digest")
                if intact and filled_before_boot:
                    # The data survived the restart intact: trust it cheaply from now on.
                    meta["boot_id"] = boot_id()
                    write_atomic(meta_path, json.dumps(meta).encode(), 0o600)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, AttributeError) as error:
            LOG.warning("image cache entry %s is unreadable (%s); removing it", key, error)
            self._remove(key)
            return None
        if not intact:
            LOG.warning(
                "image cache entry for image %s changed since it was verified; removing it",
                image_id,
            )
            self._remove(key)
            return None
        _touch(meta_path)
        return CachedImage(
            image_id=image_id,
            checksum=checksum,
            path=data_path,
            size=stat.st_size,
            digest=meta["digest"],
            hash_method=meta["hash_method"],
            details=meta.get("details", {}),
        )

    @staticmethod
    def _hash_file(path: str, hashlib_name: str) -> str | None:
        try:
            digest = hashlib.new(hashlib_name)
        except ValueError:
            return None
        with open(path, "rb") as data_file:
            while chunk := data_file.read(1 << 20):
                digest.update(chunk)
        return digest.hexdigest()

    def fetch(self, image_id: str, checksum: str, produce: Producer) -> CachedImage | None:
        """Return the cached image, or fill the entry with ``produce`` and return it.

        Only one caller at a time fills a given entry; others wait and then get the hit. If
        ``produce`` raises, the partial data is removed and the error propagates; writing more
        than ``max_size`` bytes raises :class:`CacheEntryTooLarge` (the data was not all read,
        so it is not verified either).
        """
        key = self.key(image_id, checksum)
        # An entry's lock lives only while it is filled: a failed fill leaves nothing behind.
        with self._locked(key, remove=True):
            hit = self.get(image_id, checksum)
            if hit is not None:
                return hit
            return self._fill(key, image_id, checksum, produce)

    def _fill(
        self, key: str, image_id: str, checksum: str, produce: Producer
    ) -> CachedImage | None:
        handle, staging_path = tempfile.mkstemp(dir=self._staging, prefix=key[:16] + "-")
        try:
            with os.fdopen(handle, "w+b") as target:
                # Held until the data is committed: marks the staging file as in use.
                fcntl.flock(target.fileno(), fcntl.LOCK_EX)
                os.fchmod(target.fileno(), 0o600)
                recorded = dict(produce(_BoundedFile(target, self.max_size)))  # type: ignore[arg-type]
                target.flush()
                stat = os.fstat(target.fileno())
                if boot_id() is None:
                    os.fsync(target.fileno())
                self._commit(key, image_id, checksum, staging_path, stat, recorded)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staging_path)
        return self.get(image_id, checksum)

    def _commit(
        self,
        key: str,
        image_id: str,
        checksum: str,
        staging_path: str,
        stat: os.stat_result,
        recorded: dict[str, Any],
    ) -> None:
        with self._locked("cache"):
            self._evict_for(stat.st_size)
            data_path, meta_path = self._paths(key)
            meta = {
                "image_id": image_id,
                "checksum": checksum,
                "size": stat.st_size,
                "inode": stat.st_ino,
                "mtime_ns": stat.st_mtime_ns,
                "sample_digest": _sample_digest(staging_path, stat.st_size),
                "boot_id": boot_id(),
                "digest": recorded.pop("digest"),
                "hash_method": recorded.pop("hash_method"),
                "hashlib": recorded.pop("hashlib", ""),
                "details": recorded,
            }
            # Metadata first: a crash before the data moves leaves a miss, never a hit.
            write_atomic(meta_path, json.dumps(meta).encode(), 0o600)
            os.replace(staging_path, data_path)
            _touch(meta_path)

    def _remove_orphaned_staging(self) -> None:
        """Remove staging files that no process is writing (left by a crash)."""
        for name in os.listdir(self._staging):
            path = os.path.join(self._staging, name)
            try:
                with open(path, "rb") as staging_file:
                    fcntl.flock(staging_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    os.unlink(path)
            except (BlockingIOError, FileNotFoundError):
                continue

    def _entries_by_age(self) -> list[tuple[int, str, int]]:
        entries = []
        for name in os.listdir(self._entries):
            if not name.endswith(".json"):
                continue
            key = name[: -len(".json")]
            data_path, meta_path = self._paths(key)
            try:
                last_used = os.stat(meta_path).st_mtime_ns
                size = os.stat(data_path).st_size
            except FileNotFoundError:
                continue
            entries.append((last_used, key, size))
        return sorted(entries)

    def total_size(self) -> int:
        """Bytes of image data in the cache."""
        return sum(size for _, _, size in self._entries_by_age())

    def _evict_for(self, incoming: int) -> None:
        entries = self._entries_by_age()
        total = sum(size for _, _, size in entries)
        for _, key, size in entries:
            if total + incoming <= self.max_size:
                break
            LOG.info("evicting image cache entry %s (%d bytes) to make room", key, size)
            self._remove(key)
            total -= size

    def evict(self, image_id: str, checksum: str) -> None:
        """Remove an entry; a missing entry is not an error."""
        self._remove(self.key(image_id, checksum))

    def _remove(self, key: str) -> None:
        for path in self._paths(key)[::-1]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
