"""Helpers for the amphora lifecycle tests: failing drivers and flows failing at a chosen task."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from taskflow import flow as tf_flow
from taskflow import task

from keramos.framework.errors import DriverError
from keramos.framework.records import CertificateRecord, LoadBalancerRecord
from keramos.framework.testing import InProcessWorker
from keramos.plugins import noop
from tests.unit.image_helpers import SIGNED_IMAGE_DRIVERS, add_signed_image

LB = {
    "lb_id": "lb-1",
    "listeners": [
        {"id": "l1", "protocol": "HTTP", "address": "127.0.0.1", "port": 8080, "default_pool": "p1"}
    ],
    "pools": [
        {"id": "p1", "protocol": "HTTP", "members": [{"id": "m1", "address": "127.0.0.1", "port": 8081}]}
    ],
}


def certificate_mode(mode: str) -> dict[str, dict[str, Any]]:
    """Worker options (``conf_overrides``) for ``[amphora] certificate_mode``."""
    return {"amphora": {"certificate_mode": mode}}


#: The image subflow: every task runs; the verification tasks do something for a signed image
#: only (an unsigned one boots unverified when ``[amphora] require_signed_images`` is False).
IMAGE_TASKS = [
    "check_amphora_image",
    "mark_image_verifying",
    "get_image_signature",
    "validate_signing_certificate",
    "download_and_verify_image",
    "mark_image_active",
    "use_amphora_image",
]

#: The tasks that run only when the image is signed (a fault there needs a signed image).
SIGNED_IMAGE_TASKS = frozenset(IMAGE_TASKS[1:-1])

#: The initial configuration subflow (its tasks after the first do something only with an ``lb``).
INITIAL_CONFIG_TASKS = [
    "plan_initial_config",
    "render_haproxy_config",
    "snapshot_loadbalancer",
    "allocate_config_version",
    "push_config_to_amphora",
    "record_running_version",
    "join_loadbalancer",
]

#: The tasks of create_amphora in each ``[amphora] certificate_mode``, in order.
CREATE_TASKS = [
    "record_amphora",
    "check_initial_config",
    *IMAGE_TASKS,
    "issue_amphora_server_cert",
    "boot_amphora",
    "wait_for_amphora_active",
    "plug_amphora_network",
    "wait_for_amphora_agent",
    "activate_amphora",
    *INITIAL_CONFIG_TASKS,
    "mark_amphora_ready",
]

#: In csr mode the amphora makes its own key: it is certified once its agent answers.
CSR_CREATE_TASKS = [
    "record_amphora",
    "check_initial_config",
    *IMAGE_TASKS,
    "boot_amphora",
    "wait_for_amphora_active",
    "plug_amphora_network",
    "sign_amphora_csr",
    "wait_for_amphora_agent",
    "activate_amphora",
    *INITIAL_CONFIG_TASKS,
    "mark_amphora_ready",
]

CREATE_MODE_TASKS = {"controller": CREATE_TASKS, "csr": CSR_CREATE_TASKS}
CREATE_TASKS_IN_EVERY_MODE = [(mode, name) for mode, names in CREATE_MODE_TASKS.items() for name in names]


class InjectedFault(Exception):
    """Raised by a task made to fail on purpose."""


class RecordingCompute(noop.NoopCompute):
    """Noop compute that keeps every config drive it is given, by amphora id."""

    def __init__(self, conf) -> None:
        super().__init__(conf)
        self.drives: dict[str, dict[str, bytes]] = {}

    def build(self, amphora_id, image_id, config_drive, *, flavor=None) -> str:
        self.drives[amphora_id] = dict(config_drive)
        return super().build(amphora_id, image_id, config_drive, flavor=flavor)


def failing(cls: type, method: str) -> type:
    """A noop driver class whose ``method`` raises DriverError."""

    def boom(self, *args: Any, **kwargs: Any) -> None:
        raise DriverError(f"{cls.__name__}.{method} failed on purpose")

    return type(f"Failing{cls.__name__}", (cls,), {method: boom})


def tasks_of(flow: tf_flow.Flow) -> Iterator[task.Task]:
    """The tasks of ``flow`` and of its subflows, in order."""
    for atom in flow:
        if isinstance(atom, tf_flow.Flow):
            yield from tasks_of(atom)
        else:
            yield atom


def failing_at(factory: type, task_name: str) -> type:
    """A copy of ``factory`` served as ``<name>_faulty`` whose task ``task_name`` raises at once
    (in the flow or in one of its subflows)."""

    def build(self):
        flow = factory.build(self)
        atoms = {atom.name: atom for atom in tasks_of(flow)}
        if task_name not in atoms:
            raise AssertionError(f"{factory.name} has no task {task_name}")

        def boom(**kwargs: Any) -> None:
            raise InjectedFault(f"{task_name} failed on purpose")

        atoms[task_name].execute = boom
        return flow

    return type(f"Faulty{factory.__name__}", (factory,), {"name": f"{factory.name}_faulty", "build": build})


def run_twice_at(factory: type, task_name: str) -> type:
    """A copy of ``factory`` served as ``<name>_again`` whose task ``task_name`` runs twice, as
    when its worker died after the task did its work and before its result was saved: the
    resumed flow runs it again, and only the second result counts."""

    def build(self):
        flow = factory.build(self)
        atoms = {atom.name: atom for atom in tasks_of(flow)}
        if task_name not in atoms:
            raise AssertionError(f"{factory.name} has no task {task_name}")
        execute = atoms[task_name].execute

        def twice(**kwargs: Any) -> Any:
            execute(**kwargs)
            return execute(**kwargs)

        atoms[task_name].execute = twice
        return flow

    return type(f"Again{factory.__name__}", (factory,), {"name": f"{factory.name}_again", "build": build})


def task_names(worker: InProcessWorker, event: str) -> list[str]:
    """The names of the tasks of ``event``'s flow, in order."""
    return [atom.name for atom in tasks_of(worker.worker.runner.flows[event].build())]


def resources(worker: InProcessWorker) -> dict[str, Any]:
    """What the noop drivers and the state store hold: instances, ports, keys, certificates."""
    drivers = worker.drivers
    return {
        "instances": sorted(drivers.compute.instances),
        "ports": sorted(drivers.network.ports),
        "bundles": sorted(drivers.cert_manager.bundles),
        "certificates": sorted(c.serial for c in worker.state_store.find(CertificateRecord)),
    }


def nothing_left(worker: InProcessWorker) -> None:
    """Assert that no instance, port, stored key or certificate record is left."""
    assert resources(worker) == {"instances": [], "ports": [], "bundles": [], "certificates": []}


def members(worker: InProcessWorker, lb_id: str = "lb-1") -> list[str]:
    """The amphorae a load balancer's record lists."""
    record = worker.state_store.get(LoadBalancerRecord, lb_id)
    return list((record.description or {}).get("amphora_ids", [])) if record else []



@contextlib.contextmanager
def worker_running(
    flow: type, mode: str, task_name: str, tmp_path: Path
) -> Iterator[tuple[InProcessWorker, str]]:
    """An in-process worker serving ``flow`` in certificate ``mode``, and an image id for which
    ``task_name`` runs: the verification tasks run for a signed image only, the others for an
    unsigned one."""
    signed = task_name in SIGNED_IMAGE_TASKS
    drivers = SIGNED_IMAGE_DRIVERS if signed else {}
    with InProcessWorker(
        flows=[flow], conf_overrides=certificate_mode(mode), state_path=tmp_path, **drivers
    ) as worker:
        yield worker, add_signed_image(worker, tmp_path) if signed else "img-1"
