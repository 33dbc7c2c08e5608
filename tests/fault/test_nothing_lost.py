"""Nothing is lost (issue #11): 500 create_amphora casts through kill -9s and broker restarts.

A client thread casts 500 ``create_amphora`` (noop drivers, unsigned image) to a private RabbitMQ
node (:class:`~tests.functional.rabbit_node.RabbitNode`) while the test kills workers with
SIGKILL at random moments (the seed is printed) and restarts the broker. Everything is counted
from the state store (task and amphora records) and from the noop ledger (compute builds and
deletes), never from logs:

* every cast sent has a task record, and every record is ``success``: none ``pending``,
  ``processing``, ``failure`` or missing;
* every amphora is READY and was booted exactly once net: for each amphora, compute builds less
  compute deletes is 1, and its one live instance is the compute id its record names; no live
  instance belongs to anything else.

A kill can land inside ``boot_amphora`` after the compute driver built the instance and before
the task's result reached the flow persistence; the resumed flow then runs ``boot_amphora``
again and builds a second instance. That second build is accepted only if the first instance
was deleted (a ``delete`` in the ledger for it): an instance left behind counts as a second net
boot and fails the test. The builds, deletes and amphorae booted more than once are printed.
"""

from __future__ import annotations

import collections
import os
import random
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from taskflow import states

from keramos.framework import loader
from keramos.framework.jobboard.inspect import JobView, find_job, list_jobs
from keramos.framework.records import AmphoraRecord, AmphoraStatus, TaskState
from keramos.plugins.noop_ledger import LEDGER_FILE, NoopLedger, ledger_path
from tests.functional.conftest import WorkerProcess
from tests.functional.test_intake_rabbitmq import Caster, failures, summary, wait_for, worker_on

CASTS = 500
CAST_INTERVAL = 0.02
CLAIM_TIMEOUT = 5.0

#: The create_amphora task that writes each ``kind.action`` of the noop ledger.
TASK_OF = {
    "cert_generator.issue": "issue_amphora_server_cert",
    "cert_manager.store": "issue_amphora_server_cert",
    "compute.build": "boot_amphora",
    "amphora.token.boot": "boot_amphora",
    "amphora.server_key.boot": "boot_amphora",
    "network.plug": "plug_amphora_network",
    "amphora.token.activate": "activate_amphora",
    "compute.delete": "revert",
    "network.unplug": "revert",
    "cert_manager.delete": "revert",
}


@dataclass
class Boots:
    """What the noop ledger says about the compute instances of a run's amphorae."""

    builds: int
    deletes: int
    rebooted: dict[str, int]
    wrong: dict[str, str]


def count_boots(ledger_file: str, conf, amphora_ids: list[str]) -> Boots:
    """Builds and deletes from the ledger, checked against the amphora records.

    ``wrong`` maps an amphora id (or a compute id not built for any amphora of the run) to what
    is wrong with it; ``rebooted`` maps the amphorae built more than once to their build count.
    """
    ledger = NoopLedger(ledger_file)
    store = loader.load_state_store(conf)
    try:
        builds = ledger.events("compute", action="build")
        deletes = ledger.events("compute", action="delete")
        deleted = {event.key for event in deletes}
        live_by_amphora: dict[str, set[str]] = collections.defaultdict(set)
        built_by_amphora: collections.Counter[str] = collections.Counter()
        for event in builds:
            built_by_amphora[event.subject] += 1
            if event.key not in deleted:
                live_by_amphora[event.subject].add(event.key)
        deleted_by_amphora = collections.Counter(event.subject for event in deletes)
        wrong: dict[str, str] = {}
        for amphora_id in amphora_ids:
            record = store.get(AmphoraRecord, amphora_id)
            net = built_by_amphora[amphora_id] - deleted_by_amphora[amphora_id]
            live = live_by_amphora.get(amphora_id, set())
            if record is None or record.status != AmphoraStatus.READY:
                wrong[amphora_id] = f"record {record and record.status}, live {sorted(live)}"
            elif net != 1 or live != {record.compute_id}:
                wrong[amphora_id] = (
                    f"{built_by_amphora[amphora_id]} builds, {deleted_by_amphora[amphora_id]} "
                    f"deletes, live {sorted(live)}, record {record.compute_id}"
                )
        for amphora_id in set(live_by_amphora) - set(amphora_ids):
            wrong[amphora_id] = f"live instances of no amphora of the run: {live_by_amphora[amphora_id]}"
        if len(ledger.live("compute")) != sum(len(ids) for ids in live_by_amphora.values()):
            wrong["ledger"] = "live instances disagree with builds less deletes"
        rebooted = {amphora_id: n for amphora_id, n in built_by_amphora.items() if n > 1}
        return Boots(len(builds), len(deletes), rebooted, wrong)
    finally:
        ledger.close()
        store.close()


