"""Benchmark: configuration pushes to 20 real agents over mutual TLS.

Keramos's rest amphora driver keeps one pooled, kept-alive session per amphora; the raw
comparison sends the same request with ``requests`` over a new TLS connection each time (same
certificates, same amphora-id check). Both run in the same process against the same agents,
started by the process compute driver.

Rows:

- re-push of the stored version (the agent answers after its version check, no ``haproxy -c``):
  what the transport costs; goal >= 5x pushes per second;
- push of a new version (``haproxy -c`` on the agent, no reload): what a real push costs;
- p50 and p99 latency of the re-push (ratio = raw / keramos, higher is better).

``python bench/bench_agent.py [DURATION_SECONDS] [AGENTS]``
"""

from __future__ import annotations

import itertools
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent))

from common import format_table, row  # noqa: E402

from keramos.flows.templates import render_haproxy_config  # noqa: E402
from keramos.framework.agent_protocol import rest as protocol  # noqa: E402
from keramos.framework.contracts import AmphoraEndpoint, InstanceStatus  # noqa: E402
from keramos.plugins.amphora_rest import AmphoraIdAdapter, RestAmphoraDriver  # noqa: E402
from tests.functional.agent_helpers import make_drivers, make_pki  # noqa: E402

LB_ID = "lb-bench"
CONFIG = render_haproxy_config(
    LB_ID,
    [{"id": "web", "protocol": "HTTP", "address": "127.0.0.1", "port": 18080, "default_pool": "app"}],
    [
        {
            "id": "app",
            "protocol": "HTTP",
            "members": [{"id": f"m{n}", "address": "127.0.0.1", "port": 18100 + n} for n in range(4)],
        }
    ],
)


def new_connection_put(driver: RestAmphoraDriver, endpoint: AmphoraEndpoint, version: int) -> None:
    """The raw way: a new session, hence a new TCP connection and TLS handshake, per request."""
    with requests.Session() as session:
        session.trust_env = False
        session.verify = driver.server_ca
        session.cert = driver.client_cert
        session.mount("https://", AmphoraIdAdapter(endpoint.amphora_id, 1))
        response = session.put(
            driver.url(
                endpoint,
                protocol.path(protocol.HAPROXY_UPLOAD, amphora_id=endpoint.amphora_id, lb_id=LB_ID),
            ),
            data=CONFIG.encode(),
            headers={"X-Config-Version": str(version), "Content-Type": "text/plain"},
            timeout=driver.timeout,
        )
        response.raise_for_status()


def measure(
    pushes: dict[str, Callable[[AmphoraEndpoint], None]],
    endpoints: Sequence[AmphoraEndpoint],
    duration: float,
    slices: int = 5,
) -> dict[str, tuple[float, list[float]]]:
    """Push round-robin to every agent with each method for ``duration`` seconds in total.

    The methods take turns in ``slices`` short runs, so that a burst of load from elsewhere on
    the machine weighs on both alike. Returns, per method, pushes/s and every push's latency.
    """
    for push in pushes.values():
        for endpoint in endpoints:
            push(endpoint)
    latencies: dict[str, list[float]] = {label: [] for label in pushes}
    elapsed = dict.fromkeys(pushes, 0.0)
    agents = itertools.cycle(endpoints)
    for _ in range(slices):
        for label, push in pushes.items():
            start = time.perf_counter()
            while time.perf_counter() - start < duration / slices:
                began = time.perf_counter()
                push(next(agents))
                latencies[label].append(time.perf_counter() - began)
            elapsed[label] += time.perf_counter() - start
    results = {}
    for label in pushes:
        count = len(latencies[label])
        print(f"  {label}: {count} pushes in {elapsed[label]:.1f}s", file=sys.stderr)
        results[label] = (count / elapsed[label], latencies[label])
    return results


def percentile(values: list[float], fraction: float) -> float:
    """The ``fraction`` quantile of ``values``, in milliseconds."""
    return statistics.quantiles(values, n=100, method="inclusive")[round(fraction * 100) - 1] * 1000


def boot_agents(compute, pki, count: int) -> list[AmphoraEndpoint]:
    """Start ``count`` agents at once and wait until every one is ACTIVE."""
    compute_ids = {
        f"amp-bench-{n}": compute.build(f"amp-bench-{n}", "image", pki.config_drive(f"amp-bench-{n}"))
        for n in range(count)
    }
    endpoints = []
    deadline = time.monotonic() + 120
    for amphora_id, compute_id in compute_ids.items():
        while (instance := compute.get(compute_id)).status != InstanceStatus.ACTIVE:
            if instance.status == InstanceStatus.ERROR or time.monotonic() > deadline:
                raise RuntimeError(f"{amphora_id} did not start: {instance.fault}")
            time.sleep(0.05)
        endpoints.append(AmphoraEndpoint(amphora_id, instance.address, instance.port))
    return endpoints


def rows(duration: float = 5.0, agents: int = 20) -> list[dict]:
    """Measure pushes per second and latency, kept-alive driver against new TLS connections."""
    with tempfile.TemporaryDirectory(prefix="keramos-bench-agent-") as directory:
        pki = make_pki(directory)
        compute, driver = make_drivers(directory, pki)
        try:
            endpoints = boot_agents(compute, pki, agents)
            for endpoint in endpoints:
                driver.wait_until_reachable(endpoint, 60)
                driver.put_config(endpoint, LB_ID, CONFIG, 1)
            transport = measure(
                {
                    "kept-alive re-push": lambda e: driver.put_config(e, LB_ID, CONFIG, 1),
                    "new-connection re-push": lambda e: new_connection_put(driver, e, 1),
                },
                endpoints,
                duration,
            )
            versions = itertools.count(2)
            full = measure(
                {
                    "kept-alive new version": lambda e: driver.put_config(
                        e, LB_ID, CONFIG, next(versions)
                    ),
                    "new-connection new version": lambda e: new_connection_put(
                        driver, e, next(versions)
                    ),
                },
                endpoints,
                duration,
            )
        finally:
            driver.close()
            compute.close()
    (kept_rate, kept_latencies), (new_rate, new_latencies) = transport.values()
    (kept_full, _), (new_full, _) = full.values()
    table = [
        row(f"re-push to {agents} agents (transport)", kept_rate, new_rate, "pushes/s", ">= 5x"),
        row(f"push new version to {agents} agents (haproxy -c)", kept_full, new_full, "pushes/s", "report"),
    ]
    for name, fraction in (("p50", 0.5), ("p99", 0.99)):
        kept_ms, new_ms = percentile(kept_latencies, fraction), percentile(new_latencies, fraction)
        latency = row(f"re-push latency {name}", kept_ms, new_ms, "ms", "lower; ratio raw/keramos")
        latency["ratio"] = new_ms / kept_ms
        table.append(latency)
    return table


if __name__ == "__main__":
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    print(format_table(rows(seconds, count)))
