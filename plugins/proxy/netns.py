"""Sockets in another network namespace, without moving the process there.

A socket belongs, for its whole life, to the network namespace of the thread that created it.
A :class:`NamespaceSockets` keeps one thread that entered the namespace once (``setns`` changes
the calling thread only) and does nothing but create sockets there; connecting, binding and
relaying then happen wherever the caller likes, in the process's own threads. This survives any
number of namespaces with the same addresses (which is why a proxy serves two networks that
share a subnet), needs no helper process per namespace, and never leaves a thread of the
caller's pool in the wrong namespace. Entering a namespace needs CAP_SYS_ADMIN.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import ctypes.util
import os
import socket

from keramos.framework.errors import ConfigError

#: Where ``ip netns add NAME`` mounts a named namespace.
NETNS_DIR = "/run/netns"
_CLONE_NEWNET = 0x40000000


def _enter_namespace(path: str) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(descriptor, _CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"setns({path}): {os.strerror(error)}")
    finally:
        os.close(descriptor)


class NamespaceSockets:
    """Creates sockets in the named network namespace (``None``: the process's own)."""

    def __init__(self, namespace: str | None) -> None:
        self.namespace = namespace or None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        if self.namespace is None:
            return
        path = os.path.join(NETNS_DIR, self.namespace)
        if "/" in self.namespace or not os.path.exists(path):
            raise ConfigError(f"network namespace {self.namespace!r} does not exist ({path})")
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix=f"netns-{self.namespace}",
            initializer=_enter_namespace,
            initargs=(path,),
        )
        try:
            self._executor.submit(lambda: None).result()
        except concurrent.futures.BrokenExecutor:
            self._executor.shutdown(wait=False)
            raise ConfigError(
                f"cannot enter network namespace {self.namespace!r} (CAP_SYS_ADMIN needed)"
            ) from None

    def socket(self, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
        """A new socket of the namespace."""
        if self._executor is None:
            return socket.socket(family, kind)
        return self._executor.submit(socket.socket, family, kind).result()

    def connect(self, address: str, port: int, timeout: float) -> socket.socket:
        """A TCP connection to ``address:port`` made from the namespace (blocking)."""
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = self.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect((address, port))
        except BaseException:
            sock.close()
            raise
        return sock

    def close(self) -> None:
        """Stop the namespace's thread."""
        if self._executor is not None:
            self._executor.shutdown(wait=False)
