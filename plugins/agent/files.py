"""Atomic, permission-aware file writes and safe names for files the agent keeps."""

from __future__ import annotations

import os
import re
import tempfile

from keramos.framework.schema import IDENTIFIER_PATTERN

#: Load balancer and amphora ids (Keramos's identifier pattern): they become directory names,
#: so no separators and no leading dot (which also rules out "." and "..").
ID_RE = re.compile(IDENTIFIER_PATTERN)
#: Listener certificate file names: one path component ending in .pem, never starting with a dot.
PEM_FILENAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*\.pem")
_MAX_FILENAME = 128


def is_valid_id(value: str) -> bool:
    """Whether ``value`` may name an amphora or a load balancer."""
    return ID_RE.fullmatch(value) is not None


def is_valid_pem_filename(value: str) -> bool:
    """Whether ``value`` may name a listener certificate file (``name.pem``, no path)."""
    return len(value) <= _MAX_FILENAME and PEM_FILENAME_RE.fullmatch(value) is not None


def contained_path(directory: str, name: str) -> str:
    """Join ``name`` to ``directory`` and refuse, with ValueError, a result outside it."""
    base = os.path.realpath(directory)
    path = os.path.realpath(os.path.join(base, name))
    if os.path.dirname(path) != base:
        raise ValueError(f"{name!r} does not name a file directly inside {directory}")
    return path


def atomic_write(path: str, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename.

    Readers see the old content or the new one, never a mix; the file has ``mode`` from the
    moment it exists (the temporary file is created 0600 and changed before the rename).
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd, temp_path = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temp_path, mode)
        os.replace(temp_path, path)
    except BaseException:
        try:
            os.unlink(temp_path)
        except FileNotFoundError:
            pass
        raise
