"""Atomic, private file writes: a temporary file in the same directory, then a rename."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator, Mapping

PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644


def _write_temp(path: str, data: bytes, mode: int) -> str:
    directory, name = os.path.split(os.path.abspath(path))
    fd, temp_path = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_path)
        raise
    return temp_path


def write_atomic(path: str, data: bytes, mode: int = PRIVATE_MODE) -> None:
    """Write ``data`` to ``path`` with ``mode``: readers see the old file or the new, never half."""
    temp_path = _write_temp(path, data, mode)
    try:
        os.replace(temp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_path)
        raise


def write_all_atomic(files: Mapping[str, tuple[bytes, int]]) -> None:
    """Write several files, each atomically; if any temporary write fails, none is replaced.

    ``files`` maps path to ``(data, mode)``. Every file is written to a temporary file first, and
    only when all are on disk are they renamed into place.
    """
    written: dict[str, str] = {}
    try:
        for path, (data, mode) in files.items():
            written[path] = _write_temp(path, data, mode)
        for path, temp_path in written.items():
            os.replace(temp_path, path)
    finally:
        for temp_path in written.values():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp_path)


@contextlib.contextmanager
def locked(path: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created 0600 if missing) for the block."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
