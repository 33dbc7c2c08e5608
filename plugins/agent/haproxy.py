"""The agent's core: versioned HAProxy configurations on disk and the HAProxy processes.

Nothing here knows HTTP. Every load balancer has a directory of its own under
``<state_dir>/loadbalancers/<lb_id>/`` holding ``haproxy.cfg``, ``haproxy.pid``, ``state.json``
(the stored and running versions) and ``certificates/``. Operations on one load balancer are
serialised with an ``flock`` so that several gunicorn workers can share the directory.

A configuration is checked with the real ``haproxy -c`` before it replaces the stored one, so a
bad push changes nothing: neither the file nor the process running the previous configuration.
HAProxy runs daemonised (``-D`` with a pid file) and reloads with ``-sf``: the new process takes
over the listening sockets before the old one finishes its connections, and when the new one
cannot start the old one keeps serving.

Versions (:func:`accept_push`): a versioned push older than the stored version is refused. An
unversioned push (Octavia's client sends no version) is accepted only while the load balancer has
never had a versioned configuration, deletion included: once a versioned controller owns it, an
unversioned push could be a delayed retry of anything, so it is refused rather than guessed to be
``stored + 1``, which would let it silently roll back the versioned configuration.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
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

_STOP_GRACE_SECONDS = 5.0


class HaproxyError(Exception):
    """Base of the core's errors; ``details`` carries HAProxy's own output when there is one."""

    def __init__(self, message: str, details: str = "") -> None:
        self.message = message
        self.details = details
        super().__init__(f"{message}: {details}" if details else message)


class ConfigInvalid(HaproxyError):
    """``haproxy -c`` rejected a configuration; ``details`` is its output."""


class StaleConfigVersion(HaproxyError):
    """A push older than (or as old as, with other content) the stored configuration."""

    def __init__(self, stored: int, pushed: int) -> None:
        self.stored = stored
        self.pushed = pushed
        super().__init__(
            "Stale configuration version",
            f"version {pushed} refused: this amphora already has version {stored}",
        )


class UnversionedPushRefused(HaproxyError):
    """An unversioned push to an object that has (or had) a versioned configuration."""

    def __init__(self, stored: int) -> None:
        self.stored = stored
        super().__init__(
            "Versioned configuration",
            f"a push without a version is refused: this amphora has version {stored}; send "
            "X-Config-Version",
        )


class NoSuchLoadBalancer(HaproxyError):
    """The load balancer has no configuration on this amphora."""


class HaproxyFailed(HaproxyError):
    """HAProxy could not be started, reloaded or stopped; ``details`` is its output."""


@dataclasses.dataclass(frozen=True)
class LoadBalancerState:
    """What the agent knows about one load balancer."""

    lb_id: str
    config_version: int | None
    running_version: int | None
    etag: str | None
    running: bool

    def to_dict(self) -> dict[str, Any]:
        """The state as reported by ``/info`` and ``/details``."""
        return dataclasses.asdict(self)


def config_etag(config: bytes) -> str:
    """The ETag of a configuration: its MD5, as Octavia's agent reports it (not a secret)."""
    return hashlib.md5(config, usedforsecurity=False).hexdigest()


_SECTION_RE = re.compile(
    r"^(global|defaults|frontend|backend|listen|peers|resolvers|userlist|program|http-errors|"
    r"ring|cache|mailers)\b[ \t]*(\S*)",
    re.MULTILINE,
)
_MODE_RE = re.compile(r"^\s*mode\s+(\w+)", re.MULTILINE)
_SSL_BIND_RE = re.compile(r"^\s*bind\s.*\bssl\b.*\bcrt\b", re.MULTILINE)


def frontends(config: bytes) -> dict[str, str]:
    """The frontends of a configuration and their Octavia listener type: ``HTTP``, ``TCP`` or
    ``TERMINATED_HTTPS`` (a ``bind ... ssl crt``). Octavia names each frontend by its listener id.
    """
    text = config.decode("utf-8", errors="replace")
    sections = list(_SECTION_RE.finditer(text))
    found: dict[str, str] = {}
    for index, section in enumerate(sections):
        if section.group(1) != "frontend" or not section.group(2):
            continue
        end = sections[index + 1].start() if index + 1 < len(sections) else len(text)
        body = text[section.end():end]
        mode = _MODE_RE.search(body)
        kind = mode.group(1).upper() if mode else "TCP"
        found[section.group(2)] = "TERMINATED_HTTPS" if _SSL_BIND_RE.search(body) else kind
    return found


def accept_push(stored: dict[str, Any], version: int | None, etag: str, present: bool) -> bool:
    """Whether a push of ``etag`` as ``version`` over the ``stored`` state changes anything.

    ``present`` says whether the stored configuration file exists. Raises
    :class:`StaleConfigVersion` for an older version (or the stored version with other content)
    and :class:`UnversionedPushRefused` for an unversioned push once a version was stored.
    """
    stored_version = stored.get("config_version")
    same = present and etag == stored.get("etag")
    if version is None:
        if stored_version is not None:
            raise UnversionedPushRefused(stored_version)
        return not same
    if version < 1:
        raise ValueError("configuration versions start at 1")
    if stored_version is None:
        return True
    if version < stored_version or (version == stored_version and not same):
        raise StaleConfigVersion(stored_version, version)
    return version != stored_version


