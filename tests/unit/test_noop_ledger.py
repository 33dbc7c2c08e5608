"""The noop drivers' ledger: flows resume on the noop drivers after a kill -9, tests count from it.

The crash tests run create_amphora in a helper process (``noop_ledger_crash_worker.py``: a
durable runner on the noop drivers) that kills itself with SIGKILL at a chosen task, then resume
it in a second process on the same state_path and host, and read the outcome from the state
store and the ledger.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from oslo_config import cfg

from keramos.flows.amphora import CreateAmphora
from keramos.framework import loader
from keramos.framework.config import make_conf
from keramos.framework.contracts import AmphoraEndpoint, CertificateBundle
from keramos.framework.contracts.compute import ACTIVATION_TOKEN_FILE
from keramos.framework.errors import AlreadyActivated, DriverError, NotFound
from keramos.framework.records import AmphoraRecord, AmphoraStatus, TaskRecord, TaskState
from keramos.framework.testing import InProcessWorker
from keramos.plugins import noop
from keramos.plugins.noop_ledger import (
    LEDGER_FILE,
    Ledger,
    MemoryLedger,
    NoopLedger,
    ledger_path,
)
from tests.unit import noop_ledger_crash_worker as helper
from tests.unit.amphora_helpers import LB, InjectedFault, certificate_mode, failing_at, nothing_left

ROOT = Path(__file__).parents[2]


def noop_conf(state_path: Path, ledger: str = "sqlite") -> cfg.ConfigOpts:
    """A configuration with ``state_path`` and ``[noop_drivers] ledger``."""
    return make_conf(
        config_files=[],
        overrides={"DEFAULT": {"state_path": str(state_path)}, "noop_drivers": {"ledger": ledger}},
    )


@pytest.fixture(params=["sqlite", "memory"])
def ledger(request, tmp_path) -> Ledger:
    """A ledger of either backend."""
    made = NoopLedger(tmp_path / LEDGER_FILE) if request.param == "sqlite" else MemoryLedger()
    yield made
    made.close()


# -- the ledger itself, on both backends --------------------------------------------------------


def test_puts_and_removes_are_live_entries_and_events(ledger):
    ledger.put("compute", "c1", {"n": 1}, action="build", subject="amp-1")
    ledger.put("compute", "c2", {"n": 2}, action="build", subject="amp-2")
    assert ledger.get("compute", "c1") == {"n": 1}
    assert ledger.live("compute") == {"c1": {"n": 1}, "c2": {"n": 2}}
    assert ledger.live("compute", subject="amp-2") == {"c2": {"n": 2}}
    assert ledger.remove("compute", "c1", action="delete") == {"n": 1}
    assert ledger.remove("compute", "c1", action="delete") is None
    assert ledger.get("compute", "c1") is None
    events = ledger.events("compute", subject="amp-1")
    assert [(e.action, e.key, e.subject, e.pid) for e in events] == [
        ("build", "c1", "amp-1", os.getpid()),
        ("delete", "c1", "amp-1", os.getpid()),
    ]
    assert [e.seq for e in ledger.events()] == [1, 2, 3]
    assert ledger.count("compute", "build") == 2 and ledger.count("compute", "delete") == 1
    assert ledger.live("network") == {} and ledger.events("network") == []


def test_a_transaction_that_raises_keeps_nothing(ledger):
    ledger.put("amphora.token", "amp-1", {"token": "t"}, action="boot", subject="amp-1")
    with pytest.raises(RuntimeError), ledger.writing() as writer:
        writer.remove("amphora.token", "amp-1", action="activate")
        writer.put("amphora.token", "amp-2", {"token": "u"}, action="boot", subject="amp-2")
        assert writer.get("amphora.token", "amp-1") is None
        raise RuntimeError("boom")
    assert ledger.live("amphora.token") == {"amp-1": {"token": "t"}}
    assert [e.action for e in ledger.events()] == ["boot"]


def test_get_or_put_makes_a_value_once(ledger):
    made: list[int] = []

    def make() -> dict[str, int]:
        made.append(1)
        return {"key": len(made)}

    first = ledger.get_or_put("amphora.server_key", "amp-1", make, action="make_key", subject="amp-1")
    again = ledger.get_or_put("amphora.server_key", "amp-1", make, action="make_key", subject="amp-1")
    assert first == again == {"key": 1} and made == [1]
    assert ledger.count("amphora.server_key", "make_key", subject="amp-1") == 1


def test_writes_from_many_threads_are_all_counted(ledger):
    def boot(thread: int) -> None:
        for index in range(25):
            key = f"c-{thread}-{index}"
            ledger.put("compute", key, {}, action="build", subject=key)
            if index % 2:
                ledger.remove("compute", key, action="delete")

    threads = [threading.Thread(target=boot, args=(thread,)) for thread in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert ledger.count("compute", "build") == 200
    assert ledger.count("compute", "delete") == 96
    assert len(ledger.live("compute")) == 104
    assert sorted(e.seq for e in ledger.events()) == list(range(1, 297))


# -- the SQLite file ----------------------------------------------------------------------------


def test_the_ledger_file_and_its_wal_are_0600_in_a_new_0700_directory(tmp_path):
    state_path = tmp_path / "missing" / "state"
    compute = noop.NoopCompute(noop_conf(state_path))
    path = Path(ledger_path(compute.conf))
    assert not path.exists(), "a driver that was never used creates no file"
    compute.build("amp-1", "img", {"amphora_server_key.pem": b"noop key"})
    try:
        assert path == state_path / LEDGER_FILE
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(state_path.stat().st_mode) == 0o700
        for companion in (Path(f"{path}-wal"), Path(f"{path}-shm")):
            assert stat.S_IMODE(companion.stat().st_mode) == 0o600, companion
    finally:
        compute.close()


def test_the_ledger_file_is_0600_whatever_the_umask(tmp_path):
    previous = os.umask(0)
    try:
        ledger = NoopLedger(tmp_path / LEDGER_FILE)
        ledger.put("key_manager", "k", {}, action="store")
    finally:
        os.umask(previous)
    ledger.close()
    assert stat.S_IMODE((tmp_path / LEDGER_FILE).stat().st_mode) == 0o600


def test_a_ledger_that_cannot_be_opened_raises_a_driver_error(tmp_path):
    (tmp_path / LEDGER_FILE).mkdir()
    compute = noop.NoopCompute(noop_conf(tmp_path))
    with pytest.raises(DriverError, match="noop ledger") as raised:
        compute.build("amp-1", "img", {})
    assert not raised.value.retryable


def test_a_write_lock_held_too_long_raises_a_retryable_driver_error(tmp_path):
    holder = NoopLedger(tmp_path / LEDGER_FILE)
    waiter = NoopLedger(tmp_path / LEDGER_FILE, timeout=0.1)
    try:
        with holder.writing() as writer:
            writer.put("compute", "c1", {}, action="build", subject="amp-1")
            with pytest.raises(DriverError, match="locked") as raised:
                waiter.put("compute", "c2", {}, action="build", subject="amp-2")
        assert raised.value.retryable
        waiter.put("compute", "c2", {}, action="build", subject="amp-2")
        assert sorted(holder.live("compute")) == ["c1", "c2"]
    finally:
        holder.close()
        waiter.close()


def test_the_memory_ledger_writes_no_file_and_keeps_each_driver_apart(tmp_path):
    conf = noop_conf(tmp_path, "memory")
    first, second = noop.NoopCompute(conf), noop.NoopCompute(conf)
    compute_id = first.build("amp-1", "img", {})
    assert first.get(compute_id).compute_id == compute_id
    with pytest.raises(NotFound):
        second.get(compute_id)
    assert isinstance(first.ledger, MemoryLedger)
    assert first.ledger.count("compute", "build", subject="amp-1") == 1
    assert list(tmp_path.iterdir()) == []


# -- two driver instances, two processes, on one state_path -------------------------------------


def test_two_driver_instances_on_one_state_path_see_each_others_writes(tmp_path):
    conf = noop_conf(tmp_path)
    kinds: list[Callable[[cfg.ConfigOpts], object]] = [noop.NoopCompute, noop.NoopNetwork, noop.NoopAmphora]
    (compute_a, network_a, amphora_a), (compute_b, network_b, amphora_b) = (
        [kind(conf) for kind in kinds] for _ in range(2)
    )
    try:
        compute_id = compute_a.build("amp-1", "img", {ACTIVATION_TOKEN_FILE: b"t0k"})
        assert compute_b.get(compute_id).status == "ACTIVE"
        assert compute_b.config_drives[compute_id] == {ACTIVATION_TOKEN_FILE: b"t0k"}
        port = network_a.plug("amp-1", compute_id)
        assert network_b.ports == {port.port_id: port}

        amphora_a.instance_booted("amp-1", {ACTIVATION_TOKEN_FILE: b"t0k"})
        endpoint = AmphoraEndpoint("amp-1", "127.0.0.1")
        assert amphora_b.fetch_csr(endpoint, 1).server_public_key_pem == (
            amphora_a.fetch_csr(endpoint, 1).server_public_key_pem
        )
        assert amphora_b.activate(endpoint) == "t0k"
        with pytest.raises(AlreadyActivated, match="already activated"):
            amphora_a.activate(endpoint)
        amphora_b.upload_config(endpoint, "lb-1", "cfg", 3)
        assert amphora_a.get_info(endpoint)["loadbalancers"]["lb-1"]["config_version"] == 3

        compute_b.delete(compute_id)
        network_b.unplug(port.port_id)
        with pytest.raises(NotFound):
            compute_a.get(compute_id)
        assert compute_a.instances == {} and network_a.ports == {}
        ledger = NoopLedger(tmp_path / LEDGER_FILE)
        assert [e.action for e in ledger.events("compute")] == ["build", "delete"]
        assert [e.action for e in ledger.events("network", subject="amp-1")] == ["plug", "unplug"]
        ledger.close()
    finally:
        for driver in (compute_a, network_a, amphora_a, compute_b, network_b, amphora_b):
            driver.close()


def test_another_process_sees_what_a_driver_created(tmp_path):
    conf = noop_conf(tmp_path)
    manager = noop.NoopCertManager(conf)
    ref = manager.store(CertificateBundle(b"cert", b"key", (b"inter",), b"pass"), name="amp-1-server")
    script = (
        "import sys; from tests.unit.test_noop_ledger import noop_conf; from pathlib import Path; "
        "from keramos.plugins import noop; "
        "m = noop.NoopCertManager(noop_conf(Path(sys.argv[1]))); "
        "assert m.get(sys.argv[2]).intermediates == (b'inter',); m.delete(sys.argv[2])"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path), ref], cwd=ROOT, check=True, timeout=60)
    with pytest.raises(NotFound):
        manager.get(ref)
    assert {e.pid for e in manager.ledger.events("cert_manager", action="delete")} - {os.getpid()}
    manager.close()


# -- flows on the noop drivers ------------------------------------------------------------------

PAYLOAD = {"amphora_id": "amp-1", "image_id": "img-1", "lb": LB}


@pytest.mark.parametrize("mode", ["controller", "csr"])
def test_a_reverted_flow_leaves_no_live_entry_for_its_amphora_in_the_ledger(tmp_path, mode):
    faulty = failing_at(CreateAmphora, "mark_amphora_ready")
    with InProcessWorker(flows=[faulty], conf_overrides=certificate_mode(mode), state_path=tmp_path) as worker:
        with pytest.raises(InjectedFault):
            worker.run(faulty.name, PAYLOAD)
        nothing_left(worker)
        ledger = worker.drivers.compute.ledger
        assert isinstance(ledger, NoopLedger) and ledger.path == str(tmp_path / LEDGER_FILE)
    ledger = NoopLedger(tmp_path / LEDGER_FILE)
    try:
        # The certificate a csr-mode agent installed stays with its simulated agent, whose
        # instance the revert deleted: what matters is that no instance, port or bundle is left.
        for kind in ("compute", "network", "amphora.token", "amphora.config"):
            assert ledger.live(kind, subject="amp-1") == {}, kind
        assert ledger.live("cert_manager", subject="amphora-amp-1-server") == {}
        assert ledger.count("compute", "build", subject="amp-1") == 1
        assert ledger.count("compute", "delete", subject="amp-1") == 1
        plugged = ledger.count("network", "plug", subject="amp-1")
        assert plugged == ledger.count("network", "unplug", subject="amp-1") == 1
        stored = ledger.count("cert_manager", "store", subject="amphora-amp-1-server")
        assert stored == ledger.count("cert_manager", "delete", subject="amphora-amp-1-server") == 1
    finally:
        ledger.close()


def test_the_in_memory_attributes_read_the_ledger(tmp_path):
    with InProcessWorker(conf_overrides=certificate_mode("csr"), state_path=tmp_path) as worker:
        created = worker.run("create_amphora", PAYLOAD)["amphora"]
        drivers = worker.drivers
        assert list(drivers.compute.instances) == [created["compute_id"]]
        assert ACTIVATION_TOKEN_FILE in drivers.compute.config_drives[created["compute_id"]]
        assert len(drivers.network.ports) == 1 and len(drivers.cert_manager.bundles) == 1
        assert list(drivers.amphora.configs) == [("amp-1", "lb-1")]
        assert drivers.amphora.activation_tokens == {}
        assert list(drivers.amphora.server_keys) == list(drivers.amphora.certificates) == ["amp-1"]
        ledger = NoopLedger(tmp_path / LEDGER_FILE)
        assert ledger.count("cert_generator", "sign_csr", subject="amp-1") == 1
        ledger.close()
        worker.run("delete_amphora", {"amphora_id": "amp-1"})
        nothing_left(worker)


@pytest.mark.parametrize(
    ("mode", "kill_at"),
    [
        ("controller", "wait_for_amphora_active"),
        ("controller", "push_config_to_amphora"),
        ("csr", "activate_amphora"),
    ],
)
def test_a_worker_killed_mid_flow_resumes_on_the_noop_drivers_with_one_boot(tmp_path, mode, kill_at):
    state = tmp_path / "state"
    started = helper.run_in_subprocess(state, kill_at, mode, "start")
    assert started.returncode == -9, started.stderr
    killed_pid = int((state / "killed").read_text())
    ledger = NoopLedger(state / LEDGER_FILE)
    try:
        assert ledger.count("compute", "build", subject=helper.AMPHORA_ID) == 1
        activated_before = kill_at == "push_config_to_amphora"
        if not activated_before:
            assert ledger.live("amphora.token", subject=helper.AMPHORA_ID), "the agent's token was lost"

        resumed = helper.run_in_subprocess(state, kill_at, mode, "resume")
        assert resumed.returncode == 0, resumed.stderr

        conf = helper.make_worker_conf(str(state), mode)
        store = loader.load_state_store(conf)
        try:
            assert store.get(TaskRecord, helper.REQUEST_ID).state == TaskState.SUCCESS
            amphora = store.get(AmphoraRecord, helper.AMPHORA_ID)
        finally:
            store.close()
        assert amphora.status == AmphoraStatus.READY
        builds = ledger.events("compute", action="build", subject=helper.AMPHORA_ID)
        assert [(e.key, e.pid) for e in builds] == [(amphora.compute_id, killed_pid)]
        assert ledger.count("compute", "delete") == 0
        assert list(ledger.live("compute")) == [amphora.compute_id]
        assert ledger.count("network", "plug", subject=helper.AMPHORA_ID) == 1
        (activation,) = ledger.events("amphora.token", action="activate", subject=helper.AMPHORA_ID)
        assert (activation.pid == killed_pid) is activated_before
        assert ledger.live("amphora.token") == {}
        assert list(ledger.live("amphora.config")) and ledger.count("amphora.config", "delete_config") == 0
        if mode == "csr":
            assert ledger.count("amphora.server_key", "make_key", subject=helper.AMPHORA_ID) == 1
            assert ledger.count("cert_generator", "sign_csr", subject=helper.AMPHORA_ID) == 1
    finally:
        ledger.close()


# -- [noop_drivers] call_delay ------------------------------------------------------------------


def test_call_delay_is_zero_by_default_and_never_negative(tmp_path):
    assert noop.NoopCompute(noop_conf(tmp_path)).call_delay == 0
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        make_conf(config_files=[], overrides={"noop_drivers": {"call_delay": -0.01}})


def test_every_contract_call_sleeps_once_and_test_snapshots_do_not(tmp_path, monkeypatch):
    conf = make_conf(
        config_files=[],
        overrides={"DEFAULT": {"state_path": str(tmp_path)}, "noop_drivers": {"call_delay": 0.25}},
    )
    slept: list[float] = []
    monkeypatch.setattr(noop.time, "sleep", slept.append)
    compute, amphora, images = noop.NoopCompute(conf), noop.NoopAmphora(conf), noop.NoopImageStore(conf)
    try:
        compute_id = compute.build("amp-1", "img-1", {})
        compute.get(compute_id)
        endpoint = AmphoraEndpoint("amp-1", "127.0.0.1", 9443)
        amphora.get_info(endpoint)
        images.properties("img-1")
        assert slept == [0.25] * 4
        assert list(compute.instances) == [compute_id] and amphora.configs == {}
        assert slept == [0.25] * 4
    finally:
        compute.close()
        amphora.close()


def test_a_create_amphora_on_noop_drivers_takes_call_delay_per_driver_call(tmp_path):
    delay = 0.05
    overrides = {"noop_drivers": {"call_delay": delay}}
    with InProcessWorker(conf_overrides=overrides, state_path=tmp_path) as worker:
        assert worker.drivers.compute.call_delay == delay
        started = time.perf_counter()
        worker.run("create_amphora", PAYLOAD)
        elapsed = time.perf_counter() - started
    ledger = NoopLedger(tmp_path / LEDGER_FILE)
    try:
        # Every event is one driver call's write (reads and agent hellos add calls, not events).
        calls = len(ledger.events())
    finally:
        ledger.close()
    assert calls >= 5
    assert elapsed >= calls * delay, f"{calls} driver calls in {elapsed:.3f}s"