@pytest.mark.timeout(420)
def test_without_the_jobboard_500_casts_survive_three_kills_and_a_broker_restart(
    tmp_path, private_rabbit
):
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    started = time.monotonic()
    with worker_on(tmp_path / "worker", private_rabbit.url) as worker:
        worker.start().wait_ready()
        caster = Caster(worker, CASTS, CAST_INTERVAL, "lost")
        caster.start()
        faults = ["kill", "kill", "broker", "kill"]
        rng.shuffle(faults)
        for fault in faults:
            time.sleep(rng.uniform(1.0, 3.0))
            if fault == "kill":
                worker.stop(signal.SIGKILL)
                worker.start()
            else:
                private_rabbit.restart()
        caster.join(240)
        assert not caster.is_alive() and caster.error is None, caster.error
        assert len(caster.sent) == CASTS
        worker.wait_ready()
        found = wait_for(worker, caster.sent, TaskState.TERMINAL, timeout=180)
        amphora_ids = [f"lost-{n}" for n in range(CASTS)]
        boots = count_boots(ledger_path(worker.conf()), worker.conf(), amphora_ids)
        print(
            f"\nseed {seed}, faults {faults}: {summary(found)} after "
            f"{time.monotonic() - started:.0f}s; {boots.builds} builds, {boots.deletes} deletes, "
            f"booted again: {boots.rebooted}"
        )
        missing = [request_id for request_id, state in found.items() if state is None]
        assert missing == [], f"{len(missing)} casts have no record:\n{worker.log()[-4000:]}"
        assert collections.Counter(found.values()) == {TaskState.SUCCESS: CASTS}, (
            f"{summary(found)}: {failures(worker, found)}"
        )
        assert boots.wrong == {}


