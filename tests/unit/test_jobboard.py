"""Unit tests of jobboard mode's pieces that need no server: configuration, isolation, order."""

from __future__ import annotations

import threading
import time

import pytest
from taskflow import task
from taskflow.patterns import linear_flow, unordered_flow

from keramos.framework import flowgraph
from keramos.framework.config import make_conf
from keramos.framework.errors import ConfigError
from keramos.framework.jobboard import check_shared_storage, jobboard_health, jobboard_mode
from keramos.framework.jobboard.board import board_conf, location
from keramos.framework.jobboard.conductor import _Isolation


def conf(**jobboard):
    return make_conf(config_files=[], overrides={"jobboard": jobboard})


def test_a_redis_url_becomes_taskflows_board_configuration():
    settings = board_conf(
        conf(url="rediss://user:s3cret@redis.example:6380/2", name="prod", connect_timeout=2)
    )
    assert settings == {
        "board": "redis", "host": "redis.example", "port": 6380, "db": 2, "namespace": b"prod",
        "username": "user", "password": "s3cret", "ssl": True, "socket_timeout": 2.0,
        "socket_connect_timeout": 2.0, "health_check_interval": 10,
    }


def test_messages_name_the_board_without_its_password():
    where = location(conf(url="redis://:s3cret@10.0.0.5:6379/0", name="prod"))
    assert where == "redis board 'prod' at redis://10.0.0.5:6379"


def test_zookeeper_and_etcd_urls():
    zookeeper = board_conf(conf(backend="zookeeper", url="zookeeper://zk1:2181,zk2:2181"))
    assert zookeeper["hosts"] == "zk1:2181,zk2:2181" and zookeeper["path"] == "/keramos"
    etcd = board_conf(conf(backend="etcd", url="etcd://etcd1", claim_timeout=12))
    assert (etcd["host"], etcd["port"], etcd["ttl"]) == ("etcd1", 2379, 12)


def test_a_url_that_does_not_fit_the_backend_is_refused():
    with pytest.raises(ConfigError, match="does not fit backend zookeeper"):
        board_conf(conf(backend="zookeeper"))


def test_sqlite_storage_is_a_warning_and_no_persistence_an_error():
    warnings = check_shared_storage(conf(enabled=True))
    assert len(warnings) == 2 and all("SQLite" in warning for warning in warnings)
    assert "[persistence]" in warnings[0] and "[state_store]" in warnings[1]
    no_persistence = make_conf(config_files=[], overrides={"persistence": {"enabled": False}})
    with pytest.raises(ConfigError, match="needs \\[persistence\\] enabled"):
        check_shared_storage(no_persistence)


def test_disabled_jobboard_mode_is_none_and_healthy():
    assert jobboard_mode(conf(), runner=None) is None
    assert jobboard_health(conf()) == (True, "jobboard mode disabled")


class Noop(task.Task):
    def execute(self) -> None:
        pass


def test_task_names_follow_the_flow_depth_first():
    flow = linear_flow.Flow("outer").add(
        Noop("a"),
        unordered_flow.Flow("inner").add(Noop("b"), Noop("c")),
        Noop("d"),
    )
    assert [atom.name for atom in flowgraph.describe(flow).atoms()] == ["a", "b", "c", "d"]


def test_a_suspect_job_runs_alone():
    isolation = _Isolation()
    log: list[str] = []
    normal_running = threading.Event()
    release = threading.Event()

    def normal(name: str) -> None:
        with isolation.hold(alone=False):
            log.append(f"{name} in")
            normal_running.set()
            release.wait(5)
            log.append(f"{name} out")

    def suspect() -> None:
        with isolation.hold(alone=True):
            log.append("suspect in")
            time.sleep(0.05)
            log.append("suspect out")

    first = threading.Thread(target=normal, args=("first",))
    first.start()
    normal_running.wait(5)
    alone = threading.Thread(target=suspect)
    alone.start()
    time.sleep(0.05)
    later = threading.Thread(target=normal, args=("later",))
    later.start()
    time.sleep(0.05)
    assert log == ["first in"]
    release.set()
    for thread in (first, alone, later):
        thread.join(5)
    assert log == ["first in", "first out", "suspect in", "suspect out", "later in", "later out"]
