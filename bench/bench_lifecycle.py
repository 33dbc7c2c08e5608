"""Benchmark: amphora creations per second, and cast -> READY latency on real agents.

1. ``create_amphora`` flows/s with the noop drivers in an in-process worker (fake transport,
   durable flow persistence, ``executor_threads`` flows at once), on SQLite and on PostgreSQL
   (``postgres_url`` names a server; a database is created for the run and dropped after);
   ``creations`` casts at once, timed from the first cast to the end of the last flow. A third
   row sets create_amphora against a flow of as many no-op tasks through the same runner: the
   ceiling that the runner and flow persistence set whatever the tasks do. Another row sets the
   noop drivers' durable ledger (``[noop_drivers] ledger = sqlite``, the default, used by the
   first row) against their in-memory ledger: what surviving a kill -9 costs them.
   The PostgreSQL row sets that database against SQLite, same run. Keramos against OpenStack
   Octavia's own create flow, same run, like for like, is ``bench_octavia``'s row.
2. With the process compute driver, the rest amphora driver and the local dual CA (real agents
   on loopback): p50 and p99 seconds from cast to READY for ``amphorae`` created at once, in
   both ``[amphora] certificate_mode`` (csr: the agents make their keys, the controller signs
   their CSRs). The raw column is the cost of starting the same agents directly (build + wait
   until reachable), without the flow.

3. ``create_amphora`` flows/s with the noop drivers and a signed image (file image store, local
   key manager, trusted CA; an ``lb`` payload so that the configuration push runs): the flow of
   subflows against the old shape, measured in the same run on the same worker. The old shape
   (raw) is kept here only: image verification and the initial configuration push each ran an
   engine inside one task (``_OldVerifyAmphoraImage``, ``_OldPushInitialConfig``).

Run ``python bench/bench_lifecycle.py [CREATIONS]``; progress goes to stderr, the table
to stdout.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from taskflow import engines, task
from taskflow.patterns import linear_flow, unordered_flow

from keramos.flows.amphora import CreateAmphora
from keramos.flows.images import verification_flow
from keramos.flows.tasks import amphora as amphora_tasks
from keramos.flows.tasks import amphora_lifecycle as lifecycle_tasks
from keramos.flows.tasks import loadbalancer as lb_tasks
from keramos.framework.contracts import (
    AmphoraDriver,
    AmphoraEndpoint,
    CertKind,
    FlowFactory,
    ImageStore,
    InstanceStatus,
    StateStore,
)
from keramos.framework.errors import PayloadError
from keramos.framework.images.certificate_validation import GROUP, CertificateValidator
from keramos.framework.images.signature import REQUIRED_PROPERTIES, Reason, SignatureVerificationError
from keramos.framework.records import LoadBalancerRecord, TaskRecord, utcnow
from keramos.framework.runner import jsonable
from keramos.framework.schema import Field
from keramos.framework.testing import InProcessWorker

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent))

from common import format_table, row  # noqa: E402

POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432"


class _NoopTask(task.Task):
    """A task that does nothing."""

    def execute(self, amphora_id: str) -> None:
        """Do nothing."""


class _TenNoopTasks(FlowFactory):
    """As many tasks as create_amphora, doing nothing: what the runner itself costs."""

    name = "bench_ten_noop_tasks"
    version = "1.0"
    reusable = True
    payload = {"amphora_id": Field(str), "image_id": Field(str)}
    resource_field = "amphora_id"

    def build(self) -> linear_flow.Flow:
        return linear_flow.Flow(self.name).add(*(_NoopTask(name=f"noop_{i}") for i in range(10)))


class _OldPushConfigToAmphorae(task.Task):
    """Baseline only: the old push, an unordered_flow engine run inside the task (success path:
    the benchmark never reverts it)."""

    def __init__(self, amphora: AmphoraDriver, max_workers: int = 16) -> None:
        super().__init__(name="push_config_to_amphorae")
        self.amphora = amphora
        self.max_workers = max_workers

    def execute(
        self,
        lb_id: str,
        amphora_endpoints: list[dict[str, Any]],
        haproxy_config: str,
        config_version: int,
    ) -> None:
        flow = unordered_flow.Flow(f"push_{lb_id}_v{config_version}")
        flow.add(*(_OldPushConfigToAmphora(self.amphora, endpoint) for endpoint in amphora_endpoints))
        store = {"lb_id": lb_id, "haproxy_config": haproxy_config, "config_version": config_version}
        width = max(1, min(len(amphora_endpoints), self.max_workers))
        engines.run(flow, store=store, engine="parallel", max_workers=width)


class _OldPushConfigToAmphora(task.Task):
    """Baseline only: one amphora's upload, run by the inner engine."""

    def __init__(self, amphora: AmphoraDriver, endpoint: dict[str, Any]) -> None:
        super().__init__(name=f"push_config_to_{endpoint['amphora_id']}")
        self.amphora = amphora
        self.endpoint = endpoint

    def execute(self, lb_id: str, haproxy_config: str, config_version: int) -> None:
        endpoint = AmphoraEndpoint(
            self.endpoint["amphora_id"], self.endpoint["address"], self.endpoint["port"]
        )
        self.amphora.upload_config(endpoint, lb_id, haproxy_config, config_version)


