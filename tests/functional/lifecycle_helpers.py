"""Drivers for lifecycle tests and benchmarks on real agents: local dual CA and store, process
compute, rest amphora driver, sharing one configuration."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import requests
from oslo_config import cfg

from keramos.framework.config import make_conf
from keramos.framework.contracts import CertKind, FlowFactory
from keramos.framework.files import write_atomic
from keramos.framework.pki.ca import create_dual_ca
from keramos.framework.pki.options import register_opts
from keramos.framework.testing import InProcessWorker
from keramos.plugins.amphora_rest import RestAmphoraDriver
from keramos.plugins.amphora_rest import list_opts as rest_list_opts
from keramos.plugins.certificates.generator import LocalCertGenerator
from keramos.plugins.certificates.local_store import LocalCertManager, local_store_opts
from keramos.plugins.compute_process import ProcessCompute
from keramos.plugins.compute_process import list_opts as process_list_opts
from tests.functional.agent_helpers import require_haproxy

PASSPHRASE = "lifecycle test passphrase"
BODY = b"served through the amphora\n"
#: The drivers of a keramos-worker running real amphorae (``[drivers]``).
LIFECYCLE_DRIVERS = {"compute": "process", "amphora": "rest", "cert_generator": "local", "cert_manager": "local"}


def lifecycle_settings(state_path: str) -> dict[str, dict[str, Any]]:
    """Make a local dual CA and the controller's client certificate under ``state_path``; return
    the options (group -> name -> value) of the local CA and store, process compute and rest
    amphora driver that use them."""
    ca_dir = os.path.join(state_path, "ca")
    create_dual_ca(ca_dir, PASSPHRASE.encode())
    settings: dict[str, dict[str, Any]] = {
        "certificates": {"ca_dir": ca_dir, "ca_passphrase": PASSPHRASE},
        "cert_manager_local": {"passphrase": PASSPHRASE},
        "compute_process": {"haproxy_binary": require_haproxy()},
    }
    conf = _conf(state_path, settings)
    controller = LocalCertGenerator(conf).issue("keramos-controller", CertKind.CLIENT)
    client_cert = os.path.join(state_path, "client.pem")
    client_key = os.path.join(state_path, "client_key.pem")
    write_atomic(client_cert, controller.certificate_pem)
    write_atomic(client_key, controller.private_key_pem)
    settings["amphora_rest"] = {
        "controller_client_cert": client_cert,
        "controller_client_key": client_key,
        "server_ca": os.path.join(ca_dir, "server_ca.pem"),
        "connect_timeout": 2.0,
        "retries": 0,
        "backoff": 0.05,
    }
    return settings


def _conf(state_path: str, settings: dict[str, dict[str, Any]]) -> cfg.ConfigOpts:
    conf = make_conf([], config_files=[], overrides={"DEFAULT": {"state_path": state_path}})
    register_opts(conf)
    conf.register_opts(local_store_opts, group="cert_manager_local")
    for group, opts in process_list_opts() + rest_list_opts():
        conf.register_opts(opts, group=group)
    for group, values in settings.items():
        for name, value in values.items():
            conf.set_override(name, value, group=group)
    return conf


def lifecycle_drivers(
    state_path: str, extra_settings: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, Any]:
    """Local dual CA and store, process compute, rest amphora driver, sharing one configuration
    (``extra_settings``, group -> option -> value, on top)."""
    settings = lifecycle_settings(state_path)
    for group, values in (extra_settings or {}).items():
        settings.setdefault(group, {}).update(values)
    conf = _conf(state_path, settings)
    return {
        "cert_generator": LocalCertGenerator(conf),
        "cert_manager": LocalCertManager(conf),
        "compute": ProcessCompute(conf),
        "amphora": RestAmphoraDriver(conf),
    }


@contextlib.contextmanager
def lifecycle_worker(
    directory: Path,
    *,
    flows: Iterable[type[FlowFactory]] = (),
    other_drivers: Mapping[str, Any] | None = None,
    driver_settings: Mapping[str, Mapping[str, Any]] | None = None,
    worker_settings: Mapping[str, Mapping[str, Any]] | None = None,
    **amphora_options: Any,
) -> Iterator[InProcessWorker]:
    """An in-process worker on :func:`lifecycle_drivers` (and ``other_drivers``: kind -> driver
    or factory) under ``directory``, 30 s timeouts and ``[amphora]`` options on top; every agent
    it started is stopped afterwards. ``driver_settings`` go to the drivers' configuration,
    ``worker_settings`` to the worker's."""
    drivers = lifecycle_drivers(str(directory), driver_settings)
    overrides = {
        **(worker_settings or {}),
        "amphora": {"active_timeout": 30.0, "agent_timeout": 30.0, **amphora_options},
    }
    try:
        with InProcessWorker(
            flows=flows,
            conf_overrides=overrides,
            state_path=directory / "state",
            **{**(other_drivers or {}), **drivers},
        ) as worker:
            yield worker
    finally:
        drivers["compute"].close()
        drivers["amphora"].close()


def description(listener_port: int, backend_port: int) -> dict[str, Any]:
    """One HTTP listener on 127.0.0.1 in front of one backend."""
    return {
        "listeners": [
            {
                "id": "web",
                "protocol": "HTTP",
                "address": "127.0.0.1",
                "port": listener_port,
                "default_pool": "app",
            }
        ],
        "pools": [
            {
                "id": "app",
                "protocol": "HTTP",
                "health_check": False,
                "members": [{"id": "app-1", "address": "127.0.0.1", "port": backend_port}],
            }
        ],
    }


def wait_for_traffic(listener_port: int, timeout: float = 15.0) -> None:
    """Wait until GET / through HAProxy answers the backend's body."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            response = requests.get(f"http://127.0.0.1:{listener_port}/", timeout=2)
            if response.status_code == 200 and response.content == BODY:
                return
            last = response.status_code
        except requests.RequestException as error:
            last = error
        time.sleep(0.1)
    raise AssertionError(f"no traffic through port {listener_port}: {last}")


def instance_process_groups(compute_id: str) -> set[int]:
    """Process groups of the processes running in the instance's directory (agent, HAProxy)."""
    groups = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.path.basename(os.readlink(entry / "cwd")) == compute_id:
                groups.add(os.getpgid(int(entry.name)))
        except OSError:
            continue
    return groups