def run_program(
    arguments: list[str], *, timeout: float, program: str
) -> subprocess.CompletedProcess[str]:
    """Run one of the agent's programs (HAProxy, keepalived) with a bounded wait and no input.

    :raises HaproxyFailed: the program is not installed or did not answer within ``timeout``.
    """
    try:
        return subprocess.run(
            arguments,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError as error:
        raise HaproxyFailed(f"{program} is not installed", str(error)) from error
    except subprocess.TimeoutExpired as error:
        raise HaproxyFailed(f"{program} did not answer", f"{arguments[1]} timed out") from error


def process_alive(pid: int, marker: str) -> bool:
    """Whether ``pid`` is a live (non-zombie) process whose command line contains ``marker``."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            state = stat.read().rsplit(b")", 1)[1].split()[0]
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            arguments = cmdline.read().decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in (b"Z", b"X") and marker in arguments


class HaproxyManager:
    """Stores versioned configurations and runs one HAProxy per load balancer."""

    def __init__(self, state_dir: str, binary: str = "haproxy", timeout: float = 30.0) -> None:
        self.state_dir = os.path.abspath(state_dir)
        self.binary = binary
        self.timeout = timeout
        os.makedirs(os.path.join(self.state_dir, "loadbalancers"), mode=0o700, exist_ok=True)
        self.root = os.path.realpath(os.path.join(self.state_dir, "loadbalancers"))
        self._dirs = ListenerDirectories(self.root, "load balancer")
        self._version: str | None = None

    def lb_dir(self, lb_id: str) -> str:
        """The directory of ``lb_id`` (ValueError for an id that is not a safe name)."""
        return self._dirs.path(lb_id)

    def config_path(self, lb_id: str) -> str:
        """Where the stored configuration of ``lb_id`` lives."""
        return os.path.join(self.lb_dir(lb_id), "haproxy.cfg")

    def certificates_dir(self, lb_id: str) -> str:
        """Where the listener certificates of ``lb_id`` live."""
        return os.path.join(self.lb_dir(lb_id), "certificates")

    def _pid_path(self, lb_id: str) -> str:
        return os.path.join(self.lb_dir(lb_id), "haproxy.pid")

    def _state_path(self, lb_id: str) -> str:
        return os.path.join(self.lb_dir(lb_id), "state.json")

    def lock(self, lb_id: str) -> contextlib.AbstractContextManager[None]:
        """Hold the exclusive lock of ``lb_id`` (across threads and processes)."""
        return self._dirs.lock(lb_id)

    def _read_state(self, lb_id: str) -> dict[str, Any]:
        return self._dirs.read_state(lb_id)

    def _write_state(self, lb_id: str, state: dict[str, Any]) -> None:
        self._dirs.write_state(lb_id, state)

    def _run(self, arguments: list[str]) -> subprocess.CompletedProcess[str]:
        return run_program(arguments, timeout=self.timeout, program="HAProxy")

    def version(self) -> str | None:
        """HAProxy's version string (``2.6.12-1``), or ``None`` when it cannot be run.

        Asked once per process: the binary does not change under a running agent.
        """
        if self._version is None:
            try:
                result = self._run([self.binary, "-v"])
            except HaproxyFailed:
                return None
            words = result.stdout.split()
            if len(words) > 2 and result.returncode == 0:
                self._version = words[2]
        return self._version

    def validate_file(self, path: str) -> None:
        """Run ``haproxy -c -f path``; raise :class:`ConfigInvalid` with its output if it fails."""
        result = self._run([self.binary, "-c", "-f", path])
        if result.returncode != 0:
            output = (result.stdout + result.stderr).strip()
            raise ConfigInvalid("Invalid HAProxy configuration", output.replace(path, "haproxy.cfg"))

    def state(self, lb_id: str) -> LoadBalancerState:
        """The versions and process status of ``lb_id`` (NoSuchLoadBalancer if never pushed)."""
        stored = self._read_state(lb_id)
        if not stored:
            raise NoSuchLoadBalancer("Loadbalancer Not Found", f"No loadbalancer with UUID: {lb_id}")
        return LoadBalancerState(
            lb_id=lb_id,
            config_version=stored.get("config_version"),
            running_version=stored.get("running_version") if self.running_pids(lb_id) else None,
            etag=stored.get("etag"),
            running=bool(self.running_pids(lb_id)),
        )

    def loadbalancers(self) -> list[LoadBalancerState]:
        """The state of every load balancer this agent has a version for, by id."""
        states = []
        for lb_id in sorted(os.listdir(self.root)):
            if is_valid_id(lb_id) and os.path.exists(self._state_path(lb_id)):
                states.append(self.state(lb_id))
        return states

    def install_config(self, lb_id: str, config: bytes, version: int | None) -> tuple[str, bool]:
        """Check ``config`` with ``haproxy -c`` and store it as ``version`` of ``lb_id``.

        ``version`` ``None`` is an unversioned push (see :func:`accept_push`). Returns
        ``(etag, changed)``. Pushing again what is stored changes nothing (a retried push
        succeeds); a refused version raises :class:`StaleConfigVersion` or
        :class:`UnversionedPushRefused`; a configuration HAProxy refuses raises
        :class:`ConfigInvalid`. Either way the stored configuration is left as it was.
        """
        etag = config_etag(config)
        with self.lock(lb_id):
            stored = self._read_state(lb_id)
            present = os.path.exists(self.config_path(lb_id))
            if not accept_push(stored, version, etag, present):
                return etag, False
            write_atomic(self.config_path(lb_id), config, check=self.validate_file, make_dirs=True)
            self._write_state(lb_id, {**stored, "config_version": version, "etag": etag})
            return etag, True

    def has_config(self, lb_id: str) -> bool:
        """Whether ``lb_id`` is a load balancer with a stored configuration."""
        return is_valid_id(lb_id) and os.path.exists(self.config_path(lb_id))

    def read_config(self, lb_id: str) -> bytes:
        """The stored configuration of ``lb_id`` (NoSuchLoadBalancer if there is none)."""
        try:
            with open(self.config_path(lb_id), "rb") as stream:
                return stream.read()
        except FileNotFoundError:
            raise NoSuchLoadBalancer(
                "Loadbalancer Not Found", f"No loadbalancer with UUID: {lb_id}"
            ) from None

    def running_pids(self, lb_id: str) -> list[int]:
        """The live HAProxy processes of ``lb_id``, from its pid file."""
        try:
            with open(self._pid_path(lb_id), encoding="ascii") as stream:
                pids = [int(word) for word in stream.read().split()]
        except (FileNotFoundError, ValueError):
            return []
        marker = self.config_path(lb_id)
        return [pid for pid in pids if process_alive(pid, marker)]

    def _launch(self, lb_id: str, replace_pids: list[int]) -> None:
        arguments = [self.binary, "-D", "-p", self._pid_path(lb_id), "-f", self.config_path(lb_id)]
        if replace_pids:
            arguments += ["-sf", *(str(pid) for pid in replace_pids)]
        result = self._run(arguments)
        if result.returncode != 0:
            output = (result.stdout + result.stderr).strip()
            raise HaproxyFailed("Error starting haproxy", output)
        stored = self._read_state(lb_id)
        self._write_state(lb_id, {**stored, "running_version": stored.get("config_version")})

    def start(self, lb_id: str) -> str:
        """Start HAProxy on the stored configuration unless it runs; return what was done."""
        self.read_config(lb_id)
        with self.lock(lb_id):
            if self.running_pids(lb_id):
                return f"haproxy daemon for {lb_id} already running"
            self._launch(lb_id, [])
            return f"haproxy daemon for {lb_id} started"

    def reload(self, lb_id: str) -> str:
        """Make HAProxy run the stored configuration (starting it if it does not run)."""
        self.read_config(lb_id)
        with self.lock(lb_id):
            pids = self.running_pids(lb_id)
            self._launch(lb_id, pids)
            return f"haproxy daemon for {lb_id} {'reloaded' if pids else 'started'}"

    def stop(self, lb_id: str) -> str:
        """Stop HAProxy (SIGTERM, then SIGKILL after a grace period)."""
        self.read_config(lb_id)
        with self.lock(lb_id):
            self._terminate(lb_id)
            return f"haproxy daemon for {lb_id} stopped"

    def _terminate(self, lb_id: str) -> None:
        pids = self.running_pids(lb_id)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + _STOP_GRACE_SECONDS
        while self.running_pids(lb_id) and time.monotonic() < deadline:
            time.sleep(0.02)
        for pid in self.running_pids(lb_id):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._pid_path(lb_id))
        stored = self._read_state(lb_id)
        if stored:
            self._write_state(lb_id, {**stored, "running_version": None})

    def delete(self, lb_id: str) -> None:
        """Stop ``lb_id`` and remove its configuration and certificates.

        The stored version stays behind, so that a delayed push of an older version is still
        refused after the load balancer was deleted.
        """
        with self.lock(lb_id):
            self._terminate(lb_id)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.config_path(lb_id))
            shutil.rmtree(self.certificates_dir(lb_id), ignore_errors=True)
            stored = self._read_state(lb_id)
            if stored:
                self._write_state(lb_id, {**stored, "etag": None, "running_version": None})

    def stop_all(self) -> None:
        """Stop every HAProxy this state directory runs (the agent is going away)."""
        for lb_id in os.listdir(self.root):
            if is_valid_id(lb_id):
                with self.lock(lb_id):
                    self._terminate(lb_id)
