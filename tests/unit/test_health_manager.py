"""The health manager's decisions on a fake clock: silence, the threshold, convergence."""

from __future__ import annotations

import datetime as dt
import logging
import time

import pytest

from keramos.framework.agent_protocol import heartbeat as hb
from keramos.framework.config import make_conf
from keramos.framework.errors import ConfigError
from keramos.framework.records import (
    AmphoraRecord,
    AmphoraStatus,
    LoadBalancerRecord,
    TaskRecord,
    TaskState,
)
from keramos.plugins.health.checks import FailoverThreshold, HealthChecker, HeartbeatRecorder
from keramos.plugins.health.manager import HealthManager, HeartbeatListener
from keramos.plugins.state_store.memory import MemoryStateStore
from keramos.plugins.state_store.sqlalchemy import SQLAlchemyStateStore
from tests.unit.health_helpers import CastRecorder

TIMEOUT = 60.0
KEY = "health-key"
LISTENERS = [{"id": "web", "protocol": "HTTP", "address": "10.0.0.1", "port": 80, "default_pool": "app"}]
POOLS = [{"id": "app", "protocol": "HTTP", "members": [{"id": "m1", "address": "10.0.0.2", "port": 8080}]}]


class FakeClock:
    """Seconds since the epoch, moved by hand; starts at the real time like the records do."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def datetime(self, offset: float = 0.0) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.now + offset, tz=dt.timezone.utc)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store():
    return MemoryStateStore(make_conf(config_files=[]))


@pytest.fixture
def cast() -> CastRecorder:
    return CastRecorder()


def make_checker(store, cast, clock, threshold: str = "0.5", started_ago: float = 3600) -> HealthChecker:
    return HealthChecker(
        store,
        HeartbeatRecorder(store, clock),
        cast,
        heartbeat_timeout=TIMEOUT,
        threshold=FailoverThreshold.parse(threshold),
        convergence_grace=5.0,
        clock=clock,
        started_at=clock() - started_ago,
    )


def add_amphorae(store, clock, count: int, heard_ago: float = 0.0, status: str = AmphoraStatus.READY) -> list[str]:
    ids = []
    for number in range(len(store.find(AmphoraRecord)), len(store.find(AmphoraRecord)) + count):
        amphora_id = f"amp-{number}"
        store.save(
            AmphoraRecord(
                amphora_id, status=status, address="10.0.0.9", agent_port=9443,
                last_heartbeat_at=clock.datetime(-heard_ago),
                updated_at=clock.datetime(-3600),
            )
        )
        ids.append(amphora_id)
    return ids


def test_thresholds_parse_as_counts_and_fractions():
    assert FailoverThreshold.parse("3").limit(100) == 3
    assert FailoverThreshold.parse("0.25").limit(10) == 2
    assert FailoverThreshold.parse("50%").limit(10) == 5
    assert FailoverThreshold.parse("0.1").limit(2) == 1, "one silent amphora is always failed over"


@pytest.mark.parametrize("text", ["0", "-1", "1.5", "150%", "0.0", "half", "", "nan"])
def test_a_bad_threshold_is_a_config_error_naming_the_option(text):
    with pytest.raises(ConfigError, match="failover_threshold"):
        FailoverThreshold.parse(text)


def test_an_amphora_silent_past_the_timeout_is_failed_over_once(store, cast, clock):
    silent, alive = add_amphorae(store, clock, 2)
    checker = make_checker(store, cast, clock)
    store.update(AmphoraRecord, alive, last_heartbeat_at=clock.datetime(TIMEOUT))
    clock.now += TIMEOUT - 1
    assert checker.check().failed_over == []
    clock.now += 2
    outcome = checker.check()
    assert outcome.silent == [silent] and outcome.failed_over == [silent]
    assert cast.events() == [("failover_amphora", {"amphora_id": silent})]
    task = store.get(TaskRecord, cast.casts[0][2])
    assert task.event == "failover_amphora" and task.resource_id == silent
    assert task.state == TaskState.PENDING
    clock.now += 10
    checker.check()
    assert len(cast.casts) == 1, "not cast again while its failover is pending"


def test_a_failover_that_ended_is_cast_again_if_the_amphora_stays_silent(store, cast, clock):
    add_amphorae(store, clock, 1, heard_ago=TIMEOUT + 1)
    checker = make_checker(store, cast, clock)
    checker.check()
    store.update(TaskRecord, cast.casts[0][2], state=TaskState.FAILURE)
    checker.check()
    assert len(cast.casts) == 2


def test_only_ready_amphorae_are_failed_over(store, cast, clock):
    for status in (AmphoraStatus.PENDING_CREATE, AmphoraStatus.ERROR, AmphoraStatus.DELETED):
        add_amphorae(store, clock, 1, heard_ago=TIMEOUT * 10, status=status)
    assert make_checker(store, cast, clock).check().silent == []
    assert cast.casts == []


def test_a_ready_amphora_never_heard_from_is_timed_from_its_last_change(store, cast, clock):
    store.save(AmphoraRecord("amp-new", status=AmphoraStatus.READY, updated_at=clock.datetime(-10)))
    checker = make_checker(store, cast, clock)
    assert checker.check().silent == []
    clock.now += TIMEOUT
    assert checker.check().failed_over == ["amp-new"]


def test_a_manager_just_started_gives_every_amphora_a_full_timeout(store, cast, clock):
    add_amphorae(store, clock, 1, heard_ago=TIMEOUT * 10)
    checker = make_checker(store, cast, clock, started_ago=0)
    assert checker.check().silent == []
    clock.now += TIMEOUT + 1
    assert len(checker.check().failed_over) == 1


def test_too_many_silent_at_once_is_a_partition_and_nothing_is_failed_over(store, cast, clock, caplog):
    add_amphorae(store, clock, 3, heard_ago=TIMEOUT + 5)
    add_amphorae(store, clock, 1)
    caplog.set_level(logging.ERROR)
    outcome = make_checker(store, cast, clock, threshold="0.5").check()
    assert outcome.blocked and len(outcome.silent) == 3 and outcome.failed_over == []
    assert cast.casts == [] and store.find(TaskRecord) == []
    assert "3 of 4 READY amphorae silent" in caplog.text and "network partition" in caplog.text


def test_silent_amphorae_within_the_threshold_are_all_failed_over(store, cast, clock):
    silent = add_amphorae(store, clock, 2, heard_ago=TIMEOUT + 5)
    add_amphorae(store, clock, 2)
    outcome = make_checker(store, cast, clock, threshold="2").check()
    assert not outcome.blocked and sorted(outcome.failed_over) == silent


def test_a_count_threshold_blocks_beyond_the_count(store, cast, clock):
    add_amphorae(store, clock, 3, heard_ago=TIMEOUT + 5)
    add_amphorae(store, clock, 7)
    assert make_checker(store, cast, clock, threshold="2").check().blocked
    assert cast.casts == []


def test_a_failed_cast_is_recorded_as_a_failure_and_retried_next_time(store, cast, clock, caplog):
    add_amphorae(store, clock, 1, heard_ago=TIMEOUT + 5)
    checker = make_checker(store, cast, clock)
    cast.fail = True
    assert checker.check().failed_over == []
    [task] = store.find(TaskRecord)
    assert task.state == TaskState.FAILURE and "broker unreachable" in task.message
    cast.fail = False
    assert len(checker.check().failed_over) == 1


def save_loadbalancer(store, clock, lb_id: str = "lb-1", running: int = 3, changed_ago: float = 600) -> None:
    store.save(
        LoadBalancerRecord(
            lb_id, config_version=running, running_version=running, config="global\n",
            description={"listeners": LISTENERS, "pools": POOLS},
            updated_at=clock.datetime(-changed_ago),
        )
    )


def report(checker: HealthChecker, amphora_id: str, sequence: int = 1, **versions: int) -> None:
    checker.recorder.record(hb.Heartbeat(amphora_id, sequence, checker.clock(), versions))


def test_an_amphora_running_an_older_version_gets_the_configuration_pushed_again(store, cast, clock):
    first, second = add_amphorae(store, clock, 2)
    save_loadbalancer(store, clock, running=3)
    checker = make_checker(store, cast, clock)
    report(checker, first, **{"lb-1": 2})
    report(checker, second, **{"lb-1": 3})
    outcome = checker.check()
    assert outcome.pushed == ["lb-1"]
    [(event, payload)] = cast.events()
    assert event == "push_config"
    assert payload == {"lb_id": "lb-1", "amphora_ids": [first, second], "listeners": LISTENERS, "pools": POOLS}
    task = store.get(TaskRecord, cast.casts[0][2])
    assert task.resource_id == "lb-1" and task.state == TaskState.PENDING
    checker.check()
    assert len(cast.casts) == 1, "not pushed again while the push is pending"


def test_current_and_newer_versions_push_nothing(store, cast, clock):
    first, second = add_amphorae(store, clock, 2)
    save_loadbalancer(store, clock, running=3)
    checker = make_checker(store, cast, clock)
    report(checker, first, **{"lb-1": 3})
    report(checker, second, **{"lb-1": 4})
    assert checker.check().pushed == [] and cast.casts == []


def test_reports_right_after_a_push_was_recorded_are_not_acted_on(store, cast, clock):
    [amphora] = add_amphorae(store, clock, 1)
    save_loadbalancer(store, clock, running=3, changed_ago=1)
    checker = make_checker(store, cast, clock)
    report(checker, amphora, **{"lb-1": 2})
    assert checker.check().pushed == []
    clock.now += 10
    report(checker, amphora, 2, **{"lb-1": 2})
    assert checker.check().pushed == ["lb-1"]


def test_no_push_for_a_load_balancer_without_a_recorded_configuration(store, cast, clock):
    [amphora] = add_amphorae(store, clock, 1)
    checker = make_checker(store, cast, clock)
    report(checker, amphora, **{"lb-unknown": 1})
    assert checker.check().pushed == []


def test_no_push_while_one_of_the_amphorae_is_failing_over(store, cast, clock):
    first, second = add_amphorae(store, clock, 2)
    save_loadbalancer(store, clock)
    store.save(TaskRecord("req-failover", "failover_amphora", resource_id=second))
    checker = make_checker(store, cast, clock)
    report(checker, first, **{"lb-1": 1})
    report(checker, second, **{"lb-1": 3})
    assert checker.check().pushed == []


def test_reports_older_than_the_timeout_are_forgotten(store, cast, clock):
    [amphora] = add_amphorae(store, clock, 1)
    save_loadbalancer(store, clock)
    checker = make_checker(store, cast, clock)
    report(checker, amphora, **{"lb-1": 1})
    clock.now += TIMEOUT + 1
    store.update(AmphoraRecord, amphora, last_heartbeat_at=clock.datetime())
    assert checker.check().pushed == []


def test_a_heartbeat_is_recorded_on_its_amphora(store, clock):
    [amphora] = add_amphorae(store, clock, 1, heard_ago=100)
    recorder = HeartbeatRecorder(store, clock)
    assert recorder.record(hb.Heartbeat(amphora, 1, clock(), {"lb-1": 2}))
    assert store.get(AmphoraRecord, amphora).last_heartbeat_at == clock.datetime()
    assert recorder.reports(clock() - 1)[0].heartbeat.config_versions == {"lb-1": 2}


def test_a_heartbeat_from_an_unknown_amphora_is_ignored_and_logged(store, clock, caplog):
    caplog.set_level(logging.WARNING)
    recorder = HeartbeatRecorder(store, clock)
    assert not recorder.record(hb.Heartbeat("amp-ghost", 1, clock(), {}))
    assert store.find(AmphoraRecord) == [] and recorder.reports(0) == []
    assert "unknown amphora amp-ghost" in caplog.text


class BrokenStore(MemoryStateStore):
    def update(self, *args, **kwargs):
        raise RuntimeError("database is locked")


def test_no_error_escapes_the_listener(clock, caplog):
    caplog.set_level(logging.WARNING)
    store = BrokenStore(make_conf(config_files=[]))
    verifier = hb.HeartbeatVerifier(KEY, replay_window=30, clock=clock)
    listener = HeartbeatListener(None, verifier, HeartbeatRecorder(store, clock))
    assert listener.handle(b"garbage", ("10.0.0.5", 4000)) is None
    assert "heartbeat from ('10.0.0.5', 4000) refused: datagram of 7 bytes is too short" in caplog.text
    datagram = hb.encode(hb.Heartbeat("amp-1", 1, clock(), {}), KEY)
    assert listener.handle(datagram, ("10.0.0.5", 4000)) is None
    assert "database is locked" in caplog.text


def test_the_manager_needs_a_heartbeat_key(store):
    conf = make_conf(config_files=[], overrides={"health": {"bind_host": "127.0.0.1", "bind_port": 0}})
    with pytest.raises(ConfigError, match=r"\[health\] heartbeat_key must be set"):
        HealthManager(conf, store, CastRecorder())


def test_a_bad_threshold_stops_the_manager_from_starting(store):
    conf = make_conf(
        config_files=[],
        overrides={"health": {"bind_host": "127.0.0.1", "bind_port": 0, "heartbeat_key": KEY,
                              "failover_threshold": "all"}},
    )
    with pytest.raises(ConfigError, match="failover_threshold 'all'"):
        HealthManager(conf, store, CastRecorder())


def test_a_fresh_database_keeps_the_last_heartbeat(tmp_path, clock):
    url = f"sqlite:///{tmp_path}/fresh.sqlite"
    store = SQLAlchemyStateStore(make_conf(config_files=[]), url=url)
    try:
        store.save(AmphoraRecord("amp-1", status=AmphoraStatus.READY))
        assert store.get(AmphoraRecord, "amp-1").last_heartbeat_at is None
        HeartbeatRecorder(store, clock).record(hb.Heartbeat("amp-1", 1, clock(), {}))
        assert store.get(AmphoraRecord, "amp-1").last_heartbeat_at == clock.datetime()
    finally:
        store.close()
