"""The taskflow jobboard of ``[jobboard]``: how to reach it, and a guard that rides out outages.

Claims are taskflow's: :class:`GuardedBoard` only adds, on Redis and etcd, the claim expiry that
taskflow's conductors leave out (a Redis claim without one outlives a dead holder forever), and
turns an unreachable board into "no jobs for now" with a bounded backoff instead of an error
every poll.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

from oslo_config import cfg
from oslo_log import log as logging
from taskflow import exceptions as tf_exceptions
from taskflow.jobs import backends as job_backends
from taskflow.jobs import base as jobs_base

from keramos.framework.errors import ConfigError, KeramosError

LOG = logging.getLogger(__name__)

#: Backends whose claims take an expiry that the holder renews (``job.extend_expiry``).
EXPIRING_BACKENDS = ("redis", "etcd")

_DEFAULT_PORTS = {"redis": 6379, "rediss": 6379, "zookeeper": 2181, "etcd": 2379}

#: What taskflow raises when the board cannot be reached or answers nonsense.
BOARD_ERRORS: tuple[type[BaseException], ...] = (tf_exceptions.JobFailure, OSError)


class JobBoardUnavailable(KeramosError):
    """The jobboard could not be reached within ``[jobboard] connect_timeout``."""


def location(conf: cfg.ConfigOpts) -> str:
    """``[jobboard] url`` without its password, with the board name: for messages and logs."""
    parsed = urllib.parse.urlsplit(conf.jobboard.url)
    netloc = parsed.hostname or ""
    if parsed.port:
        netloc = f"{netloc}:{parsed.port}"
    if "," in parsed.netloc:
        netloc = parsed.netloc.rsplit("@", 1)[-1]
    return f"{conf.jobboard.backend} board {conf.jobboard.name!r} at {parsed.scheme}://{netloc}"


def _host_port(parsed: urllib.parse.SplitResult, scheme: str) -> tuple[str, int]:
    return parsed.hostname or "127.0.0.1", parsed.port or _DEFAULT_PORTS[scheme]


def board_conf(conf: cfg.ConfigOpts) -> dict[str, Any]:
    """The configuration taskflow's jobboard backend takes, from ``[jobboard]``.

    :raises ConfigError: the URL does not fit the backend.
    """
    group = conf.jobboard
    parsed = urllib.parse.urlsplit(group.url)
    scheme = parsed.scheme
    expected = {"redis": ("redis", "rediss"), "zookeeper": ("zookeeper",), "etcd": ("etcd",)}
    if scheme not in expected[group.backend]:
        raise ConfigError(
            f"[jobboard] url {location(conf)!r} does not fit backend {group.backend}: "
            f"expected {' or '.join(s + '://' for s in expected[group.backend])}"
        )
    timeout = group.connect_timeout
    if group.backend == "redis":
        host, port = _host_port(parsed, scheme)
        board: dict[str, Any] = {
            "board": "redis",
            "host": host,
            "port": port,
            "namespace": group.name.encode(),
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "health_check_interval": 10,
        }
        database = parsed.path.strip("/")
        if database:
            try:
                board["db"] = int(database)
            except ValueError:
                raise ConfigError(
                    f"[jobboard] url: Redis database {database!r} is not a number"
                ) from None
        if parsed.username:
            board["username"] = urllib.parse.unquote(parsed.username)
        if parsed.password:
            board["password"] = urllib.parse.unquote(parsed.password)
        if scheme == "rediss":
            board["ssl"] = True
        return board
    if group.backend == "zookeeper":
        hosts = parsed.netloc.rsplit("@", 1)[-1]
        return {"board": "zookeeper", "hosts": hosts, "path": f"/{group.name}", "timeout": timeout}
    host, port = _host_port(parsed, scheme)
    return {
        "board": "etcd",
        "host": host,
        "port": port,
        "path": f"/{group.name}",
        "ttl": max(1, round(group.claim_timeout)),
        "timeout": timeout,
    }


#: The extra of Keramos's distribution that installs each backend's client library.
_EXTRAS = {"redis": "jobboard", "zookeeper": "zookeeper", "etcd": "etcd"}


def make_board(conf: cfg.ConfigOpts, persistence: Any = None) -> jobs_base.JobBoard:
    """A new, unconnected taskflow jobboard for ``[jobboard]``; jobs load books from ``persistence``.

    :raises ConfigError: the backend cannot be loaded (its client library is missing) or the
        URL does not fit it.
    """
    settings = board_conf(conf)
    try:
        return job_backends.fetch(conf.jobboard.name, settings, persistence=persistence)
    except (tf_exceptions.NotFound, ImportError) as error:
        raise ConfigError(
            f"[jobboard] backend {conf.jobboard.backend} cannot be loaded: {error} "
            f"(install its client: pip install 'keramos[{_EXTRAS.get(conf.jobboard.backend, 'jobboard')}]')"
        ) from error


def connect(board: jobs_base.JobBoard, conf: cfg.ConfigOpts) -> None:
    """Connect ``board``, trying again until ``[jobboard] connect_timeout`` has passed.

    :raises JobBoardUnavailable: still unreachable then (one line naming the board and why).
    """
    deadline = time.monotonic() + conf.jobboard.connect_timeout
    delay = 0.05
    while True:
        try:
            board.connect()
            return
        except BOARD_ERRORS as error:
            if time.monotonic() + delay > deadline:
                raise JobBoardUnavailable(
                    f"cannot reach the {location(conf)} within "
                    f"{conf.jobboard.connect_timeout:g}s: {_reason(error)}"
                ) from error
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


def _reason(error: BaseException) -> str:
    cause = error.__cause__ or getattr(error, "cause", None)
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    if cause is not None and str(cause):
        text = f"{text}: {str(cause).splitlines()[0]}"
    return text


@contextlib.contextmanager
def jobboard_from_conf(conf: cfg.ConfigOpts, persistence: Any = None) -> Iterator[jobs_base.JobBoard]:
    """The connected jobboard of ``[jobboard]``, closed on exit.

    ``persistence`` is the taskflow persistence backend jobs load their logbook from (``None``
    when only the listings are read). Connecting waits at most ``[jobboard] connect_timeout``.

    :raises JobBoardUnavailable: the board cannot be reached.
    :raises ConfigError: the backend cannot be loaded or the URL does not fit it.
    """
    board = make_board(conf, persistence)
    try:
        connect(board, conf)
        yield board
    finally:
        with contextlib.suppress(Exception):
            board.close()


def jobboard_health(conf: cfg.ConfigOpts) -> tuple[bool, str]:
    """Whether the jobboard of ``[jobboard]`` answers, within ``[jobboard] connect_timeout``.

    Returns ``(True, "redis board 'keramos' at redis://host:6379: 3 job(s)")`` or
    ``(False, "cannot reach ...")``; never raises. ``(True, "jobboard mode disabled")`` when
    ``[jobboard] enabled`` is false.
    """
    if not conf.jobboard.enabled:
        return True, "jobboard mode disabled"
    try:
        with jobboard_from_conf(conf) as board:
            count = board.job_count
    except KeramosError as error:
        return False, str(error)
    except BOARD_ERRORS as error:
        return False, f"{location(conf)}: {_reason(error)}"
    return True, f"{location(conf)}: {count} job(s)"


def count_waiting(conf: cfg.ConfigOpts) -> int | None:
    """How many jobs on the board of ``[jobboard]`` no conductor has claimed; ``None`` (logged)
    when the board cannot be read."""
    try:
        with jobboard_from_conf(conf) as board:
            return sum(1 for _ in board.iterjobs(only_unclaimed=True))
    except (KeramosError, *BOARD_ERRORS) as error:
        LOG.warning("cannot count the jobs waiting on the %s: %s", location(conf), error)
        return None


class Health:
    """A conductor's view of its board: reachable or degraded, and since when (thread-safe).

    Logs once per change: a warning when the board goes away, info when it is back.
    """

    def __init__(self, what: str) -> None:
        self._what = what
        self._lock = threading.Lock()
        self._ok = True
        self._detail = "not connected yet"
        self._since = time.monotonic()

    def good(self, detail: str) -> None:
        """The board answered."""
        with self._lock:
            changed = not self._ok
            self._ok, self._detail = True, detail
            if changed:
                self._since = time.monotonic()
        if changed:
            LOG.info("%s: reachable again (%s)", self._what, detail)

    def bad(self, detail: str) -> None:
        """The board did not answer; ``detail`` says why."""
        with self._lock:
            changed = self._ok
            self._ok, self._detail = False, detail
            if changed:
                self._since = time.monotonic()
        if changed:
            LOG.warning("%s: unreachable, running flows go on, retrying: %s", self._what, detail)

    @property
    def degraded(self) -> bool:
        """``True`` while the board is unreachable."""
        return not self._ok

    def status(self) -> tuple[bool, str]:
        """``(ok, detail)``; ``detail`` says for how long when degraded."""
        with self._lock:
            if self._ok:
                return True, self._detail
            return False, f"{self._detail} (for {time.monotonic() - self._since:.0f}s)"


class Slots:
    """How many jobs a conductor may still claim: taken by a claim, given back when the job is
    settled; :meth:`wait_free` lets the claiming loop sleep until one is free."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._taken = 0
        self._condition = threading.Condition()

    def take(self) -> None:
        """A job was claimed."""
        with self._condition:
            self._taken += 1

    def release(self) -> None:
        """A claimed job was consumed, abandoned or trashed."""
        with self._condition:
            self._taken = max(0, self._taken - 1)
            self._condition.notify_all()

    @property
    def full(self) -> bool:
        """Whether every slot is taken."""
        with self._condition:
            return self._taken >= self._size

    def wait_free(self, stopping: threading.Event, timeout: float) -> None:
        """Return once a slot is free, ``stopping`` is set or ``timeout`` seconds have passed."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while self._taken >= self._size and not stopping.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._condition.wait(min(left, 0.5))


class GuardedBoard:
    """What a taskflow conductor needs of a jobboard, with claim expiries and outage handling.

    - ``claim`` passes ``[jobboard] claim_timeout`` as the claim's expiry on Redis and etcd, so
      that the claims of a process that dies expire (its conductor renews them while it lives);
    - ``iterjobs`` lists unclaimed jobs only; while the board is unreachable it marks ``health``
      degraded, waits a backoff that doubles up to ``[jobboard] max_backoff`` (cut short by
      ``stopping``) and lists nothing, so the conductor polls again without failing.
    """

    def __init__(
        self,
        board: jobs_base.JobBoard,
        conf: cfg.ConfigOpts,
        health: Health,
        stopping: threading.Event,
        slots: Slots | None = None,
    ) -> None:
        self.board = board
        self._conf = conf.jobboard
        self._expiry = conf.jobboard.claim_timeout if conf.jobboard.backend in EXPIRING_BACKENDS else None
        self._health = health
        self._stopping = stopping
        self._slots = slots
        self._listing: collections.deque[Any] = collections.deque()
        self._backoff = 0.0
        self._where = location(conf)

    @property
    def name(self) -> str:
        """The board's name."""
        return self.board.name

    @property
    def connected(self) -> bool:
        """Whether the board is connected."""
        return self.board.connected

    def connect(self) -> None:
        """Connect the board (taskflow's errors propagate)."""
        self.board.connect()

    def close(self) -> None:
        """Close the board."""
        self.board.close()

    def register_entity(self, entity: Any) -> None:
        """Register the conductor (a no-op on Redis)."""
        with contextlib.suppress(*BOARD_ERRORS):
            self.board.register_entity(entity)

    def failed(self, error: BaseException) -> None:
        """The board failed to answer: mark health degraded and wait the next backoff."""
        self._health.bad(_reason(error))
        self._backoff = min(max(self._backoff * 2, 0.25), self._conf.max_backoff)
        self._stopping.wait(self._backoff)

    def iterjobs(self, only_unclaimed: bool = True, ensure_fresh: bool = False) -> Iterator[Any]:
        """Unclaimed jobs, oldest first; none while the board is unreachable.

        One listing of the board serves many calls: jobs are handed out from it, oldest first,
        until it is used up (or ``ensure_fresh``), then the board is listed again; a job claimed
        meanwhile by another conductor only fails to be claimed. So claiming costs no full
        listing per job, and a backlog runs in the order it was posted. While every slot of the
        conductor is taken, waits (up to a minute) for one to be freed before handing out a job,
        and stops handing out when the slots are taken again, so that no job is taken out of
        the listing without being claimed.
        """
        if self._slots is not None:
            self._slots.wait_free(self._stopping, 60.0)
        try:
            if ensure_fresh or not self._listing:
                fetched = list(self.board.iterjobs(only_unclaimed=True, ensure_fresh=ensure_fresh))
                fetched.sort(key=lambda job: getattr(job, "sequence", 0))
                self._listing = collections.deque(fetched)
            self._answered()
        except BOARD_ERRORS as error:
            self.failed(error)
            return
        while self._listing and not (self._slots is not None and self._slots.full):
            yield self._listing.popleft()

    def _answered(self) -> None:
        if self._backoff:
            self._backoff = 0.0
        if self._health.degraded:
            self._health.good(self._where)

    def claim(self, job: Any, who: str) -> None:
        """Claim ``job`` for ``who``, with the claim expiry on Redis and etcd."""
        if self._expiry is None:
            self.board.claim(job, who)
        else:
            self.board.claim(job, who, expiry=self._expiry)
        if self._slots is not None:
            self._slots.take()

    def _settle(self, action: Any, job: Any, who: str) -> None:
        """Do ``action(job, who)``, trying again while the board is away, for at most half the
        claim timeout (a flow that ended during an outage is then not claimed again; if the
        board stays away longer, the claim expires and the next claimer finds the task record
        ended and only takes the job off the board)."""
        deadline = time.monotonic() + self._conf.claim_timeout / 2
        delay = 0.1
        while True:
            try:
                action(job, who)
                self._answered()
                return
            except BOARD_ERRORS as error:
                if time.monotonic() + delay > deadline or self._stopping.is_set():
                    raise
                self._health.bad(_reason(error))
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def consume(self, job: Any, who: str) -> None:
        """Take a finished job off the board."""
        self._settle(self.board.consume, job, who)

    def abandon(self, job: Any, who: str) -> None:
        """Give a job back to the board, for any conductor to claim."""
        self._settle(self.board.abandon, job, who)

    def trash(self, job: Any, who: str) -> None:
        """Move a parked job off the board (taskflow's trash)."""
        self._settle(self.board.trash, job, who)

    def owner_of(self, job: Any) -> str | None:
        """Who holds the claim of ``job`` now (``None``: nobody)."""
        try:
            owner = self.board.find_owner(job)
        except TypeError:
            return None
        if isinstance(owner, dict):
            owner = owner.get("owner")
        return owner