class _OldVerifyAmphoraImage(task.Task):
    """Baseline only: the old image verification, the ``verify_image`` flow (built for every
    run, CA file read at every build) run by an engine inside the task."""

    def __init__(self, image_store: ImageStore, verify_image_flow: Any, *, require_signed: bool) -> None:
        super().__init__(name="verify_amphora_image", provides="amphora_image")
        self.image_store = image_store
        self.verify_image_flow = verify_image_flow
        self.require_signed = require_signed

    def execute(self, image_id: str) -> dict[str, Any]:
        properties = self.image_store.properties(image_id)
        if not any(name in properties for name in REQUIRED_PROPERTIES):
            if self.require_signed:
                raise SignatureVerificationError(Reason.MISSING_PROPERTY, f"image {image_id} is not signed")
            return {"image_id": image_id, "verified": False}
        results = engines.run(self.verify_image_flow(), store={"image_id": image_id})
        return {**results["image"], "verified": True}


class _OldPushInitialConfig(task.Task):
    """Baseline only: the old initial configuration push, ``push_config``'s tasks run by an
    engine inside the task, then the membership recorded (success path)."""

    def __init__(self, amphora: AmphoraDriver, state_store: StateStore) -> None:
        super().__init__(name="push_initial_config", provides="initial_config")
        self.amphora = amphora
        self.state_store = state_store

    def execute(
        self, amphora_id: str, lb: dict[str, Any] | None, amphora_instance: dict[str, Any]
    ) -> dict[str, Any] | None:
        if lb is None:
            return None
        missing = sorted({"lb_id", "listeners", "pools"} - set(lb))
        if missing:
            raise PayloadError(f"lb lacks {', '.join(missing)}")
        lb_id = lb["lb_id"]
        previous = self.state_store.get(LoadBalancerRecord, lb_id)
        snapshot = (
            {
                "config": previous.config,
                "running_version": previous.running_version,
                "description": previous.description,
            }
            if previous is not None
            else {"config": None, "running_version": 0, "description": None}
        )
        flow = linear_flow.Flow(f"initial_config_{lb_id}").add(
            lb_tasks.RenderHaproxyConfig(),
            lb_tasks.AllocateConfigVersion(self.state_store),
            _OldPushConfigToAmphorae(self.amphora),
            lb_tasks.RecordRunningVersion(self.state_store),
        )
        endpoint = {
            "amphora_id": amphora_id,
            "address": amphora_instance["address"],
            "port": amphora_instance["port"],
        }
        store = {
            "lb_id": lb_id,
            "listeners": lb["listeners"],
            "pools": lb["pools"],
            "amphora_endpoints": [endpoint],
        }
        version = engines.run(flow, store=store)["running_version"]
        members = list(((previous.description or {}) if previous else {}).get("amphora_ids", []))
        lifecycle_tasks.swap_member(
            self.state_store, lb_id, leaving=None, joining=amphora_id, members=members
        )
        return {"lb_id": lb_id, "config_version": version, "previous": jsonable(snapshot), "endpoint": endpoint}


