"""``keramos demo``: a worker consumes casts and runs real flows, on the embedded default.

Everything runs in this process: the ``fake://`` transport stands in for RabbitMQ, SQLite in a
temporary directory holds the state store and flow persistence. The first part runs on the noop
drivers (except a compute driver that refuses one image, to show a flow reverting); the second
(:mod:`.demo_amphorae`) boots real amphorae, load-balances traffic through them, crashes one and
lets the health manager fail it over.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping

from oslo_config import cfg

from keramos.framework import loader
from keramos.framework.cli import demo_amphorae
from keramos.framework.cli.progress import ProgressPrinter
from keramos.framework.contracts import ComputeDriver, Instance
from keramos.framework.errors import DriverError, KeramosError
from keramos.framework.records import AmphoraRecord, CertificateRecord, TaskRecord
from keramos.framework.testing import InProcessWorker

BROKEN_IMAGE = "broken-image"


class DemoCompute(ComputeDriver):
    """The noop compute driver (loaded from its entry point), with no capacity for
    :data:`BROKEN_IMAGE`, to show a revert."""

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        super().__init__(conf)
        self.noop = loader.load_driver("compute", "noop", conf)

    def build(self, amphora_id: str, image_id: str, config_drive: Mapping[str, bytes], **kw) -> str:
        if image_id == BROKEN_IMAGE:
            raise DriverError(f"no host has capacity for image {image_id}")
        return self.noop.build(amphora_id, image_id, config_drive, **kw)

    def get(self, compute_id: str) -> Instance:
        return self.noop.get(compute_id)

    def delete(self, compute_id: str) -> None:
        self.noop.delete(compute_id)

    def close(self) -> None:
        self.noop.close()


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="watch a worker consume casts and run flows (no broker needed)",
        description="Start a worker in this process on the in-process fake:// transport with "
        "SQLite state, cast to it as an API service would, and print every step. First on noop "
        "drivers: a create, a payload refused before any flow starts, a failure that reverts, a "
        "delete. Then on real drivers (needs haproxy): two amphorae booted as agent processes "
        "from a signed image, a load balancer config pushed to both, traffic through it, one "
        "amphora crashed and failed over by the health manager, traffic again.",
    )
    parser.add_argument("--amphora-id", default="demo-amphora-1", help="id of the demo amphora")
    parser.add_argument(
        "--no-amphorae",
        action="store_true",
        help="skip the second part (real amphorae, traffic, crash and failover; needs haproxy)",
    )
    parser.set_defaults(func=demo)


class _Steps:
    """Numbered step headings, counted across both parts of the demo."""

    def __init__(self) -> None:
        self.number = 0

    def __call__(self, text: str) -> None:
        self.number += 1
        print(f"\n[{self.number}] {text}", flush=True)


def _show_outcome(worker: InProcessWorker, request_id: str) -> TaskRecord:
    record = worker.state_store.get(TaskRecord, request_id)
    line = f"    state store: task {request_id} is {record.state}"
    if record.message:
        line += f" ({record.error_type}: {record.message})"
    print(line)
    print(f"    events: {', '.join(worker.events.types(request_id))}")
    return record


@contextlib.contextmanager
def _worker_log_on_stdout() -> Iterator[None]:
    """Show Keramos's INFO log among the demo's lines; put logging back as it was afterwards."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("    worker log: %(levelname)s %(message)s"))
    handler.setLevel(logging.INFO)
    keramos_logger = logging.getLogger("keramos")
    saved = (keramos_logger.level, keramos_logger.propagate)
    keramos_logger.addHandler(handler)
    keramos_logger.setLevel(logging.INFO)
    keramos_logger.propagate = False
    try:
        yield
    finally:
        keramos_logger.removeHandler(handler)
        keramos_logger.setLevel(saved[0])
        keramos_logger.propagate = saved[1]


def demo(args: argparse.Namespace) -> int:
    with _worker_log_on_stdout():
        return _run_demo(args)


def _run_demo(args: argparse.Namespace) -> int:
    amphora_id = args.amphora_id
    step = _Steps()
    with tempfile.TemporaryDirectory(prefix="keramos-demo-") as state_path:
        printer = ProgressPrinter(prefix="    ")
        with InProcessWorker(state_path=state_path, observers=[printer], compute=DemoCompute) as worker:
            conf = worker.conf
            step("worker started")
            print(f"    transport {conf.transport_url}, topic {conf.worker.topic}")
            print(f"    state store {conf.state_store.connection}")
            print(f"    flow persistence {conf.persistence.connection} (durable, resumable)")
            print(f"    serving: {', '.join(sorted(worker.worker.runner.flows))}")

            step(f"an API service casts create_amphora for {amphora_id}")
            payload = {"amphora_id": amphora_id, "image_id": "amphora-x64-haproxy"}
            request_id = worker.cast("create_amphora", payload)
            print(f"    cast sent, request id {request_id}; the worker consumes it and runs:")
            worker.wait(request_id)
            _show_outcome(worker, request_id)
            amphora = worker.state_store.get(AmphoraRecord, amphora_id)
            print(
                f"    amphora {amphora.amphora_id} is {amphora.status} at {amphora.address}, "
                f"compute id {amphora.compute_id}, server certificate {amphora.cert_serial}"
            )

            step("a cast with a bad payload is refused before any flow starts")
            bad = {"amphora_id": "../../etc/passwd", "image_id": "x"}
            request_id = worker.cast("create_amphora", bad)
            try:
                worker.wait(request_id)
            except KeramosError:
                pass
            _show_outcome(worker, request_id)

            step(f"a flow that fails half-way reverts every step (image {BROKEN_IMAGE})")
            request_id = worker.cast(
                "create_amphora", {"amphora_id": "demo-amphora-2", "image_id": BROKEN_IMAGE}
            )
            try:
                worker.wait(request_id)
            except KeramosError:
                pass
            _show_outcome(worker, request_id)
            failed = worker.state_store.get(AmphoraRecord, "demo-amphora-2")
            leftovers = worker.state_store.find(CertificateRecord, amphora_id="demo-amphora-2")
            print(f"    amphora demo-amphora-2 is {failed.status}: {failed.error}")
            print(f"    certificates left behind for it: {len(leftovers)}")

            step(f"delete_amphora {amphora_id}")
            request_id = worker.cast("delete_amphora", {"amphora_id": amphora_id})
            worker.wait(request_id)
            _show_outcome(worker, request_id)
            amphora = worker.state_store.get(AmphoraRecord, amphora_id)
            print(f"    amphora {amphora_id} is {amphora.status}")
            print(
                f"    instances left: {len(worker.drivers.compute.noop.instances)}, "
                f"stored certificates left: {len(worker.drivers.cert_manager.bundles)}"
            )
        if not args.no_amphorae:
            demo_amphorae.run(os.path.join(state_path, "amphorae"), step, printer)
    print("\ndemo finished: every step above ran through the same worker code as keramos-worker.")
    return 0
