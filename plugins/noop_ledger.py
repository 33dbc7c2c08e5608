"""The noop drivers' ledger: what each noop driver "created", kept where a kill -9 cannot lose it.

The noop drivers simulate infrastructure; what they simulate must outlive the worker process for
a resumed flow to find the instance, port, certificate or agent state it left behind, and for a
fault test to count every boot and delete across a crash. Each noop driver keeps it in a ledger:

* :class:`NoopLedger` (``[noop_drivers] ledger = sqlite``, the default): one SQLite file,
  ``$state_path/noop-ledger.sqlite`` (:data:`LEDGER_FILE`), created ``0600``, in WAL mode with
  ``synchronous=NORMAL``: a committed call survives a kill -9 of the worker (a power loss may
  lose the last moments). Every driver instance opens its own connection, guarded by its own
  lock; two processes on one ``state_path`` see each other's writes.
* :class:`MemoryLedger` (``ledger = memory``): the same tables in this driver instance's memory,
  for speed where nothing has to survive the process.

Two tables, written together in one short transaction per driver call:

``live``
    What exists now, by ``(kind, key)``: a JSON value and the ``subject`` it is for (an amphora
    id, a certificate's name). Drivers read it to answer (``get`` of an instance, a token).
``events``
    Append-only: one row per change (``seq``, time, process id, ``kind``, ``action``, ``key``,
    ``subject``), never a value, so it holds no secret. Fault tests count from it:
    ``NoopLedger(path).count("compute", "build", subject="amp-1") == 1``. Removing what is not
    there (an idempotent delete) changes nothing and appends nothing, so for every kind the live
    entries are the puts of new keys less the removals. It is never pruned: a few rows per flow,
    for workers that run on simulated infrastructure (tests, the demo, benchmarks).

A current-state table beside the event log, rather than a view replaying the log, keeps the hot
reads (``wait_for_amphora_active`` polls the compute driver) a primary-key lookup, and the log
free of values (keys, tokens) while it still counts everything. The kinds and actions each noop
driver writes are listed in :mod:`keramos.plugins.noop`.

Reading a ledger from a test::

    from keramos.plugins.noop_ledger import NoopLedger, ledger_path

    ledger = NoopLedger(ledger_path(conf))          # or worker.drivers.compute.ledger
    ledger.count("compute", "build", subject="amp-1")
    ledger.live("network")                          # {port_id: {...}}
    [event.action for event in ledger.events("compute", subject="amp-1")]
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from oslo_config import cfg

from keramos.framework.errors import DriverError

GROUP = "noop_drivers"

#: The ledger's file name under ``[DEFAULT] state_path``.
LEDGER_FILE = "noop-ledger.sqlite"

#: Mode of the ledger file: it holds the simulated agents' keys and activation tokens.
LEDGER_MODE = 0o600

noop_opts = [
    cfg.StrOpt(
        "ledger",
        default="sqlite",
        choices=[
            (
                "sqlite",
                f"keep what the noop drivers create in $state_path/{LEDGER_FILE} (WAL, 0600): "
                "a worker killed and restarted on the same state_path resumes its flows on them, "
                "and tests count boots and deletes across the kill",
            ),
            (
                "memory",
                "keep it in each driver's memory: faster, lost with the process, so flows "
                "interrupted by a crash cannot be resumed on the noop drivers",
            ),
        ],
        help="Where the noop drivers keep the instances, ports, certificates and simulated "
        "agent states they create.",
    ),
    cfg.FloatOpt(
        "call_delay",
        default=0.0,
        min=0.0,
        help="Simulated latency of every driver call, for benchmarks and soak tests: seconds "
        "each call of a noop driver sleeps before it answers (0: none).",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    """Register ``[noop_drivers]`` on ``conf`` (every noop driver does, when it is built)."""
    conf.register_opts(noop_opts, group=GROUP)


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """The ``oslo.config.opts`` entry point ``keramos.noop_drivers``, for the sample config."""
    return [(GROUP, list(noop_opts))]


def ledger_path(conf: cfg.ConfigOpts) -> str:
    """The SQLite ledger file of the noop drivers configured by ``conf``."""
    return os.path.join(conf.state_path, LEDGER_FILE)


def open_ledger(conf: cfg.ConfigOpts) -> Ledger:
    """A new ledger for one driver instance, as ``[noop_drivers] ledger`` says."""
    register_opts(conf)
    if conf[GROUP].ledger == "memory":
        return MemoryLedger()
    return NoopLedger(ledger_path(conf))


@dataclasses.dataclass(frozen=True)
class LedgerEvent:
    """One change in a ledger: ``action`` on ``kind``'s entry ``key``, for ``subject``."""

    seq: int
    at: float
    pid: int
    kind: str
    action: str
    key: str
    subject: str | None


