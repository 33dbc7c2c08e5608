"""Fault injection at every task of create_amphora on real drivers: the revert leaves no agent or
HAProxy process, no instance file, no stored certificate or key, and no certificate record; the
amphora is ERROR with the reason and the load balancer record is back as it was.

Drivers: process compute (real agents and HAProxy), rest amphora driver, local dual CA and
encrypted certificate store on disk. Needs haproxy: fails under CI=true when it is missing.
"""

from __future__ import annotations

import os

import pytest

from keramos.flows.amphora import CreateAmphora
from keramos.framework.records import AmphoraRecord, AmphoraStatus, CertificateRecord, LoadBalancerRecord
from tests.functional.agent_helpers import free_port, http_backend
from tests.functional.lifecycle_helpers import BODY, description, lifecycle_worker
from tests.unit.amphora_helpers import (
    CREATE_TASKS_IN_EVERY_MODE,
    SIGNED_IMAGE_TASKS,
    InjectedFault,
    failing_at,
)
from tests.unit.image_helpers import SIGNED_IMAGE_DRIVERS, add_signed_image


def processes_under(directory: str) -> list[str]:
    """Command lines of the live processes that name ``directory`` (agents, their HAProxy)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                command = cmdline.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat", "rb") as stat:
                state = stat.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if directory in command and state != b"Z":
            found.append(command)
    return found


@pytest.mark.parametrize(("mode", "task_name"), CREATE_TASKS_IN_EVERY_MODE)
def test_a_failure_at_any_task_on_real_agents_leaves_no_process_file_key_or_record(tmp_path, mode, task_name):
    faulty = failing_at(CreateAmphora, task_name)
    # The verification tasks run for a signed image only; the others run for an unsigned one.
    signed = task_name in SIGNED_IMAGE_TASKS
    with http_backend(BODY) as backend_port, lifecycle_worker(
        tmp_path,
        flows=[faulty],
        other_drivers=SIGNED_IMAGE_DRIVERS if signed else None,
        certificate_mode=mode,
        require_signed_images=False,
    ) as worker:
        image_id = add_signed_image(worker, tmp_path) if signed else "img"
        compute = worker.drivers.compute
        cert_manager = worker.drivers.cert_manager
        lb = {"lb_id": "lb-fault", **description(free_port(), backend_port)}
        with pytest.raises(InjectedFault):
            worker.run(faulty.name, {"amphora_id": "amp-fault", "image_id": image_id, "lb": lb})

        assert compute.running_instances() == []
        assert processes_under(compute.instances_dir) == []
        assert os.listdir(compute.instances_dir) == []
        assert os.listdir(cert_manager.storage_path) == []
        store = worker.state_store
        assert store.find(CertificateRecord) == []
        amphora = store.get(AmphoraRecord, "amp-fault")
        if task_name == "record_amphora":
            assert amphora is None
        else:
            assert amphora.status == AmphoraStatus.ERROR
            assert f"{task_name} failed on purpose" in amphora.error
            assert (amphora.compute_id, amphora.activation_token_hash) == (None, None)
        balancer = store.get(LoadBalancerRecord, "lb-fault")
        assert balancer is None or (balancer.running_version, balancer.config) == (0, None)
