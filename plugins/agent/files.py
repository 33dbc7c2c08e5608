"""Safe names for the files the agent keeps, and the per-listener directories its managers share
(the writes themselves are :func:`keramos.framework.files.write_atomic`)."""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from typing import Any

from keramos.framework.agent_protocol.rest import is_valid_id
from keramos.framework.files import locked, write_atomic

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


class ListenerDirectories:
    """One directory per listener (a load balancer's HAProxy, a UDP listener's keepalived)
    under ``root``: its files, an exclusive lock across threads and processes, and a small JSON
    state (versions, etag) written atomically."""

    def __init__(self, root: str, kind: str) -> None:
        self.root = root
        self.kind = kind

    def path(self, key: str, *names: str) -> str:
        """The directory of ``key`` (or a file in it); ValueError for an id that is not a safe
        name. A valid id has no separator and no leading dot: joined to the resolved root, it
        stays inside it without resolving the path again on every call."""
        if not is_valid_id(key):
            raise ValueError(f"invalid {self.kind} id {key!r}")
        return os.path.join(self.root, key, *names)

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Hold the exclusive lock of ``key``."""
        os.makedirs(self.path(key), mode=0o700, exist_ok=True)
        with locked(self.path(key, ".lock")):
            yield

    def read_state(self, key: str) -> dict[str, Any]:
        """The recorded state of ``key`` (``{}`` before the first write)."""
        try:
            with open(self.path(key, "state.json"), encoding="utf-8") as stream:
                return json.load(stream)
        except FileNotFoundError:
            return {}

    def write_state(self, key: str, state: dict[str, Any]) -> None:
        """Replace the recorded state of ``key``, atomically."""
        data = json.dumps(state, sort_keys=True).encode()
        write_atomic(self.path(key, "state.json"), data, make_dirs=True)