class LedgerWriter(abc.ABC):
    """The reads and writes of one ledger transaction (:meth:`Ledger.writing`)."""

    @abc.abstractmethod
    def get(self, kind: str, key: str) -> dict[str, Any] | None:
        """The live value of ``kind``'s ``key``, or ``None``."""

    @abc.abstractmethod
    def put(self, kind: str, key: str, value: dict[str, Any], *, action: str, subject: str | None) -> None:
        """Set ``kind``'s ``key`` to ``value`` (JSON-able) and append the event ``action``."""

    @abc.abstractmethod
    def remove(self, kind: str, key: str, *, action: str) -> dict[str, Any] | None:
        """Remove ``kind``'s ``key`` and return its value; append ``action`` (with the removed
        entry's subject) only if it was there."""


class Ledger(abc.ABC):
    """What a noop driver keeps: live entries by ``(kind, key)`` and the events that made them.

    Thread-safe. Each driver instance owns one ledger; :meth:`close` releases it (a later call
    opens it again).
    """

    @abc.abstractmethod
    def writing(self) -> contextlib.AbstractContextManager[LedgerWriter]:
        """One transaction: every write in the block is kept, or none (if the block raises)."""

    @abc.abstractmethod
    def get(self, kind: str, key: str) -> dict[str, Any] | None:
        """The live value of ``kind``'s ``key``, or ``None``."""

    @abc.abstractmethod
    def live(self, kind: str, *, subject: str | None = None) -> dict[str, dict[str, Any]]:
        """Every live entry of ``kind`` (for ``subject`` only, if given): key -> value."""

    @abc.abstractmethod
    def events(
        self,
        kind: str | None = None,
        *,
        action: str | None = None,
        subject: str | None = None,
        key: str | None = None,
    ) -> list[LedgerEvent]:
        """The events matching every filter given, oldest first."""

    def close(self) -> None:
        """Release the connection, if any."""

    def put(self, kind: str, key: str, value: dict[str, Any], *, action: str, subject: str | None = None) -> None:
        """Set ``kind``'s ``key`` to ``value`` and append ``action``, in one transaction."""
        with self.writing() as writer:
            writer.put(kind, key, value, action=action, subject=subject)

    def remove(self, kind: str, key: str, *, action: str) -> dict[str, Any] | None:
        """Remove ``kind``'s ``key`` in one transaction; its value, or ``None`` if absent."""
        with self.writing() as writer:
            return writer.remove(kind, key, action=action)

    def get_or_put(
        self,
        kind: str,
        key: str,
        make: Callable[[], dict[str, Any]],
        *,
        action: str,
        subject: str | None = None,
    ) -> dict[str, Any]:
        """The value of ``kind``'s ``key``; if absent, ``make()`` it and put it, atomically (two
        processes asking at once get the same value)."""
        with self.writing() as writer:
            value = writer.get(kind, key)
            if value is None:
                value = make()
                writer.put(kind, key, value, action=action, subject=subject)
            return value

    def count(self, kind: str, action: str, *, subject: str | None = None) -> int:
        """How many times ``action`` happened to ``kind`` (for ``subject`` only, if given)."""
        return len(self.events(kind, action=action, subject=subject))


def _matches(event: LedgerEvent, filters: dict[str, str | None]) -> bool:
    return all(value is None or getattr(event, name) == value for name, value in filters.items())