class _EngineInsideTaskCreate(CreateAmphora):
    """Baseline only: create_amphora as it was, engines run inside two of its tasks."""

    name = "bench_create_amphora_engine_inside"

    def build(self) -> linear_flow.Flow:
        drivers = self.drivers

        def verify_image_flow() -> linear_flow.Flow:
            validator = CertificateValidator.from_conf(self.conf)
            return verification_flow(
                "verify_image",
                drivers,
                lambda: validator,
                lambda: self._verify_image.cache,
                self.conf[GROUP].chunk_size,
            )

        old_verify = _OldVerifyAmphoraImage(
            drivers.image_store, verify_image_flow, require_signed=self.conf.amphora.require_signed_images
        )
        boot = [
            old_verify if atom.name == "amphora_image" else atom
            for atom in self._boot_tasks(None)
        ]
        return linear_flow.Flow(self.name).add(
            *boot,
            _OldPushInitialConfig(drivers.amphora, drivers.state_store),
            amphora_tasks.MarkAmphoraReady(drivers.state_store),
        )


def creations_per_second(
    label: str, overrides: dict, creations: int, event: str = "create_amphora", **drivers: Any
) -> float:
    """Casts ``creations`` flows of ``event`` at once; flows/s from the first cast to the last end.

    The end is the last task record's ``updated_at``, so the client's polling adds nothing.
    ``drivers`` replace the noop ones (kind -> instance).
    """
    with InProcessWorker(
        flows=[_TenNoopTasks, _EngineInsideTaskCreate], conf_overrides=overrides, **drivers
    ) as worker:
        prefix = uuid.uuid4().hex[:6]
        worker.run(event, {"amphora_id": f"warm-{prefix}", "image_id": "img"})
        started = utcnow()
        requests = [
            worker.cast(event, {"amphora_id": f"b-{prefix}-{i}", "image_id": "img"})
            for i in range(creations)
        ]
        for request_id in requests:
            worker.wait(request_id, timeout=600)
        ended = max(
            worker.state_store.get(TaskRecord, request_id).updated_at for request_id in requests
        )
    elapsed = (ended - started).total_seconds()
    print(f"  {label}: {creations} in {elapsed:.1f}s, {creations / elapsed:.1f}/s", file=sys.stderr)
    return creations / elapsed


