"""The agent's UDP listeners: a keepalived (LVS) configuration and a keepalived process each.

Nothing here knows HTTP. Every UDP listener has a directory of its own under
``<state_dir>/udp_listeners/<listener_id>/`` holding ``keepalived.conf``, ``state.json`` (the
stored version, as for a load balancer), ``keepalived.log`` and the pid files of keepalived's
parent, checker and VRRP processes. A configuration is checked with the real
``keepalived --config-test`` before it replaces the stored one, so a bad push changes nothing.

keepalived runs in the foreground of a detached shell (``--dont-fork``, console logging into
``keepalived.log``): it is reparented away from the agent's worker, and what it says when it fails
to start (an LVS checker exits at once on a host without the ``ip_vs`` kernel module) lands in the
log that the failed start answers with. A configuration without ``virtual_server`` (Octavia's
disabled listener) runs a keepalived with nothing to check: the listener is ``OFFLINE``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from typing import Any

from keramos.framework.agent_protocol.rest import is_valid_id
from keramos.framework.files import write_atomic
from keramos.plugins.agent.files import ListenerDirectories
from keramos.plugins.agent.haproxy import (
    ConfigInvalid,
    HaproxyFailed,
    NoSuchLoadBalancer,
    accept_push,
    config_etag,
    process_alive,
    run_program,
)

_STOP_GRACE_SECONDS = 5.0
#: How long a started keepalived must stay alive to count as started: its checker fails within
#: milliseconds when LVS cannot be used.
_SETTLE_SECONDS = 0.5
_VIRTUAL_SERVER_RE = re.compile(rb"^\s*virtual_server\b", re.MULTILINE)
_PID_FILES = ("keepalived.pid", "checkers.pid", "vrrp.pid")


class LvsManager:
    """Stores UDP listener configurations and runs one keepalived per listener."""

    def __init__(self, state_dir: str, binary: str = "keepalived", timeout: float = 30.0) -> None:
        self.binary = binary
        self.timeout = timeout
        root = os.path.join(os.path.abspath(state_dir), "udp_listeners")
        os.makedirs(root, mode=0o700, exist_ok=True)
        self.root = os.path.realpath(root)
        self._dirs = ListenerDirectories(self.root, "listener")
        self._version: str | None = None

    def listener_dir(self, listener_id: str) -> str:
        """The directory of ``listener_id`` (ValueError for an id that is not a safe name)."""
        return self._dirs.path(listener_id)

    def config_path(self, listener_id: str) -> str:
        """Where the stored keepalived configuration of ``listener_id`` lives."""
        return os.path.join(self.listener_dir(listener_id), "keepalived.conf")

    def _path(self, listener_id: str, name: str) -> str:
        return self._dirs.path(listener_id, name)

    def lock(self, listener_id: str) -> contextlib.AbstractContextManager[None]:
        """Hold the exclusive lock of ``listener_id`` (across threads and processes)."""
        return self._dirs.lock(listener_id)

    def _read_state(self, listener_id: str) -> dict[str, Any]:
        return self._dirs.read_state(listener_id)

    def _write_state(self, listener_id: str, state: dict[str, Any]) -> None:
        self._dirs.write_state(listener_id, state)

    def _run(self, arguments: list[str]) -> subprocess.CompletedProcess[str]:
        return run_program(arguments, timeout=self.timeout, program="keepalived")

    def version(self) -> str | None:
        """keepalived's version (``2.2.7``), or ``None`` when it cannot be run."""
        if self._version is None:
            try:
                result = self._run([self.binary, "--version"])
            except HaproxyFailed:
                return None
            words = (result.stdout + result.stderr).split()
            if len(words) > 1 and words[0] == "Keepalived":
                self._version = words[1].lstrip("v")
        return self._version

    def validate_file(self, path: str) -> None:
        """Run ``keepalived --config-test`` on ``path``; raise :class:`ConfigInvalid` if it fails.

        keepalived answers 0 for a file it cannot open, so the file must exist.
        """
        if not os.path.isfile(path):
            raise ConfigInvalid("Invalid keepalived configuration", f"{path} does not exist")
        result = self._run([self.binary, "--config-test", "--use-file", path])
        if result.returncode != 0:
            output = (result.stdout + result.stderr).strip()
            raise ConfigInvalid(
                "Invalid keepalived configuration", output.replace(path, "keepalived.conf")
            )

    def exists(self, listener_id: str) -> bool:
        """Whether ``listener_id`` is a UDP listener with a stored configuration."""
        return is_valid_id(listener_id) and os.path.exists(self.config_path(listener_id))

    def install_config(
        self, listener_id: str, config: bytes, version: int | None
    ) -> tuple[str, bool]:
        """Check ``config`` with keepalived and store it, all or nothing, as ``version``.

        Same rules and errors as :meth:`HaproxyManager.install_config
        <keramos.plugins.agent.haproxy.HaproxyManager.install_config>`.
        """
        etag = config_etag(config)
        with self.lock(listener_id):
            stored = self._read_state(listener_id)
            present = os.path.exists(self.config_path(listener_id))
            if not accept_push(stored, version, etag, present):
                return etag, False
            write_atomic(
                self.config_path(listener_id), config, check=self.validate_file, make_dirs=True
            )
            self._write_state(listener_id, {**stored, "config_version": version, "etag": etag})
            return etag, True

    def read_config(self, listener_id: str) -> bytes:
        """The stored configuration (NoSuchLoadBalancer if there is none)."""
        try:
            with open(self.config_path(listener_id), "rb") as stream:
                return stream.read()
        except (FileNotFoundError, ValueError):
            raise NoSuchLoadBalancer(
                "UDP Listener Not Found", f"No UDP listener with UUID: {listener_id}"
            ) from None

    def running_pids(self, listener_id: str) -> list[int]:
        """The live keepalived processes of ``listener_id`` (parent first), from its pid files."""
        marker = self.config_path(listener_id)
        pids = []
        for name in _PID_FILES:
            try:
                with open(self._path(listener_id, name), encoding="ascii") as stream:
                    pid = int(stream.read().strip())
            except (FileNotFoundError, ValueError):
                continue
            if process_alive(pid, marker):
                pids.append(pid)
        return pids

    def status(self, listener_id: str) -> str:
        """Octavia's listener status: ``ACTIVE`` (keepalived runs virtual servers),
        ``OFFLINE`` (stopped, or a configuration without one) or ``ERROR`` (its pid file names
        a dead process)."""
        pids = self.running_pids(listener_id)
        if not pids:
            stale = os.path.exists(self._path(listener_id, "keepalived.pid"))
            return "ERROR" if stale else "OFFLINE"
        if _VIRTUAL_SERVER_RE.search(self.read_config(listener_id)):
            return "ACTIVE"
        return "OFFLINE"

    def listeners(self) -> list[str]:
        """The ids of every UDP listener with a stored configuration, sorted."""
        return sorted(name for name in os.listdir(self.root) if self.exists(name))

    def state(self, listener_id: str) -> dict[str, Any]:
        """The stored version and process status of ``listener_id``."""
        stored = self._read_state(listener_id)
        return {
            "config_version": stored.get("config_version"),
            "running": bool(self.running_pids(listener_id)),
            "status": self.status(listener_id),
        }

    def _launch(self, listener_id: str) -> None:
        log_path = self._path(listener_id, "keepalived.log")
        for name in _PID_FILES:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path(listener_id, name))
        arguments = [
            self.binary,
            "--dont-fork",
            "--log-console",
            "--no-syslog",
            "--check",
            "--use-file", self.config_path(listener_id),
            "--pid", self._path(listener_id, "keepalived.pid"),
            "--checkers_pid", self._path(listener_id, "checkers.pid"),
            "--vrrp_pid", self._path(listener_id, "vrrp.pid"),
        ]
        # A shell that backgrounds keepalived and exits: keepalived is reparented, so no worker
        # of the agent has to reap it; its output goes to the listener's log.
        with open(log_path, "ab") as log:
            offset = log.tell()
        script = '"$@" >>"$0" 2>&1 </dev/null &'
        result = self._run(["sh", "-c", script, log_path, *arguments])
        if result.returncode != 0:
            raise HaproxyFailed("Error starting keepalived", (result.stdout + result.stderr).strip())
        deadline = time.monotonic() + self.timeout
        while not self.running_pids(listener_id):
            if time.monotonic() > deadline or b"Stopped Keepalived" in self._log_since(log_path, offset):
                raise HaproxyFailed("Error starting keepalived", self._log_tail(log_path, offset))
            time.sleep(0.02)
        time.sleep(_SETTLE_SECONDS)
        if not self.running_pids(listener_id):
            raise HaproxyFailed("Error starting keepalived", self._log_tail(log_path, offset))
        stored = self._read_state(listener_id)
        self._write_state(listener_id, {**stored, "running_version": stored.get("config_version")})

    @staticmethod
    def _log_since(log_path: str, offset: int) -> bytes:
        """What keepalived logged since this start (the log is appended to across starts)."""
        with open(log_path, "rb") as stream:
            stream.seek(offset)
            return stream.read(1 << 20)

    def _log_tail(self, log_path: str, offset: int) -> str:
        lines = self._log_since(log_path, offset).decode(errors="replace").splitlines()
        return "\n".join(lines[-20:])

    def start(self, listener_id: str) -> str:
        """Start keepalived on the stored configuration unless it runs."""
        self.read_config(listener_id)
        with self.lock(listener_id):
            if self.running_pids(listener_id):
                return f"keepalivedlvs listener {listener_id} already running"
            self._launch(listener_id)
            return f"keepalivedlvs listener {listener_id} started"

    def reload(self, listener_id: str) -> str:
        """Restart keepalived on the stored configuration (as Octavia does: a keepalived reload
        does not reset its real servers' states)."""
        self.read_config(listener_id)
        with self.lock(listener_id):
            self._terminate(listener_id)
            self._launch(listener_id)
            return f"keepalivedlvs listener {listener_id} restarted"

    def stop(self, listener_id: str) -> str:
        """Stop keepalived (SIGTERM, then SIGKILL after a grace period)."""
        self.read_config(listener_id)
        with self.lock(listener_id):
            self._terminate(listener_id)
            return f"keepalivedlvs listener {listener_id} stopped"

    def _terminate(self, listener_id: str) -> None:
        pids = self.running_pids(listener_id)
        for pid in pids[:1]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + _STOP_GRACE_SECONDS
        while self.running_pids(listener_id) and time.monotonic() < deadline:
            time.sleep(0.02)
        for pid in self.running_pids(listener_id):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for name in _PID_FILES:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path(listener_id, name))
        stored = self._read_state(listener_id)
        if stored:
            self._write_state(listener_id, {**stored, "running_version": None})

    def delete(self, listener_id: str) -> None:
        """Stop ``listener_id`` and remove its configuration and log; its version stays."""
        with self.lock(listener_id):
            self._terminate(listener_id)
            for name in ("keepalived.conf", "keepalived.log"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._path(listener_id, name))
            stored = self._read_state(listener_id)
            if stored:
                self._write_state(listener_id, {**stored, "etag": None, "running_version": None})
            else:
                shutil.rmtree(self.listener_dir(listener_id), ignore_errors=True)

    def stop_all(self) -> None:
        """Stop every keepalived this state directory runs (the agent is going away)."""
        for listener_id in os.listdir(self.root):
            if is_valid_id(listener_id):
                with self.lock(listener_id):
                    self._terminate(listener_id)