def group_pids(leader: int) -> set[int]:
    """The processes of the session (and process group) ``leader`` started: a worker and the
    service processes it forked, whose pids the noop ledger records."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == leader:
            found.add(int(stat.parent.name))
    return found


class Host:
    """A worker host of the jobboard test: its ``keramos-worker`` and the pids it ran as."""

    def __init__(self, worker: WorkerProcess) -> None:
        self.worker = worker
        self.pids: set[int] = set()

    def start(self) -> None:
        self.worker.start()
        leader = self.worker.process.pid
        wait_until(lambda: len(group_pids(leader)) > 1, 30, "the worker to fork its service")
        self.pids |= group_pids(leader)

    def kill(self) -> None:
        self.pids |= group_pids(self.worker.process.pid)
        self.worker.stop(signal.SIGKILL)

    def kill_holding_claims(self, timeout: float = 30) -> list[JobView]:
        """Kill the host at a moment it holds claims, and return the jobs it held with their
        task states as it left them.

        The host is frozen (SIGSTOP) while the board and the flow persistence are read, so what
        is read is what it holds when it dies; if it holds no claim, it runs a little longer and
        is frozen again. The read takes far less than ``claim_timeout``, so its claims cannot
        expire meanwhile.
        """
        leader = self.worker.process.pid
        conf = self.worker.conf()
        prefix = f"{conf.host}."
        deadline = time.monotonic() + timeout
        while True:
            os.killpg(leader, signal.SIGSTOP)
            held = [
                view for view in list_jobs(conf, parked=False)
                if view.owner and view.owner.startswith(prefix)
            ]
            if held or time.monotonic() > deadline:
                break
            os.killpg(leader, signal.SIGCONT)
            time.sleep(0.2)
        self.kill()
        assert held, f"{prefix[:-1]} held no claim in {timeout:.0f}s of casts"
        return held


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.timeout(600)
def test_with_the_jobboard_500_casts_survive_kills_a_dead_host_and_broker_and_redis_restarts(
    tmp_path, private_rabbit, redis_server, pg_url
):
    """Hosts A and B share the board, the broker, PostgreSQL and the noop ledger (one
    ``state_path``, distinct ``host``). A is killed twice and restarted each time; B is killed
    once, at a moment it holds claims (read from the board while B is frozen), and never comes
    back. Every job B held is finished by A (its last attempt is A's) and resumed from its last
    completed task: no task the flow persistence recorded as completed when B died has a driver
    call from A in the ledger."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    started = time.monotonic()
    shared = tmp_path / "shared"
    shared.mkdir()
    topic = f"keramos-nl-{uuid.uuid4().hex[:8]}"
    hosts = {}
    for name in ("a", "b"):
        directory = tmp_path / f"host-{name}"
        directory.mkdir()
        worker = WorkerProcess(directory, private_rabbit.url, {
            "DEFAULT": {"host": f"host-{name}", "state_path": shared, "control_exchange": topic},
            "worker": {"topic": topic, "workers": 1},
            "oslo_messaging_notifications": {"topics": f"{topic}-notifications"},
            "state_store": {"connection": pg_url},
            "persistence": {"connection": pg_url, "keep_completed": True},
            "jobboard": {
                "enabled": True, "url": redis_server.url, "name": topic,
                "claim_timeout": CLAIM_TIMEOUT, "poll_interval": 0.1, "max_backoff": 1.0,
                "connect_timeout": 3, "max_attempts": 10, "conductor_threads": 4,
            },
        })
        hosts[name] = Host(worker)
    a, b = hosts["a"], hosts["b"]
    try:
        for host in (a, b):
            host.start()
        a.worker.wait_ready()
        caster = Caster(a.worker, CASTS, CAST_INTERVAL, "jb")
        caster.start()
        # B dies first, while the casts still arrive and it holds claims; the rest in any order.
        faults = ["kill a", "broker", "redis", "kill a"]
        rng.shuffle(faults)
        faults.insert(0, "kill b")
        for fault in faults:
            time.sleep(rng.uniform(1.0, 3.0))
            if fault == "kill a":
                a.kill()
                a.start()
            elif fault == "kill b":
                held_by_b = b.kill_holding_claims()
                b_killed_at = time.monotonic()
            elif fault == "broker":
                private_rabbit.restart()
            else:
                redis_server.restart(down_for=1.0)
        caster.join(240)
        assert not caster.is_alive() and caster.error is None, caster.error
        assert len(caster.sent) == CASTS
        a.worker.wait_ready()
        found = wait_for(a.worker, caster.sent, TaskState.TERMINAL, timeout=240)
        a.pids |= group_pids(a.worker.process.pid)
        amphora_ids = [f"jb-{n}" for n in range(CASTS)]
        boots = count_boots(str(shared / LEDGER_FILE), a.worker.conf(), amphora_ids)
        amphora_of = dict(zip(caster.sent, amphora_ids, strict=True))
        redone = redone_by_a(
            NoopLedger(shared / LEDGER_FILE), a.pids, held_by_b, amphora_of
        )
        print(
            f"\nseed {seed}, faults {faults}: {summary(found)} after "
            f"{time.monotonic() - started:.0f}s (B killed at "
            f"{b_killed_at - started:.0f}s holding {len(held_by_b)} jobs); {boots.builds} "
            f"builds, {boots.deletes} deletes, booted again: {boots.rebooted}; completed tasks "
            f"of B's jobs that A ran again: {redone}"
        )
        missing = [request_id for request_id, state in found.items() if state is None]
        assert missing == [], f"{len(missing)} casts have no record"
        assert collections.Counter(found.values()) == {TaskState.SUCCESS: CASTS}, (
            f"{summary(found)}: {failures(a.worker, found)}"
        )
        assert boots.wrong == {}
        for view in held_by_b:
            finished = find_job(a.worker.conf(), view.request_id)
            owners = [attempt.get("owner", "?") for attempt in finished.attempts]
            assert owners and owners[-1].startswith("host-a."), (view.request_id, owners)
        assert redone == {}
    finally:
        for host in (a, b):
            host.worker.stop(signal.SIGKILL)


def redone_by_a(
    ledger: NoopLedger, a_pids: set[int], held_by_b: list[JobView], amphora_of: dict[str, str]
) -> dict[str, list[str]]:
    """For each job B held when it died, the tasks B had completed (as the flow persistence
    recorded them then) that A ran again: the ledger names the task of each driver call
    (:data:`TASK_OF`). A resumes from the last completed task, so this is empty."""
    try:
        by_amphora: dict[str, set[str]] = collections.defaultdict(set)
        for event in ledger.events():
            if event.subject is None or event.pid not in a_pids:
                continue
            amphora_id = event.subject.removeprefix("amphora-").removesuffix("-server")
            by_amphora[amphora_id].add(TASK_OF.get(f"{event.kind}.{event.action}", "?"))
        redone = {}
        for view in held_by_b:
            completed = {name for name, state in view.tasks if state == states.SUCCESS}
            again = completed & by_amphora[amphora_of[view.request_id]]
            if again:
                redone[view.request_id] = sorted(again)
        return redone
    finally:
        ledger.close()