@contextlib.contextmanager
def _postgres_database(server_url: str) -> Iterator[str | None]:
    """A fresh database on the server (``None`` if it cannot be reached); dropped afterwards."""
    name = f"keramos_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(f"{server_url}/postgres", isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.SQLAlchemyError as error:
        print(f"  PostgreSQL at {server_url} unavailable: {error}", file=sys.stderr)
        admin.dispose()
        yield None
        return
    try:
        yield f"{server_url}/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _noop_rows(creations: int, postgres_url: str) -> list[dict[str, Any]]:
    unsigned = {"amphora": {"require_signed_images": False}}
    # One warning per unsigned boot would bury the progress lines.
    logging.getLogger(lifecycle_tasks.__name__).setLevel(logging.ERROR)
    sqlite_rate = creations_per_second("SQLite", unsigned, creations)
    rows = []
    ledgers: dict[str, list[float]] = {"sqlite": [], "memory": []}
    for _round in range(2):
        for ledger, rates in ledgers.items():
            overrides = {**unsigned, "noop_drivers": {"ledger": ledger}}
            rates.append(creations_per_second(f"SQLite, {ledger} noop ledger", overrides, creations))
    rows.append(
        row(
            "create_amphora/s noop drivers, SQLite, noop ledger in SQLite (raw: ledger in memory; "
            "best of rounds in turn)",
            max(ledgers["sqlite"]),
            max(ledgers["memory"]),
            "flows/s",
            ">= 0.9x",
        )
    )
    rows.append(
        row(
            "create_amphora/s vs 10 no-op tasks through the same runner, SQLite (raw)",
            sqlite_rate,
            creations_per_second("10 no-op tasks", unsigned, creations, _TenNoopTasks.name),
            "flows/s",
            "share of the runner's ceiling",
        )
    )
    rows.append(
        row(
            "create_amphora/s noop drivers, unsigned image, no lb, SQLite (raw: engines inside "
            "tasks, same run)",
            sqlite_rate,
            creations_per_second("engines inside tasks", unsigned, creations, _EngineInsideTaskCreate.name),
            "flows/s",
            ">= 1x",
        )
    )
    with _postgres_database(postgres_url) as url:
        if url is not None:
            overrides = {
                **unsigned,
                "state_store": {"connection": url},
                "persistence": {"connection": url},
            }
            rows.append(
                row(
                    "create_amphora/s noop drivers, PostgreSQL (raw: SQLite, same run)",
                    creations_per_second("PostgreSQL", overrides, creations),
                    sqlite_rate,
                    "flows/s",
                    "info",
                )
            )
    return rows


def _signed_image_rates(creations: int, rounds: int = 2) -> tuple[float, float]:
    """create_amphora/s with a signed image and an ``lb``: subflows, then the old shape, in one
    worker, ``rounds`` times in turn; the best rate of each."""
    from tests.unit.amphora_helpers import LB
    from tests.unit.image_helpers import SIGNED_IMAGE_DRIVERS, add_signed_image

    rates: dict[str, list[float]] = {"create_amphora": [], _EngineInsideTaskCreate.name: []}
    with tempfile.TemporaryDirectory(prefix="keramos-bench-signed-") as directory, InProcessWorker(
        flows=[_EngineInsideTaskCreate], state_path=Path(directory) / "state", **SIGNED_IMAGE_DRIVERS
    ) as worker:
        image_id = add_signed_image(worker, directory)

        def rate(event: str, prefix: str, count: int) -> float:
            started = utcnow()
            requests = [
                worker.cast(
                    event,
                    {
                        "amphora_id": f"{prefix}-{i}",
                        "image_id": image_id,
                        "lb": {**LB, "lb_id": f"lb-{prefix}-{i}"},
                    },
                )
                for i in range(count)
            ]
            for request_id in requests:
                worker.wait(request_id, timeout=600)
            ended = max(worker.state_store.get(TaskRecord, r).updated_at for r in requests)
            return count / (ended - started).total_seconds()

        for event in rates:
            rate(event, f"warm-{event}", 2)
        for round_number in range(rounds):
            for event in rates:
                rates[event].append(rate(event, f"r{round_number}-{event}", creations))
                print(f"  signed image, {event}: {rates[event][-1]:.1f}/s", file=sys.stderr)
    return max(rates["create_amphora"]), max(rates[_EngineInsideTaskCreate.name])


