"""Test helpers for jobboard mode: a private Redis server, a PostgreSQL database, conductors.

The Redis server is started by the test (never the shared one): ``redis-server --port FREE
--appendonly yes --dir TMP --save ''``, so that a restart keeps the board.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa

from tests.conftest import require

SERVER_URL = os.environ.get(
    "KERAMOS_TEST_POSTGRESQL_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
WORKER = Path(__file__).with_name("jobboard_worker.py")
BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition, timeout: float, what: str, interval: float = 0.05):
    """Poll ``condition`` until it returns something true; fail naming ``what`` after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class RedisServer:
    """A private ``redis-server`` with an append-only file, which a test may restart."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        program = shutil.which("redis-server")
        require(program is not None, "the redis-server program")
        self.process = subprocess.Popen(
            [
                program, "--port", str(self.port), "--bind", "127.0.0.1",
                "--appendonly", "yes", "--dir", str(self.directory), "--save", "",
            ],
            stdout=open(self.directory / "redis.log", "ab"),
            stderr=subprocess.STDOUT,
        )
        wait_for(self._answers, 10, f"redis-server on port {self.port}")
        return self

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def restart(self, down_for: float = 0.0) -> None:
        """Stop the server (it writes its append-only file), wait ``down_for``, start it again."""
        self.stop()
        time.sleep(down_for)
        self.start()


def admin_engine() -> sa.engine.Engine:
    url = sa.engine.make_url(SERVER_URL).set(drivername="postgresql+psycopg2")
    return sa.create_engine(
        url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool,
        connect_args={"connect_timeout": 5},
    )


def postgresql_database() -> Iterator[str]:
    """Create a database for one test module; yield its URL; drop it after."""
    admin = admin_engine()
    try:
        with admin.connect() as db:
            db.execute(sa.text("SELECT 1"))
    except Exception as error:
        require(False, f"PostgreSQL at {SERVER_URL} ({str(error).splitlines()[0]})")
    name = f"keramos_jobboard_{uuid.uuid4().hex[:12]}"
    with admin.connect() as db:
        db.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        url = sa.engine.make_url(SERVER_URL).set(drivername="postgresql+psycopg2", database=name)
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as db:
            db.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def write_config(path: Path, sections: dict[str, dict[str, object]]) -> Path:
    """Write an oslo.config file of ``sections``."""
    path.write_text(
        "".join(
            f"[{section}]\n" + "".join(f"{key} = {value}\n" for key, value in values.items())
            for section, values in sections.items()
        )
    )
    return path


class ConductorProcess:
    """``jobboard_worker.py`` in a subprocess: one worker process's conductor."""

    def __init__(self, directory: Path, config_file: Path, *, block_at: str | None = None):
        self.directory = directory
        self.config_file = config_file
        self.block_at = block_at
        self.ready = directory / "ready"
        self.log_file = directory / "conductor.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> ConductorProcess:
        self.ready.unlink(missing_ok=True)
        env = dict(os.environ)
        env.pop("KERAMOS_TEST_BLOCK_AT", None)
        if self.block_at:
            env["KERAMOS_TEST_BLOCK_AT"] = self.block_at
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(WORKER), str(self.config_file), str(self.ready)],
                stdout=log, stderr=subprocess.STDOUT, env=env,
            )
        wait_for(lambda: self.ready.exists() or self.process.poll() is not None, 60,
                 "the conductor to start")
        if self.process.poll() is not None:
            raise AssertionError(f"conductor exited {self.process.returncode}:\n{self.log()}")
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def health(self) -> str:
        path = self.ready.with_suffix(".health")
        return path.read_text() if path.exists() else ""

    def kill(self) -> None:
        if self.alive:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self, timeout: float = 30) -> int | None:
        if not self.alive:
            return self.process.returncode if self.process else None
        self.process.terminate()
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.process.returncode

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""


def ledger_lines(ledger: Path) -> list[tuple[str, str, str, str]]:
    """The ledger as (what, request_id, step, host) tuples."""
    if not ledger.exists():
        return []
    return [tuple(line.split()) for line in ledger.read_text().splitlines() if line.strip()]
