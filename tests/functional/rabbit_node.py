"""A private RabbitMQ node for tests that stop or restart the broker (never the shared one).

The node has its own name, AMQP and distribution ports, data, logs, configuration and no
plugins; everything lives in a temporary directory. ``rabbitmq-server`` runs in the foreground
as a child of the test (``rabbitmq-server -detached`` loses the environment's error output), and
stops with ``rabbitmqctl -n NODE stop``; a node that does not stop is killed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def available() -> bool:
    """Whether this machine can start a RabbitMQ node (the programs are installed)."""
    return bool(shutil.which("rabbitmq-server") and shutil.which("rabbitmqctl"))


class RabbitNode:
    """One private RabbitMQ node in ``directory``: :meth:`start`, :meth:`stop`, :meth:`restart`.

    Data survive a restart (same ``RABBITMQ_MNESIA_BASE``): durable queues and persistent
    messages come back, as on a production node.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.name = f"keramos-test-{uuid.uuid4().hex[:8]}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.url = f"rabbit://guest:guest@127.0.0.1:{self.port}/"
        self.amqp_url = f"amqp://guest:guest@127.0.0.1:{self.port}//"
        self.output = directory / "rabbitmq-server.out"
        self.process: subprocess.Popen | None = None
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.port}\nloopback_users = none\n"
        )
        (directory / "enabled_plugins").write_text("[].\n")
        (directory / "rabbitmq-env.conf").write_text("")
        self._env = {
            **os.environ,
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(directory / "log"),
            "RABBITMQ_CONFIG_FILE": str(directory / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(directory / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(directory / "rabbitmq-env.conf"),
            "RABBITMQ_PID_FILE": str(directory / "rabbitmq.pid"),
        }
        if os.geteuid() == 0:
            # rabbitmq-server drops to the rabbitmq user, which must own the node's files.
            directory.chmod(0o755)
            for path in [directory, *directory.rglob("*")]:
                shutil.chown(path, "rabbitmq", "rabbitmq")

    def ctl(self, *args: str, timeout: float = STOP_TIMEOUT) -> subprocess.CompletedProcess:
        """Run ``rabbitmqctl -n NODE args``."""
        return subprocess.run(
            ["rabbitmqctl", "-n", self.name, *args],
            env=self._env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(self) -> RabbitNode:
        """Start the node and wait until it accepts connections."""
        with open(self.output, "ab") as output:
            self.process = subprocess.Popen(
                ["rabbitmq-server"],
                env=self._env,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"rabbitmq-server exited:\n{self.log()}")
            if (self.directory / "rabbitmq.pid").exists():
                waited = self.ctl(
                    "wait", str(self.directory / "rabbitmq.pid"), "--timeout", "60",
                    timeout=START_TIMEOUT,
                )
                if waited.returncode == 0:
                    return self
                raise AssertionError(f"node {self.name} did not start:\n{waited.stderr}{self.log()}")
            time.sleep(0.2)
        raise AssertionError(f"node {self.name} did not start in {START_TIMEOUT}s:\n{self.log()}")

    def stop(self) -> None:
        """Stop the node (killed if ``rabbitmqctl stop`` fails); its data stay."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            self.ctl("stop", timeout=STOP_TIMEOUT)
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, 9)
            self.process.wait()
        (self.directory / "rabbitmq.pid").unlink(missing_ok=True)

    def restart(self) -> None:
        """Stop and start again: what a broker restart does to queues and messages."""
        self.stop()
        self.start()

    def log(self) -> str:
        """The node's console output."""
        return self.output.read_text(errors="replace") if self.output.exists() else ""
