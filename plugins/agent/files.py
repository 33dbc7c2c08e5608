"""Safe names for the files the agent keeps (the writes themselves are
:func:`keramos.framework.files.write_atomic`)."""

from __future__ import annotations

import os
import re

#: Listener certificate file names: one path component ending in .pem, never starting with a dot.
PEM_FILENAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*\.pem")
_MAX_FILENAME = 128


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
