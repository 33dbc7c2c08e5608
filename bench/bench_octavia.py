"""Benchmark: Keramos against OpenStack Octavia 19.0.0's own code, in the same run.

Octavia is no dependency of Keramos: its half runs in a subprocess (``octavia_side.py``) on an
interpreter where it is installed. That interpreter is ``$KERAMOS_OCTAVIA_PYTHON`` if set, else
the ``octavia-compat`` tox environment's, else a virtualenv this module makes once under
``.tox/bench-octavia-19.0.0`` (``pip install octavia==19.0.0 pyroute2``: about a minute, then
reused). Each side runs in its own process, and they take turns, round after round, so that a
burst of load on a shared machine weighs on both alike; each row keeps each side's best round.

1. Amphora creations per second: Octavia's create flow (``get_amphora_for_lb_subflow``, the flow
   ``create_load_balancer`` runs per amphora, 11 tasks and two retry subflows) run by its
   ``ControllerWorker.run_flow`` (its parallel taskflow engine) on its noop compute, network and
   amphora drivers and a file SQLite database, against Keramos's ``create_amphora`` (noop drivers,
   file SQLite state store and flow persistence, unsigned image, no ``lb``). Both start
   ``concurrency`` flows at once (Octavia's RPC threads, Keramos's ``executor_threads``); more
   than a few at once makes Octavia's SQLite transactions fail with ``database is locked``. Two
   variants: placeholder certificates (Octavia's generator swapped for one returning a pair made
   once; Keramos's noop generator) and real ones (Octavia's local generator, RSA-2048 per
   amphora; Keramos's local generator, its default key type). Goal >= 10x.
2. Configuration pushes to ``agents`` real ``keramos-agent`` processes (mutual TLS, loopback),
   round-robin: Octavia's ``AmphoraAPIClient1_0.upload_config`` (API 1.0, unversioned, one
   ``requests`` session for every amphora as Octavia's driver keeps it; that session keeps
   connection pools for 10 hosts, so with more agents than that each push opens a new TLS
   connection) against Keramos's rest amphora driver (a kept-alive session per amphora,
   versioned). Each client pushes to its own load balancer id on the same agents, with the same
   configuration. Re-push of what is stored (the agent answers without ``haproxy -c``: the
   transport) with p50/p99, and a new configuration every push (``haproxy -c`` on the agent).

``python bench/bench_octavia.py [CREATIONS] [AGENTS]``; progress goes to stderr, the table to
stdout.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import venv
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent))

from bench_agent import CONFIG, boot_agents, percentile  # noqa: E402
from bench_certificates import local_generator  # noqa: E402
from bench_lifecycle import creations_per_second  # noqa: E402
from common import BenchUnavailable, format_table, row  # noqa: E402

from keramos.flows.tasks import amphora_lifecycle as lifecycle_tasks  # noqa: E402
from keramos.framework.pki.keys import DEFAULT_KEY_TYPE  # noqa: E402
from tests.functional.agent_helpers import make_ca, make_drivers, make_pki  # noqa: E402

OCTAVIA_VERSION = "19.0.0"
OCTAVIA_REQUIREMENTS = [f"octavia=={OCTAVIA_VERSION}", "pyroute2"]
OCTAVIA_PYTHON_ENV = "KERAMOS_OCTAVIA_PYTHON"
OWN_VENV = ROOT.parent / ".tox" / f"bench-octavia-{OCTAVIA_VERSION}"
CANDIDATES = (ROOT.parent / ".tox" / "octavia-compat" / "bin" / "python", OWN_VENV / "bin" / "python")
KERAMOS_LB = "lb-bench-keramos"
OCTAVIA_LB = "lb-bench-octavia"


class OctaviaUnavailable(BenchUnavailable):
    """No interpreter with Octavia could be found or made; the message says what to do."""


def _has_octavia(python: Path | str) -> bool:
    probe = "import importlib.metadata as m, octavia; print(m.version('octavia'))"
    try:
        found = subprocess.run(
            [str(python), "-c", probe], capture_output=True, text=True, timeout=120, check=False
        )
    except OSError:
        return False
    return found.returncode == 0 and found.stdout.strip() == OCTAVIA_VERSION


def octavia_python() -> str:
    """An interpreter where Octavia is installed (see the module docstring for where from)."""
    chosen = os.environ.get(OCTAVIA_PYTHON_ENV)
    if chosen:
        if not _has_octavia(chosen):
            raise OctaviaUnavailable(f"${OCTAVIA_PYTHON_ENV}={chosen} has no octavia {OCTAVIA_VERSION}")
        return chosen
    for candidate in CANDIDATES:
        if candidate.exists() and _has_octavia(candidate):
            return str(candidate)
    print(f"  installing octavia {OCTAVIA_VERSION} into {OWN_VENV} (once)", file=sys.stderr)
    try:
        venv.create(OWN_VENV, with_pip=True, clear=True)
        subprocess.run(
            [str(OWN_VENV / "bin" / "python"), "-m", "pip", "install", "-q", *OCTAVIA_REQUIREMENTS],
            check=True,
            timeout=900,
        )
    except (OSError, subprocess.SubprocessError) as error:
        raise OctaviaUnavailable(
            f"could not install octavia {OCTAVIA_VERSION} into {OWN_VENV} ({error}); run "
            f"`tox -e octavia-compat --notest` or set ${OCTAVIA_PYTHON_ENV} to a Python that has it"
        ) from None
    return str(OWN_VENV / "bin" / "python")


class OctaviaSide:
    """``octavia_side.py`` in a subprocess: one JSON command out, one JSON answer back."""

    def __init__(self, python: str, log: IO[str]) -> None:
        self.log = log
        self.process = subprocess.Popen(
            [python, "-W", "ignore", str(ROOT / "octavia_side.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )

    def call(self, command: str, **arguments: Any) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps({"command": command, **arguments}) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        answer = json.loads(line) if line else {"error": f"{command}: Octavia's side exited"}
        if "error" in answer:
            self.log.flush()
            self.log.seek(0)
            tail = "".join(self.log.readlines()[-20:])
            raise RuntimeError(f"Octavia's side failed: {answer['error']}\n{tail}")
        return answer

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=60)


def _create_rows(
    octavia: OctaviaSide, directory: str, creations: int, concurrency: int, rounds: int
) -> list[dict[str, Any]]:
    ca_certificate, ca_private_key = make_ca("Octavia bench CA").write(directory, "octavia_ca")
    octavia.call(
        "setup_create", directory=directory, ca_certificate=ca_certificate, ca_private_key=ca_private_key
    )
    # One warning per unsigned boot would bury the progress lines.
    logging.getLogger(lifecycle_tasks.__name__).setLevel(logging.ERROR)
    overrides = {
        "amphora": {"require_signed_images": False},
        "worker": {"executor_threads": concurrency},
    }
    real_generator = local_generator(directory, DEFAULT_KEY_TYPE)
    variants: dict[str, dict[str, Any]] = {
        "placeholder": {},
        "rsa-2048": {"cert_generator": real_generator},
    }
    best: dict[tuple[str, str], float] = {}
    for round_number in range(rounds):
        for certificates, drivers in variants.items():
            seconds = octavia.call(
                "create", flows=creations, concurrency=concurrency, certificates=certificates
            )["seconds"]
            print(
                f"  round {round_number + 1}, {certificates} certificates, Octavia: "
                f"{creations} in {seconds:.1f}s, {creations / seconds:.1f}/s",
                file=sys.stderr,
            )
            keramos = creations_per_second(
                f"round {round_number + 1}, {certificates} certificates, Keramos",
                overrides,
                creations,
                **drivers,
            )
            for side, rate in (("octavia", creations / seconds), ("keramos", keramos)):
                best[side, certificates] = max(best.get((side, certificates), 0.0), rate)
    return [
        row(
            f"create_amphora/s noop drivers, SQLite, {concurrency} at once, placeholder "
            "certificates (raw: Octavia 19 create flow, same run)",
            best["keramos", "placeholder"],
            best["octavia", "placeholder"],
            "flows/s",
            ">= 10x",
        ),
        row(
            f"create_amphora/s noop drivers, SQLite, {concurrency} at once, real certificates: "
            f"Keramos {DEFAULT_KEY_TYPE} (raw: Octavia 19 create flow, RSA-2048, same run)",
            best["keramos", "rsa-2048"],
            best["octavia", "rsa-2048"],
            "flows/s",
            ">= 10x",
        ),
    ]


def _keramos_pushes(
    push: Callable[[Any], None], endpoints: list[Any], seconds: float
) -> list[float]:
    latencies = []
    agents = itertools.cycle(endpoints)
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        began = time.perf_counter()
        push(next(agents))
        latencies.append(time.perf_counter() - began)
    return latencies


def _push_rows(
    octavia: OctaviaSide, directory: str, agents: int, duration: float, slices: int
) -> list[dict[str, Any]]:
    pki = make_pki(directory)
    bundle = pki.path("octavia_client.pem")
    with open(bundle, "wb") as stream:
        stream.write(pki.controller.cert_pem + pki.controller.key_pem)
    os.chmod(bundle, 0o600)
    compute, driver = make_drivers(directory, pki)
    try:
        endpoints = boot_agents(compute, pki, agents)
        for endpoint in endpoints:
            driver.wait_until_reachable(endpoint, 60)
        octavia.call(
            "setup_push",
            client_cert=bundle,
            server_ca=pki.path("server_ca_cert.pem"),
            agents=[[e.amphora_id, e.address, e.port] for e in endpoints],
        )
        versions = itertools.count(1)
        keramos_pushes = {
            False: lambda e: driver.put_config(e, KERAMOS_LB, CONFIG, 1),
            True: lambda e: driver.put_config(e, KERAMOS_LB, CONFIG, next(versions)),
        }
        latencies: dict[tuple[str, bool], list[float]] = {}
        for changed in (False, True):
            _keramos_pushes(keramos_pushes[changed], endpoints, 0.5)
            octavia.call("push", lb_id=OCTAVIA_LB, seconds=0.5, config=CONFIG, changed=changed)
            keramos_side = latencies.setdefault(("keramos", changed), [])
            octavia_side = latencies.setdefault(("octavia", changed), [])
            for _ in range(slices):
                keramos_side += _keramos_pushes(keramos_pushes[changed], endpoints, duration / slices)
                octavia_side += octavia.call(
                    "push", lb_id=OCTAVIA_LB, seconds=duration / slices, config=CONFIG, changed=changed
                )["latencies"]
            print(
                f"  pushes ({'new configuration' if changed else 're-push'}): Keramos "
                f"{len(keramos_side)}, Octavia {len(octavia_side)} in {duration:.0f}s each",
                file=sys.stderr,
            )
    finally:
        driver.close()
        compute.close()

    def rate(side: str, changed: bool) -> float:
        return len(latencies[side, changed]) / sum(latencies[side, changed])

    table = [
        row(
            f"re-push to {agents} agents (raw: Octavia 19 AmphoraAPIClient upload_config, same run)",
            rate("keramos", False),
            rate("octavia", False),
            "pushes/s",
            "> 1x",
        ),
        row(
            f"new configuration to {agents} agents, haproxy -c (raw: Octavia 19 client, same run)",
            rate("keramos", True),
            rate("octavia", True),
            "pushes/s",
            "> 1x",
        ),
    ]
    for name, fraction in (("p50", 0.5), ("p99", 0.99)):
        keramos_ms = percentile(latencies["keramos", False], fraction)
        octavia_ms = percentile(latencies["octavia", False], fraction)
        latency = row(
            f"re-push latency {name} (raw: Octavia 19 client)", keramos_ms, octavia_ms, "ms",
            "lower; ratio raw/keramos",
        )
        latency["ratio"] = octavia_ms / keramos_ms
        table.append(latency)
    return table


def rows(
    creations: int = 200,
    concurrency: int = 4,
    rounds: int = 2,
    agents: int = 20,
    duration: float = 5.0,
    slices: int = 5,
) -> list[dict[str, Any]]:
    """Creations/s against Octavia's create flow (both certificate variants), then pushes/s and
    p50/p99 against Octavia's client (``agents`` 0 skips them)."""
    python = octavia_python()
    with tempfile.TemporaryDirectory(prefix="keramos-bench-octavia-") as directory:
        with open(os.path.join(directory, "octavia-side.log"), "w+", encoding="utf-8") as log:
            octavia = OctaviaSide(python, log)
            try:
                table = _create_rows(octavia, directory, creations, concurrency, rounds)
                if agents:
                    table += _push_rows(octavia, directory, agents, duration, slices)
            finally:
                octavia.close()
    return table


if __name__ == "__main__":
    try:
        print(
            format_table(
                rows(
                    int(sys.argv[1]) if len(sys.argv) > 1 else 200,
                    agents=int(sys.argv[2]) if len(sys.argv) > 2 else 20,
                )
            )
        )
    except OctaviaUnavailable as error:
        print(f"bench_octavia: {error}", file=sys.stderr)
        sys.exit(2)
