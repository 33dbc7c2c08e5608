"""Octavia's half of ``bench_octavia``: run by an interpreter where OpenStack Octavia 19.0.0 is
installed (never by Keramos's own: Octavia is no dependency of Keramos).

It drives Octavia's own code, unchanged: the amphora create flow (``AmphoraFlows
.get_amphora_for_lb_subflow``, what ``create_load_balancer`` runs per amphora) through
``ControllerWorker.run_flow`` on Octavia's noop compute, network and amphora drivers and a file
SQLite database; and ``AmphoraAPIClient1_0.upload_config`` against real agents.

The parent speaks to it in JSON lines, one command on stdin, one answer on stdout, so that it can
alternate rounds of Octavia and of Keramos under the same machine load:

- ``{"command": "setup_create", "directory": D, "ca_certificate": C, "ca_private_key": K}``:
  configure Octavia (its local generator signs with the CA in files C and K), create its schema
  in ``D/octavia.sqlite``;
- ``{"command": "create", "flows": N, "concurrency": C, "certificates": "placeholder"|"rsa-2048"}``:
  run N create flows, C at once; answers ``{"seconds": S}``. ``placeholder`` swaps the flow's
  certificate generator for one that returns a pair made once at setup (the step does no
  cryptography; the pair still parses, as the next task reads its expiry); ``rsa-2048`` keeps
  Octavia's local generator, which makes an RSA-2048 key per amphora;
- ``{"command": "setup_push", "client_cert": BUNDLE, "server_ca": PATH, "agents": [[ID, ADDRESS,
  PORT], ...]}``: build Octavia's client;
- ``{"command": "push", "lb_id": L, "seconds": S, "config": TEXT, "changed": BOOL}``: push
  round-robin to the agents for S seconds; answers ``{"latencies": [...]}``. ``changed`` makes
  every push a new configuration (a comment line numbered), so that the agent runs
  ``haproxy -c``; otherwise the agent finds the same configuration stored and answers at once.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
import types
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from octavia.common import config as octavia_config
from octavia.common import constants
from octavia.controller.worker.v2 import controller_worker
from octavia.controller.worker.v2.flows import amphora_flows
from octavia.controller.worker.v2.tasks import cert_task
from octavia.db import api as db_api
from octavia.db import base_models, models
from oslo_log import log as oslo_logging

CONF = octavia_config.cfg.CONF
#: The lookup tables the create flow's rows point at, and the names they hold.
LOOKUPS = {
    models.ProvisioningStatus: constants.SUPPORTED_PROVISIONING_STATUSES,
    models.OperatingStatus: constants.SUPPORTED_OPERATING_STATUSES,
    models.LBTopology: constants.SUPPORTED_LB_TOPOLOGIES,
    models.AmphoraRoles: constants.SUPPORTED_AMPHORA_ROLES,
}


def _parse_configuration() -> None:
    """Parse no file and no argument, once: Octavia's defaults, then the benchmark's overrides."""
    if "debug" not in CONF:
        oslo_logging.register_options(CONF)
        CONF([], project="octavia", default_config_files=[])


class _PlaceholderPair:
    """What Octavia's generator returns, made once: the certificate step costs nothing."""

    def __init__(self, certificate: bytes, private_key: bytes) -> None:
        self.certificate = certificate
        self.private_key = private_key

    def generate_cert_key_pair(self, cn: str, validity: int, **_options: Any) -> _PlaceholderPair:
        return self


