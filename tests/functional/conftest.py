"""Fixtures for tests against the real RabbitMQ: a keramos-worker process and a client."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import kombu
import oslo_messaging
import pytest

from keramos.framework.client import KeramosClient
from keramos.framework.config import make_conf
from tests.conftest import port_open, require
from tests.functional import rabbit_node
from tests.functional.jobboard_helpers import RedisServer, postgresql_database

RABBIT_URL = os.environ.get("KERAMOS_TEST_RABBIT_URL", "rabbit://guest:guest@127.0.0.1:5672/")
BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def rabbit_url() -> str:
    """The RabbitMQ URL; fails in CI and skips elsewhere when the broker is down."""
    require(port_open("127.0.0.1", 5672), "RabbitMQ on 127.0.0.1:5672")
    return RABBIT_URL


class WorkerProcess:
    """A ``keramos-worker`` subprocess with its own config file, topic and state directory."""

    def __init__(
        self,
        directory: Path,
        rabbit_url: str,
        settings: dict[str, dict[str, object]],
        env: dict[str, str] | None = None,
    ):
        self.directory = directory
        #: The worker's environment (this process's when ``None``).
        self.env = env
        self.topic = f"keramos-test-{uuid.uuid4().hex[:10]}"
        sections: dict[str, dict[str, object]] = {
            "DEFAULT": {
                "transport_url": rabbit_url,
                "state_path": directory,
                "host": f"host-{self.topic}",
                # Its own exchange: durable (the shared broker's "keramos" may be an older,
                # non-durable one, which durable queues cannot be bound to).
                "control_exchange": self.topic,
            },
            "worker": {"topic": self.topic, "graceful_shutdown_timeout": 20},
            "oslo_messaging_notifications": {"topics": f"{self.topic}-notifications"},
            # The noop image store serves unsigned images.
            "amphora": {"require_signed_images": False},
        }
        for section, values in settings.items():
            sections.setdefault(section, {}).update(values)
        self.config_file = directory / "keramos.conf"
        self.config_file.write_text(
            "".join(
                f"[{section}]\n" + "".join(f"{key} = {value}\n" for key, value in values.items())
                for section, values in sections.items()
            )
        )
        self.log_file = directory / "worker.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> WorkerProcess:
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen(
                [str(BIN / "keramos-worker"), "--config-file", str(self.config_file)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=self.env,
            )
        return self

    def conf(self):
        return make_conf(["--config-file", str(self.config_file)])

    def client(self) -> KeramosClient:
        return KeramosClient(self.conf())

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with self.client() as client:
            while True:
                if self.process.poll() is not None:
                    raise AssertionError(f"worker exited {self.process.returncode}:\n{self.log()}")
                try:
                    client.ping(timeout=2)
                    return
                except oslo_messaging.MessagingTimeout:
                    if time.monotonic() > deadline:
                        raise AssertionError(f"worker not ready:\n{self.log()}") from None

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "keramos"), "--config-file", str(self.config_file), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def queues(self) -> list[str]:
        """The queues declared for this worker's topic, control topic and notifications."""
        host = f"host-{self.topic}"
        notifications = f"{self.topic}-notifications"
        return [
            self.topic,
            f"{self.topic}.{host}",
            f"{self.topic}-control",
            f"{self.topic}-control.{host}",
            f"{notifications}.info",
            f"{notifications}.error",
        ]

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        os.killpg(self.process.pid, sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait()


@pytest.fixture
def worker_process(tmp_path, rabbit_url):
    """Start a ready keramos-worker: ``worker_process(settings)``; stopped after the test."""
    started: list[WorkerProcess] = []

    def start(
        settings: dict[str, dict[str, object]] | None = None,
        *,
        ready: bool = True,
        env: dict[str, str] | None = None,
    ):
        directory = tmp_path / f"worker-{len(started)}"
        directory.mkdir()
        worker = WorkerProcess(directory, rabbit_url, settings or {}, env).start()
        started.append(worker)
        if ready:
            worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.stop()
        delete_queues(rabbit_url, worker.queues(), exchanges=[worker.topic])


def install_apart(package: Path, target: Path) -> dict[str, str]:
    """pip-install ``package`` (no dependencies) into ``target`` instead of this virtualenv, and
    return the environment under which subprocesses see it (``PYTHONPATH``): tests running at
    the same time, which load every installed entry point, never see a half-installed plugin."""
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "install", "--no-deps",
         "--no-build-isolation", "--target", str(target), str(package)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH")]))}


def delete_queues(rabbit_url: str, names: list[str], *, exchanges: Sequence[str] = ()) -> None:
    """Delete the queues (and exchanges) a test made, so that repeated runs leave the broker as
    it was."""
    with kombu.Connection(rabbit_url.replace("rabbit://", "amqp://", 1)) as connection:
        channel = connection.channel()
        for name in names:
            channel.queue_delete(name)
        for name in exchanges:
            channel.exchange_delete(name)


@pytest.fixture
def private_rabbit():
    """A private RabbitMQ node (:class:`~tests.functional.rabbit_node.RabbitNode`), started,
    for a test that stops or restarts the broker; stopped and removed after the test. Fails in
    CI and skips elsewhere when RabbitMQ is not installed."""
    require(rabbit_node.available(), "rabbitmq-server and rabbitmqctl")
    # Not under pytest's tmp_path: the rabbitmq user cannot enter its 0700 parents.
    directory = Path(tempfile.mkdtemp(prefix="keramos-rabbit-"))
    directory.chmod(0o755)
    node = rabbit_node.RabbitNode(directory / "node").start()
    try:
        yield node
    finally:
        node.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def pg_url():
    """A PostgreSQL database of the test module's own, dropped after it."""
    yield from postgresql_database()


@pytest.fixture
def redis_server(tmp_path):
    """A private ``redis-server`` with an append-only file, restartable (never the shared one)."""
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory).start()
    yield server
    server.stop()