class _MemoryWriter(LedgerWriter):
    """Changes made on top of a memory ledger's entries, applied if the transaction commits."""

    def __init__(self, ledger: MemoryLedger) -> None:
        self._ledger = ledger
        self.changes: dict[tuple[str, str], tuple[str | None, str] | None] = {}
        self.events: list[LedgerEvent] = []

    def _entry(self, kind: str, key: str) -> tuple[str | None, str] | None:
        if (kind, key) in self.changes:
            return self.changes[(kind, key)]
        return self._ledger._live.get((kind, key))

    def get(self, kind: str, key: str) -> dict[str, Any] | None:
        entry = self._entry(kind, key)
        return None if entry is None else json.loads(entry[1])

    def _append(self, kind: str, key: str, action: str, subject: str | None) -> None:
        seq = len(self._ledger._events) + len(self.events) + 1
        self.events.append(LedgerEvent(seq, time.time(), os.getpid(), kind, action, key, subject))

    def put(self, kind: str, key: str, value: dict[str, Any], *, action: str, subject: str | None) -> None:
        self.changes[(kind, key)] = (subject, json.dumps(value))
        self._append(kind, key, action, subject)

    def remove(self, kind: str, key: str, *, action: str) -> dict[str, Any] | None:
        entry = self._entry(kind, key)
        if entry is None:
            return None
        self.changes[(kind, key)] = None
        self._append(kind, key, action, entry[0])
        return json.loads(entry[1])


class MemoryLedger(Ledger):
    """A ledger in this object's memory (values kept as JSON, as on disk): lost with it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: dict[tuple[str, str], tuple[str | None, str]] = {}
        self._events: list[LedgerEvent] = []

    @contextlib.contextmanager
    def writing(self) -> Iterator[LedgerWriter]:
        """One transaction, under this ledger's lock; kept only if the block returns."""
        with self._lock:
            writer = _MemoryWriter(self)
            yield writer
            for entry_id, entry in writer.changes.items():
                if entry is None:
                    self._live.pop(entry_id, None)
                else:
                    self._live[entry_id] = entry
            self._events += writer.events

    def get(self, kind: str, key: str) -> dict[str, Any] | None:
        """The live value of ``kind``'s ``key``, or ``None``."""
        with self._lock:
            entry = self._live.get((kind, key))
        return None if entry is None else json.loads(entry[1])

    def live(self, kind: str, *, subject: str | None = None) -> dict[str, dict[str, Any]]:
        """Every live entry of ``kind`` (for ``subject`` only, if given): key -> value."""
        with self._lock:
            entries = list(self._live.items())
        return {
            key: json.loads(value)
            for (entry_kind, key), (entry_subject, value) in entries
            if entry_kind == kind and (subject is None or entry_subject == subject)
        }

    def events(
        self,
        kind: str | None = None,
        *,
        action: str | None = None,
        subject: str | None = None,
        key: str | None = None,
    ) -> list[LedgerEvent]:
        """The events matching every filter given, oldest first."""
        filters = {"kind": kind, "action": action, "subject": subject, "key": key}
        with self._lock:
            return [event for event in self._events if _matches(event, filters)]


_SCHEMA = """
CREATE TABLE IF NOT EXISTS live (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    subject TEXT,
    value TEXT NOT NULL,
    PRIMARY KEY (kind, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    pid INTEGER NOT NULL,
    kind TEXT NOT NULL,
    action TEXT NOT NULL,
    key TEXT NOT NULL,
    subject TEXT
);
"""


class _SQLiteWriter(LedgerWriter):
    def __init__(self, connection: sqlite3.Connection) -> None:
        self._db = connection

    def get(self, kind: str, key: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT value FROM live WHERE kind = ? AND key = ?", (kind, key)).fetchone()
        return None if row is None else json.loads(row[0])

    def _append(self, kind: str, key: str, action: str, subject: str | None) -> None:
        self._db.execute(
            "INSERT INTO events (at, pid, kind, action, key, subject) VALUES (?, ?, ?, ?, ?, ?)",
            (time.time(), os.getpid(), kind, action, key, subject),
        )

    def put(self, kind: str, key: str, value: dict[str, Any], *, action: str, subject: str | None) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO live (kind, key, subject, value) VALUES (?, ?, ?, ?)",
            (kind, key, subject, json.dumps(value)),
        )
        self._append(kind, key, action, subject)

    def remove(self, kind: str, key: str, *, action: str) -> dict[str, Any] | None:
        row = self._db.execute(
            "DELETE FROM live WHERE kind = ? AND key = ? RETURNING subject, value", (kind, key)
        ).fetchone()
        if row is None:
            return None
        self._append(kind, key, action, row[0])
        return json.loads(row[1])


