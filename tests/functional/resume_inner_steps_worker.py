"""Helper process for test_resume_inner_steps: a durable runner serving create_amphora.

Usage: ``python resume_inner_steps_worker.py STATE_PATH DB_URL BLOCK_AT start|resume``

``start`` adds a signed image (file image store, local key manager, trusted test CA) and runs
``create_amphora_ledger`` (create_amphora whose tasks note every execution) with persistence on
DB_URL; the task BLOCK_AT, the first time it runs, writes ``STATE_PATH/blocked`` and waits to be
killed. ``resume`` resumes the unfinished flows of the same host. Every task execution appends
the task's name to ``STATE_PATH/ledger``, a line at a time, before it runs.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from oslo_config import cfg

from keramos.flows.amphora import CreateAmphora
from keramos.framework import loader
from keramos.framework.config import make_conf
from keramos.framework.contracts import Drivers
from keramos.framework.images.certificate_validation import register_opts
from keramos.framework.runner import FlowRunner
from keramos.framework.service import persistence_backend

HOST = "resume-host"
IMAGE_ID = "img-signed"
REQUEST_ID = "req-resume"
LB = {
    "lb_id": "lb-resume",
    "listeners": [
        {"id": "l1", "protocol": "HTTP", "address": "127.0.0.1", "port": 8080, "default_pool": "p1"}
    ],
    "pools": [
        {"id": "p1", "protocol": "HTTP", "members": [{"id": "m1", "address": "127.0.0.1", "port": 8081}]}
    ],
}
PAYLOAD = {"amphora_id": "amp-resume", "image_id": IMAGE_ID, "lb": LB}


def make_worker_conf(state_path: str, db_url: str) -> cfg.ConfigOpts:
    """The configuration of both runs: same host, state store and persistence."""
    conf = make_conf(
        config_files=[],
        overrides={
            "DEFAULT": {"state_path": state_path, "host": HOST},
            "persistence": {"connection": db_url},
            "drivers": {"image_store": "file", "key_manager": "local"},
            "amphora": {"require_signed_images": True},
        },
    )
    register_opts(conf)
    conf.set_override("trusted_ca_file", os.path.join(state_path, "trusted.pem"), "image_verification")
    return conf


def _note(state_path: str, name: str) -> None:
    with open(os.path.join(state_path, "ledger"), "a") as ledger:
        ledger.write(name + "\n")
        ledger.flush()
        os.fsync(ledger.fileno())


def ledger_flow(state_path: str, block_at: str) -> type[CreateAmphora]:
    """create_amphora served as ``create_amphora_ledger``: each task notes its executions, and
    ``block_at`` waits to be killed the first time it runs."""
    from tests.unit.amphora_helpers import tasks_of

    def build(self: CreateAmphora) -> Any:
        flow = CreateAmphora.build(self)
        for atom in tasks_of(flow):
            atom.execute = _noting(atom.name, atom.execute, state_path, block_at)
        return flow

    return type("LedgerCreateAmphora", (CreateAmphora,), {"name": "create_amphora_ledger", "build": build})


def _noting(name: str, execute: Any, state_path: str, block_at: str) -> Any:
    def run(**kwargs: Any) -> Any:
        _note(state_path, name)
        blocked = Path(state_path, "blocked")
        if name == block_at and not blocked.exists():
            blocked.write_text(name)
            while True:
                time.sleep(60)
        return execute(**kwargs)

    return run


def add_signed_image(conf: cfg.ConfigOpts, drivers: Drivers) -> None:
    """Trust the test root CA and add the signed image."""
    import io

    from tests.unit.image_helpers import pki, sign, write_ca_file

    write_ca_file(conf.image_verification.trusted_ca_file, pki().root)
    signer = pki().signers["rsa"]
    certificate_uuid = drivers.key_manager.store_certificate(
        signer.certificate_pem + pki().intermediate.certificate_pem
    )
    data = b"amphora image " * 4096
    drivers.image_store.add(IMAGE_ID, io.BytesIO(data), sign(data, signer, certificate_uuid))


def main(state_path: str, db_url: str, block_at: str, mode: str) -> None:
    """Start the flow (blocking at ``block_at``) or resume it."""
    conf = make_worker_conf(state_path, db_url)
    drivers = loader.load_drivers(conf)
    flows = loader.load_flows(conf, drivers, extra=[ledger_flow(state_path, block_at)])
    runner = FlowRunner(conf, drivers, flows, backend=persistence_backend(conf))
    try:
        if mode == "start":
            add_signed_image(conf, drivers)
            runner.submit(
                {"event": "create_amphora_ledger", "request_id": REQUEST_ID, "payload": PAYLOAD}
            )
        else:
            runner.resume_unfinished(HOST)
    finally:
        runner.close()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parents[2]))
    main(*sys.argv[1:5])
