"""The verified image cache: keys, LRU eviction, damaged entries, one download at a time."""

from __future__ import annotations

import fcntl
import hashlib
import multiprocessing
import os
import threading
import time

import pytest

from keramos.framework.config import make_conf
from keramos.framework.images import cache as cache_module
from keramos.framework.images.cache import CacheEntryTooLarge, VerifiedImageCache, image_cache_opts


def make_cache(tmp_path, **options) -> VerifiedImageCache:
    conf = make_conf(config_files=[], overrides={"DEFAULT": {"state_path": str(tmp_path)}})
    conf.register_opts(image_cache_opts, group="image_cache")
    for name, value in options.items():
        conf.set_override(name, value, group="image_cache")
    return VerifiedImageCache(conf)


def producer(data: bytes, calls: list | None = None, delay: float = 0.0):
    def produce(target):
        if calls is not None:
            calls.append(1)
        time.sleep(delay)
        target.write(data)
        return {
            "digest": hashlib.sha256(data).hexdigest(),
            "hash_method": "SHA-256",
            "hashlib": "sha256",
            "signer": "CN=test",
        }

    return produce


def test_fetch_fills_then_hits_without_producing_again(tmp_path):
    cache = make_cache(tmp_path)
    calls: list = []
    first = cache.fetch("img", "sum1", producer(b"abc" * 1000, calls))
    second = cache.fetch("img", "sum1", producer(b"other", calls))
    assert calls == [1]
    assert first == second
    with open(first.path, "rb") as data:
        assert data.read() == b"abc" * 1000
    assert first.digest == hashlib.sha256(b"abc" * 1000).hexdigest()
    assert first.details == {"signer": "CN=test"}


def test_key_includes_the_checksum(tmp_path):
    cache = make_cache(tmp_path)
    cache.fetch("img", "sum1", producer(b"one"))
    assert cache.get("img", "sum2") is None
    assert cache.fetch("img", "sum2", producer(b"two")).size == 3
    assert cache.get("img", "sum1") is not None


def test_failed_verification_leaves_nothing(tmp_path):
    cache = make_cache(tmp_path)

    def produce(target):
        target.write(b"partial data")
        raise ValueError("signature does not verify")

    with pytest.raises(ValueError):
        cache.fetch("img", "sum", produce)
    assert cache.get("img", "sum") is None
    for sub in ("entries", "staging"):
        assert os.listdir(os.path.join(cache.directory, sub)) == []


def test_least_recently_used_entries_are_evicted(tmp_path):
    cache = make_cache(tmp_path, max_size=3000)
    for name in ("a", "b", "c"):
        cache.fetch(name, "sum", producer(b"x" * 1000))
    assert cache.get("a", "sum") is not None  # a is now the most recently used
    cache.fetch("d", "sum", producer(b"y" * 1000))
    assert cache.get("b", "sum") is None
    assert all(cache.get(name, "sum") is not None for name in ("a", "c", "d"))
    assert cache.total_size() <= 3000


def test_image_larger_than_the_cache_is_not_kept(tmp_path):
    cache = make_cache(tmp_path, max_size=100)
    cache.fetch("small", "sum", producer(b"s" * 50))
    with pytest.raises(CacheEntryTooLarge):
        cache.fetch("big", "sum", producer(b"b" * 101))
    assert cache.get("small", "sum") is not None
    assert os.listdir(os.path.join(cache.directory, "staging")) == []


@pytest.mark.parametrize("damage", ["truncate", "head", "tail", "replace"])
def test_damaged_entry_is_not_served(tmp_path, damage):
    cache = make_cache(tmp_path)
    entry = cache.fetch("img", "sum", producer(os.urandom(300_000)))
    if damage == "truncate":
        os.truncate(entry.path, entry.size - 1)
    elif damage == "replace":
        with open(entry.path + ".new", "wb") as other:
            other.write(os.urandom(entry.size))
        os.replace(entry.path + ".new", entry.path)
    else:
        with open(entry.path, "r+b") as data:
            data.seek(0 if damage == "head" else entry.size - 1)
            byte = data.read(1)
            data.seek(-1, os.SEEK_CUR)
            data.write(bytes([byte[0] ^ 1]))
    assert cache.get("img", "sum") is None
    assert not os.path.exists(entry.path)


