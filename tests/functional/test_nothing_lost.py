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
import random
import signal
import time
from dataclasses import dataclass

import pytest

from keramos.framework import loader
from keramos.framework.records import AmphoraRecord, AmphoraStatus, TaskState
from keramos.plugins.noop_ledger import NoopLedger, ledger_path
from tests.functional.test_intake_rabbitmq import Caster, failures, summary, wait_for, worker_on

CASTS = 500
CAST_INTERVAL = 0.02


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
