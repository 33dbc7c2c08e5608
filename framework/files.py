"""Atomic file writes, the one routine every part of Keramos uses to put a file on disk.

A file is written to a temporary file in the same directory, created with its final mode, flushed
and fsynced, then renamed over the target, and the directory is fsynced so that the rename itself
survives a crash. Readers see the old file or the new one, never part of either; a failure leaves
the old file as it was and no temporary file behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from typing import BinaryIO

PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644
#: Mode of the directories :func:`write_atomic` creates when asked to.
PRIVATE_DIRECTORY_MODE = 0o700


def fsync_directory(directory: str) -> None:
    """Make the entries of ``directory`` (a rename, a new file) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _temporary_beside(path: str, mode: int) -> tuple[int, str]:
    directory, name = os.path.split(os.path.abspath(path))
    fd, temp_path = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        _unlink_quietly(temp_path)
        raise
    return fd, temp_path


@contextlib.contextmanager
def atomic_file(
    path: str,
    mode: int = PRIVATE_MODE,
    *,
    check: Callable[[str], None] | None = None,
    make_dirs: bool = False,
) -> Iterator[BinaryIO]:
    """Write ``path`` atomically through the binary stream this yields.

    ``check(temporary_path)``, if given, runs once the data is on disk and before the rename; an
    exception from it keeps the old file. ``make_dirs`` creates missing parent directories
    (``0700``). The file has ``mode`` from the moment it exists.
    """
    directory = os.path.dirname(os.path.abspath(path))
    if make_dirs:
        os.makedirs(directory, mode=PRIVATE_DIRECTORY_MODE, exist_ok=True)
    fd, temp_path = _temporary_beside(path, mode)
    try:
        with os.fdopen(fd, "wb") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        if check is not None:
            check(temp_path)
        os.replace(temp_path, path)
    except BaseException:
        _unlink_quietly(temp_path)
        raise
    fsync_directory(directory)


def write_atomic(
    path: str,
    data: bytes,
    mode: int = PRIVATE_MODE,
    *,
    check: Callable[[str], None] | None = None,
    make_dirs: bool = False,
) -> None:
    """Write ``data`` to ``path`` with ``mode``: readers see the old file or the new, never half.

    ``check`` and ``make_dirs`` as in :func:`atomic_file`.
    """
    with atomic_file(path, mode, check=check, make_dirs=make_dirs) as stream:
        stream.write(data)


def write_all_atomic(files: Mapping[str, tuple[bytes, int]]) -> None:
    """Write several files, each atomically; if any temporary write fails, none is replaced.

    ``files`` maps path to ``(data, mode)``. Every file is written to a temporary file first, and
    only when all are on disk are they renamed into place.
    """
    written: dict[str, str] = {}
    try:
        for path, (data, mode) in files.items():
            fd, written[path] = _temporary_beside(path, mode)
            with os.fdopen(fd, "wb") as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
        for path, temp_path in written.items():
            os.replace(temp_path, path)
        for directory in {os.path.dirname(os.path.abspath(path)) for path in written}:
            fsync_directory(directory)
    finally:
        for temp_path in written.values():
            _unlink_quietly(temp_path)


@contextlib.contextmanager
def locked(path: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created 0600 if missing) for the block."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