def test_write_in_the_middle_is_caught_by_the_modification_time(tmp_path):
    cache = make_cache(tmp_path)
    entry = cache.fetch("img", "sum", producer(os.urandom(300_000)))
    time.sleep(0.05)  # let the file system clock move past the verification time
    with open(entry.path, "r+b") as data:
        data.seek(150_000)
        data.write(b"\x00")
    assert cache.get("img", "sum") is None


def test_verify_on_hit_rehashes_the_data(tmp_path):
    cache = make_cache(tmp_path, verify_on_hit=True)
    entry = cache.fetch("img", "sum", producer(os.urandom(300_000)))
    stat = os.stat(entry.path)
    with open(entry.path, "r+b") as data:
        data.seek(150_000)
        byte = data.read(1)
        data.seek(150_000)
        data.write(bytes([byte[0] ^ 1]))
    os.utime(entry.path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # hide the write's time
    assert cache.get("img", "sum") is None


def test_concurrent_requests_download_once(tmp_path):
    cache = make_cache(tmp_path)
    calls: list = []
    results: list = []
    barrier = threading.Barrier(8)

    def request():
        barrier.wait()
        results.append(cache.fetch("img", "sum", producer(b"z" * 4096, calls, delay=0.2)))

    threads = [threading.Thread(target=request) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert len(results) == 8 and len({result.path for result in results}) == 1


@pytest.fixture
def boot(tmp_path, monkeypatch):
    """A fake boot id file: write a new id to simulate a restart."""
    path = tmp_path / "boot_id"
    path.write_text("boot-1\n")
    monkeypatch.setattr(cache_module, "_BOOT_ID_PATH", str(path))
    return path


def test_entry_from_before_a_restart_is_rehashed_once(tmp_path, boot, monkeypatch):
    cache = make_cache(tmp_path)
    cache.fetch("img", "sum", producer(os.urandom(300_000)))
    hashed: list[str] = []
    real_hash = VerifiedImageCache._hash_file
    monkeypatch.setattr(
        VerifiedImageCache,
        "_hash_file",
        staticmethod(lambda path, name: hashed.append(path) or real_hash(path, name)),
    )
    assert cache.get("img", "sum") is not None and hashed == []
    boot.write_text("boot-2\n")
    assert cache.get("img", "sum") is not None and len(hashed) == 1
    assert cache.get("img", "sum") is not None and len(hashed) == 1


def test_data_lost_in_a_crash_is_not_served_after_the_restart(tmp_path, boot):
    cache = make_cache(tmp_path)
    entry = cache.fetch("img", "sum", producer(os.urandom(300_000)))
    stat = os.stat(entry.path)
    with open(entry.path, "r+b") as data:
        data.seek(100_000)
        data.write(b"\x00" * 4096)  # what a crash can leave where unflushed data was
    os.utime(entry.path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    boot.write_text("boot-2\n")
    assert cache.get("img", "sum") is None


def test_staging_left_by_a_crash_is_removed_but_not_one_in_use(tmp_path):
    cache = make_cache(tmp_path)
    staging = os.path.join(cache.directory, "staging")
    orphan = os.path.join(staging, "orphan")
    with open(orphan, "wb") as left:
        left.write(b"partial")
    in_use = os.path.join(staging, "in-use")
    with open(in_use, "wb") as writing:
        fcntl.flock(writing.fileno(), fcntl.LOCK_EX)
        make_cache(tmp_path)
        assert os.listdir(staging) == ["in-use"]


def test_concurrent_processes_download_once(tmp_path):
    make_cache(tmp_path)
    log = tmp_path / "downloads.log"

    def request() -> None:
        def produce(target):
            with open(log, "a") as downloads:
                downloads.write("download\n")
            time.sleep(0.3)
            return producer(b"p" * 4096)(target)

        make_cache(tmp_path).fetch("img", "sum", produce)

    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=request) for _ in range(3)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(30)
    assert [process.exitcode for process in processes] == [0, 0, 0]
    assert log.read_text() == "download\n"