class CreateBench:
    """Octavia's controller worker, its noop drivers and a file SQLite database."""

    def __init__(self, directory: str, ca_certificate: str, ca_private_key: str) -> None:
        _parse_configuration()
        settings = {
            "controller_worker": {
                "compute_driver": "compute_noop_driver",
                "network_driver": "network_noop_driver",
                "amphora_driver": "amphora_noop_driver",
                "client_ca": ca_certificate,
                "loadbalancer_topology": constants.TOPOLOGY_SINGLE,
            },
            "certificates": {
                "cert_generator": "local_cert_generator",
                "ca_certificate": ca_certificate,
                "ca_private_key": ca_private_key,
            },
            # Octavia's default pool timeout is for a server database: SQLAlchemy refuses it
            # with the pool oslo.db gives a SQLite file.
            "database": {
                "connection": f"sqlite:///{os.path.join(directory, 'octavia.sqlite')}",
                "pool_timeout": None,
            },
        }
        for group, options in settings.items():
            for name, value in options.items():
                CONF.set_override(name, value, group=group)
        base_models.BASE.metadata.create_all(db_api.get_engine())
        with db_api.session().begin() as session:
            for table, names in LOOKUPS.items():
                session.add_all(table(name=name) for name in names)
        self.worker = controller_worker.ControllerWorker()
        real = cert_task.GenerateServerPEMTask(name="placeholder_source").cert_generator
        made = real.generate_cert_key_pair(cn="placeholder", validity=CONF.certificates.cert_validity_time)
        self.placeholder = _PlaceholderPair(made.certificate, made.private_key)

    def _load_balancers(self, count: int) -> list[str]:
        """``count`` load balancers in the database, as the API leaves them for the worker."""
        ids = [str(uuid.uuid4()) for _ in range(count)]
        with db_api.session().begin() as session:
            session.add_all(
                models.LoadBalancer(
                    id=lb_id,
                    project_id="bench",
                    provisioning_status=constants.PENDING_CREATE,
                    operating_status=constants.OFFLINE,
                    topology=constants.TOPOLOGY_SINGLE,
                    enabled=True,
                )
                for lb_id in ids
            )
        return ids

    def _flow(self, placeholder: bool) -> Any:
        flow = amphora_flows.AmphoraFlows().get_amphora_for_lb_subflow(
            constants.CREATE_AMP_FOR_LB_SUBFLOW, constants.ROLE_STANDALONE
        )
        if placeholder:
            for atom in flow.iter_nodes():
                if isinstance(atom[0], cert_task.GenerateServerPEMTask):
                    atom[0].cert_generator = self.placeholder
        return flow

    def create(self, flows: int, concurrency: int, certificates: str) -> dict[str, float]:
        """Run ``flows`` create flows, ``concurrency`` at once, as the worker's RPC threads do."""
        placeholder = certificates == "placeholder"
        lb_ids = self._load_balancers(flows)

        def create_one(lb_id: str) -> None:
            store = {
                constants.LOADBALANCER_ID: lb_id,
                constants.BUILD_TYPE_PRIORITY: constants.LB_CREATE_NORMAL_PRIORITY,
                constants.FLAVOR: None,
                constants.AVAILABILITY_ZONE: None,
                constants.SERVER_GROUP_ID: None,
            }
            self.worker.run_flow(self._flow, placeholder, store=store)

        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(create_one, lb_ids))
        seconds = time.perf_counter() - started
        with db_api.session().begin() as session:
            allocated = session.query(models.Amphora).filter(
                models.Amphora.load_balancer_id.in_(lb_ids),
                models.Amphora.status == constants.AMPHORA_ALLOCATED,
            ).count()
        if allocated != flows:
            raise RuntimeError(f"{allocated} of {flows} Octavia amphorae ended ALLOCATED")
        return {"seconds": seconds}


class PushBench:
    """Octavia's own API 1.0 client, one for all agents as Octavia's amphora driver keeps it."""

    def __init__(self, client_cert: str, server_ca: str, agents: list[list[Any]]) -> None:
        from octavia.amphorae.drivers.haproxy import rest_api_driver

        _parse_configuration()
        for name, value in {"client_cert": client_cert, "server_ca": server_ca}.items():
            CONF.set_override(name, value, group="haproxy_amphora")
        self.client = rest_api_driver.AmphoraAPIClient1_0()
        self.agents = [
            (types.SimpleNamespace(id=amphora_id, lb_network_ip=address, api_version="1.0"), port)
            for amphora_id, address, port in agents
        ]
        self.numbers = itertools.count()

    def push(self, lb_id: str, seconds: float, config: str, changed: bool) -> dict[str, list[float]]:
        """Push round-robin for ``seconds``. Octavia reads the agents' port from one option
        (every amphora listens on the same port in a cloud); here each agent has its own, so the
        option is set before each push, inside the timed call."""
        latencies = []
        agents = itertools.cycle(self.agents)
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            amp, port = next(agents)
            body = f"{config}# push {next(self.numbers)}\n" if changed else config
            began = time.perf_counter()
            CONF.set_override("bind_port", port, group="haproxy_amphora")
            self.client.upload_config(amp, lb_id, body.encode())
            latencies.append(time.perf_counter() - began)
        return {"latencies": latencies}


def main() -> int:
    """Answer the parent's commands until stdin closes; a failed command answers its error."""
    benches: dict[str, Any] = {}
    for line in sys.stdin:
        request = json.loads(line)
        command = request.pop("command")
        try:
            if command == "setup_create":
                benches["create"] = CreateBench(**request)
                answer: dict[str, Any] = {"ready": True}
            elif command in ("create", "push") and command not in benches:
                answer = {"error": f"{command}: send setup_{command} first"}
            elif command == "create":
                answer = benches["create"].create(**request)
            elif command == "setup_push":
                benches["push"] = PushBench(**request)
                answer = {"ready": True}
            elif command == "push":
                answer = benches["push"].push(**request)
            else:
                answer = {"error": f"unknown command {command!r}"}
        except Exception as error:  # the parent prints it and stops: one line, not a traceback
            answer = {"error": f"{command}: {type(error).__name__}: {error}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