class NoopLedger(Ledger):
    """The SQLite ledger at ``path`` (created ``0600``, its directory ``0700``, if missing).

    The connection opens at the first call, so a driver that is built and never used creates no
    file; it opens again in a forked child. Writes take the database's write lock at once
    (``BEGIN IMMEDIATE``) and wait up to ``timeout`` seconds for another process's.
    """

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 30.0) -> None:
        self.path = os.fspath(path)
        self._timeout = timeout
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._pid = 0

    def _connection(self) -> sqlite3.Connection:
        """This process's connection (call with the lock held)."""
        if self._db is not None and self._pid == os.getpid():
            return self._db
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, mode=0o700, exist_ok=True)
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, LEDGER_MODE))
        db = sqlite3.connect(
            self.path, timeout=self._timeout, isolation_level=None, check_same_thread=False
        )
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
        except BaseException:
            db.close()
            raise
        self._db, self._pid = db, os.getpid()
        return db

    @contextlib.contextmanager
    def _database_errors(self) -> Iterator[None]:
        """A file that cannot be opened or written, or a lock another process held too long, as
        the :class:`DriverError` driver contracts promise (retryable for the lock)."""
        try:
            yield
        except (sqlite3.Error, OSError) as error:
            retryable = isinstance(error, sqlite3.OperationalError) and "locked" in str(error)
            raise DriverError(f"noop ledger {self.path}: {error}", retryable=retryable) from error

    @contextlib.contextmanager
    def writing(self) -> Iterator[LedgerWriter]:
        """One ``BEGIN IMMEDIATE`` transaction, committed if the block returns."""
        with self._lock, self._database_errors():
            db = self._connection()
            db.execute("BEGIN IMMEDIATE")
            try:
                yield _SQLiteWriter(db)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def _query(self, sql: str, parameters: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with self._lock, self._database_errors():
            return self._connection().execute(sql, parameters).fetchall()

    def get(self, kind: str, key: str) -> dict[str, Any] | None:
        """The live value of ``kind``'s ``key``, or ``None``."""
        rows = self._query("SELECT value FROM live WHERE kind = ? AND key = ?", (kind, key))
        return json.loads(rows[0][0]) if rows else None

    def live(self, kind: str, *, subject: str | None = None) -> dict[str, dict[str, Any]]:
        """Every live entry of ``kind`` (for ``subject`` only, if given): key -> value."""
        rows = self._query(
            "SELECT key, value FROM live WHERE kind = ? AND (? IS NULL OR subject = ?) ORDER BY key",
            (kind, subject, subject),
        )
        return {key: json.loads(value) for key, value in rows}

    def events(
        self,
        kind: str | None = None,
        *,
        action: str | None = None,
        subject: str | None = None,
        key: str | None = None,
    ) -> list[LedgerEvent]:
        """The events matching every filter given, oldest first."""
        filters = {"kind": kind, "action": action, "subject": subject, "key": key}
        wanted = {name: value for name, value in filters.items() if value is not None}
        # Column names from the fixed filters above; the values are bound parameters.
        where = " AND ".join(f"{name} = ?" for name in wanted) or "1"
        rows = self._query(
            f"SELECT seq, at, pid, kind, action, key, subject FROM events WHERE {where} ORDER BY seq",
            tuple(wanted.values()),
        )
        return [LedgerEvent(*row) for row in rows]

    def close(self) -> None:
        """Close this process's connection; the next call opens a new one."""
        with self._lock:
            if self._db is not None and self._pid == os.getpid():
                self._db.close()
            self._db = None
