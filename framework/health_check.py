"""``keramos-worker --check-health``: is every engine a worker needs reachable from here?

One line per engine (broker, jobboard, persistence, state store), ``ok`` or ``FAILED`` with the
reason, each check bounded in time; the exit code is 0 when all are ok, 1 otherwise. It uses
the worker's own configuration and drivers, so it checks what a worker started here would use.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable

import kombu
from oslo_config import cfg

from keramos.framework import intake, loader, messaging
from keramos.framework.jobboard import jobboard_health
from keramos.framework.records import TaskRecord

#: The longest one check may wait for its engine, in seconds.
CHECK_TIMEOUT = 5.0


@dataclasses.dataclass(frozen=True)
class Check:
    """The outcome of one engine's check."""

    engine: str
    ok: bool
    detail: str

    def line(self) -> str:
        """``engine: ok (detail)`` or ``engine: FAILED: detail``."""
        return f"{self.engine}: ok ({self.detail})" if self.ok else f"{self.engine}: FAILED: {self.detail}"


def _broker(conf: cfg.ConfigOpts) -> tuple[bool, str]:
    if intake.choose(conf) != "kombu":
        return True, f"{conf.transport_url or 'default transport'}: checked by the transport itself"
    failures = []
    for options in messaging.brokers(conf):
        where = f"{options['hostname']}:{options['port']}"
        try:
            with kombu.Connection(**{**options, "connect_timeout": CHECK_TIMEOUT}) as connection:
                connection.ensure_connection(max_retries=1, timeout=CHECK_TIMEOUT)
        except Exception as error:
            failures.append(f"{where}: {type(error).__name__}: {error}")
            continue
        return True, f"RabbitMQ at {where}"
    return False, "; ".join(failures) or "no broker in [DEFAULT] transport_url"


def _persistence(conf: cfg.ConfigOpts) -> tuple[bool, str]:
    if not conf.persistence.enabled:
        return True, "disabled: flows are not resumable"
    from keramos.framework.persistence import get_backend

    backend = get_backend(conf.persistence.connection, conf.persistence.synchronous)
    try:
        with contextlib.closing(backend.get_connection()) as connection:
            connection.validate()
    finally:
        backend.close()
    return True, backend.engine.url.render_as_string(hide_password=True)


def _state_store(conf: cfg.ConfigOpts) -> tuple[bool, str]:
    store = loader.load_state_store(conf)
    try:
        store.get(TaskRecord, "req-health-check")
    finally:
        store.close()
    return True, f"{conf.drivers.state_store} driver answers"


def _guarded(engine: str, check: Callable[[cfg.ConfigOpts], tuple[bool, str]], conf) -> Check:
    """Run ``check`` in a daemon thread; an engine that does not answer in time has failed."""
    outcome: list[Check] = []

    def run() -> None:
        try:
            ok, detail = check(conf)
        except Exception as error:
            outcome.append(Check(engine, False, f"{type(error).__name__}: {error}"))
        else:
            outcome.append(Check(engine, ok, detail))

    thread = threading.Thread(target=run, name=f"keramos-check-{engine}", daemon=True)
    thread.start()
    thread.join(2 * CHECK_TIMEOUT)
    if not outcome:
        return Check(engine, False, f"no answer within {2 * CHECK_TIMEOUT:g} s")
    return outcome[0]


def check_health(conf: cfg.ConfigOpts) -> list[Check]:
    """Check the broker, the jobboard, the persistence backend and the state store, in order."""
    return [
        _guarded("broker", _broker, conf),
        _guarded("jobboard", jobboard_health, conf),
        _guarded("persistence", _persistence, conf),
        _guarded("state store", _state_store, conf),
    ]
