"""Helper process for test_noop_ledger: a durable runner serving create_amphora on the noop drivers.

Usage: ``python noop_ledger_crash_worker.py STATE_PATH KILL_AT MODE start|resume``

Every driver is the noop one, with its ledger in ``STATE_PATH/noop-ledger.sqlite``; the state store
and flow persistence are SQLite files under STATE_PATH, the host is :data:`HOST` in both runs and
``[amphora] certificate_mode`` is MODE. ``start`` runs ``create_amphora_crash`` (create_amphora
whose task KILL_AT, the first time it runs, writes ``STATE_PATH/killed`` and kills its own process
with SIGKILL); ``resume`` resumes the unfinished flows of the same host, as a restarted worker does.

KILL_AT is a task name (killed before the task runs), ``TASK:after`` (killed once the task did its
work, before its result is saved), ``activate_amphora:spent`` (killed once the agent handed over
its token, before the controller redeemed it), ``TASK:stored`` (killed once the task's certificate
manager stored a bundle, before the state store recorded it) or ``ignore:N`` (killed when taskflow saves the Nth IGNORE
state of an atom, as a decider skipping a branch does).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from oslo_config import cfg

from keramos.flows.amphora import CreateAmphora
from keramos.framework import loader
from keramos.framework.config import make_conf
from keramos.framework.runner import FlowRunner
from keramos.framework.service import persistence_backend

HOST = "ledger-crash-host"
REQUEST_ID = "req-ledger-crash"
AMPHORA_ID = "amp-crash"
LB = {
    "lb_id": "lb-crash",
    "listeners": [
        {"id": "l1", "protocol": "HTTP", "address": "127.0.0.1", "port": 8080, "default_pool": "p1"}
    ],
    "pools": [
        {"id": "p1", "protocol": "HTTP", "members": [{"id": "m1", "address": "127.0.0.1", "port": 8081}]}
    ],
}
PAYLOAD = {"amphora_id": AMPHORA_ID, "image_id": "img-1", "lb": LB}
EVENT = "create_amphora_crash"


def make_worker_conf(state_path: str, mode: str) -> cfg.ConfigOpts:
    """The configuration of both runs: same host and state_path, noop drivers, sqlite ledger."""
    return make_conf(
        config_files=[],
        overrides={
            "DEFAULT": {"state_path": state_path, "host": HOST},
            "drivers": {"state_store": "sqlalchemy"},
            "amphora": {"require_signed_images": False, "certificate_mode": mode},
        },
    )


def crashing_flow(state_path: str, kill_at: str) -> type[CreateAmphora]:
    """create_amphora served as :data:`EVENT`, killed by SIGKILL the first time ``kill_at`` runs."""
    from tests.unit.amphora_helpers import tasks_of

    name, _, when = kill_at.partition(":")
    marker = Path(state_path, "killed")

    def build(self: CreateAmphora) -> Any:
        flow = CreateAmphora.build(self)
        for atom in tasks_of(flow):
            if atom.name == name:
                if when == "spent":
                    atom.amphora.activate = _killing_after(atom.amphora.activate, marker)
                    continue
                if when == "stored":
                    atom.cert_manager.store = _killing_after(atom.cert_manager.store, marker)
                    continue
                wrap = _killing_after if when == "after" else _killing
                atom.execute = wrap(atom.execute, marker)
        return flow

    if name == "ignore":
        _kill_at_ignore(int(when), marker)

    return type("CrashingCreateAmphora", (CreateAmphora,), {"name": EVENT, "build": build})


def _kill_once(marker: Path) -> None:
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)


def _killing(execute: Any, marker: Path) -> Any:
    def run(**kwargs: Any) -> Any:
        _kill_once(marker)
        return execute(**kwargs)

    return run


def _killing_after(execute: Any, marker: Path) -> Any:
    def run(*args: Any, **kwargs: Any) -> Any:
        result = execute(*args, **kwargs)
        _kill_once(marker)
        return result

    return run


def _kill_at_ignore(count: int, marker: Path) -> None:
    """Kill the process when taskflow saves the ``count``th IGNORE state of an atom."""
    from taskflow import states, storage

    save = storage.Storage.set_atom_state
    seen = []

    def set_atom_state(self: storage.Storage, atom_name: str, state: str) -> None:
        save(self, atom_name, state)
        if state == states.IGNORE:
            seen.append(atom_name)
            if len(seen) == count:
                _kill_once(marker)

    storage.Storage.set_atom_state = set_atom_state


def run_in_subprocess(state: Path, kill_at: str, mode: str, action: str) -> subprocess.CompletedProcess:
    """Run :func:`main` in a new interpreter (the tests' way to be killed and resume)."""
    return subprocess.run(
        [sys.executable, __file__, str(state), kill_at, mode, action],
        cwd=Path(__file__).parents[2],
        capture_output=True,
        text=True,
        timeout=120,
    )


def main(state_path: str, kill_at: str, mode: str, action: str) -> None:
    """Start the flow (killed at ``kill_at``) or resume it."""
    conf = make_worker_conf(state_path, mode)
    drivers = loader.load_drivers(conf)
    flows = loader.load_flows(conf, drivers, extra=[crashing_flow(state_path, kill_at)])
    runner = FlowRunner(conf, drivers, flows, backend=persistence_backend(conf))
    try:
        if action == "start":
            runner.submit({"event": EVENT, "request_id": REQUEST_ID, "payload": PAYLOAD})
        else:
            runner.resume_unfinished(HOST)
    finally:
        runner.close()
        drivers.close()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parents[2]))
    main(*sys.argv[1:5])