def _signed_rows(creations: int) -> list[dict[str, Any]]:
    after, before = _signed_image_rates(creations)
    return [
        row(
            "create_amphora/s with noop drivers and a signed image, SQLite (raw: engines inside "
            "tasks, same run)",
            after,
            before,
            "flows/s",
            ">= 1x",
        )
    ]


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def _process_rows(amphorae: int) -> list[dict[str, Any]]:
    """p50/p99 cast -> READY on real agents against starting the agents without the flow."""
    from tests.functional.lifecycle_helpers import lifecycle_drivers

    with tempfile.TemporaryDirectory(prefix="keramos-bench-lifecycle-") as directory:
        drivers = lifecycle_drivers(directory)
        compute, amphora = drivers["compute"], drivers["amphora"]
        latencies: dict[str, list[float]] = {}
        try:
            raw = _raw_boot_latencies(compute, amphora, drivers["cert_generator"], amphorae)
            for mode in ("controller", "csr"):
                overrides = {
                    "amphora": {
                        "require_signed_images": False,
                        "active_timeout": 120.0,
                        "agent_timeout": 120.0,
                        "certificate_mode": mode,
                    },
                    "worker": {"executor_threads": max(16, amphorae)},
                }
                state_path = Path(directory) / f"state-{mode}"
                with InProcessWorker(conf_overrides=overrides, state_path=state_path, **drivers) as worker:
                    latencies[mode] = _cast_to_ready_latencies(worker, amphorae)
                    for index in range(amphorae):
                        worker.run("delete_amphora", {"amphora_id": f"lat-{index}"})
        finally:
            compute.close()
            amphora.close()
    keramos, csr = latencies["controller"], latencies["csr"]
    return [
        row(f"cast->READY p50, {amphorae} at once, process driver (raw: agents started bare)",
            statistics.median(keramos), statistics.median(raw), "s", "<= 2x"),
        row(f"cast->READY p99, {amphorae} at once, process driver (raw: agents started bare)",
            _percentile(keramos, 0.99), _percentile(raw, 0.99), "s", "<= 2x"),
        row(f"cast->READY p50, {amphorae} at once, csr mode (raw: agents started bare)",
            statistics.median(csr), statistics.median(raw), "s", "info"),
        row(f"cast->READY p99, {amphorae} at once, csr mode (raw: agents started bare)",
            _percentile(csr, 0.99), _percentile(raw, 0.99), "s", "info"),
    ]


def _cast_to_ready_latencies(worker: InProcessWorker, amphorae: int) -> list[float]:
    def create(index: int) -> float:
        start = time.perf_counter()
        request_id = worker.cast("create_amphora", {"amphora_id": f"lat-{index}", "image_id": "img"})
        worker.wait(request_id, timeout=300)
        return time.perf_counter() - start

    with ThreadPoolExecutor(amphorae) as pool:
        latencies = list(pool.map(create, range(amphorae)))
    print(f"  cast->READY: {amphorae} amphorae, max {max(latencies):.2f}s", file=sys.stderr)
    return latencies


def _raw_boot_latencies(compute, amphora, generator, amphorae: int) -> list[float]:
    client_ca = generator.ca_certificate(CertKind.CLIENT)

    def boot(index: int) -> float:
        start = time.perf_counter()
        amphora_id = f"raw-{index}"
        issued = generator.issue(amphora_id, CertKind.SERVER)
        compute_id = compute.build(
            amphora_id,
            "img",
            {
                "amphora_server_cert.pem": issued.certificate_pem,
                "amphora_server_key.pem": issued.private_key_pem,
                "client_ca_cert.pem": client_ca,
            },
        )
        try:
            while (instance := compute.get(compute_id)).status != InstanceStatus.ACTIVE:
                time.sleep(0.05)
            amphora.wait_until_reachable(
                AmphoraEndpoint(amphora_id, instance.address or "", instance.port), 120
            )
            return time.perf_counter() - start
        finally:
            compute.delete(compute_id)

    with ThreadPoolExecutor(amphorae) as pool:
        return list(pool.map(boot, range(amphorae)))


def rows(
    creations: int = 300, postgres_url: str = POSTGRES_URL, amphorae: int = 20
) -> list[dict[str, Any]]:
    """Creations/s on SQLite and PostgreSQL, with a signed image against the old shape; p50/p99
    cast -> READY on real agents (0 skips)."""
    table = _noop_rows(creations, postgres_url) + _signed_rows(creations)
    if amphorae:
        table += _process_rows(amphorae)
    return table


if __name__ == "__main__":
    print(format_table(rows(int(sys.argv[1]) if len(sys.argv) > 1 else 300)))
