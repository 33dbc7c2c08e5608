"""Benchmark: configuration pushes to 20 real agents through keramos-proxy against direct.

The same rest amphora driver pushes to the same agents (process compute driver, loopback) twice
in one run: directly, and through a ``keramos-proxy`` process (mutual TLS with the proxy, a
CONNECT tunnel per kept-alive connection, the agent's TLS inside). The two take turns in short
slices so that load from elsewhere on the machine weighs on both alike.

Rows (``keramos`` = through the proxy, ``raw`` = direct):

- re-push of the stored version (no ``haproxy -c``): what the tunnel costs; goal >= 0.8x;
- push of a new version (``haproxy -c`` on the agent): what a real push costs; goal >= 0.8x;
- p50 and p99 latency of the re-push (ratio = proxy / direct); goal p99 <= 1.5x.

``python bench/bench_proxy.py [DURATION_SECONDS] [AGENTS]``
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent))

from bench_agent import CONFIG, LB_ID, boot_agents, measure, percentile  # noqa: E402
from common import format_table, row  # noqa: E402

from tests.functional.agent_helpers import free_port, make_drivers, make_pki  # noqa: E402
from tests.functional.proxy_helpers import make_proxy_pki, proxy_config, running_proxy  # noqa: E402

NETWORK = "bench-net"


def rows(duration: float = 5.0, agents: int = 20) -> list[dict]:
    """Measure pushes per second and latency through the proxy and directly, in one run."""
    with tempfile.TemporaryDirectory(prefix="keramos-bench-proxy-") as directory:
        pki = make_pki(directory)
        proxy_pki = make_proxy_pki(str(Path(directory) / "proxy-ca"))
        compute, driver = make_drivers(directory, pki)
        for name, value in proxy_pki.rest_overrides().items():
            driver.conf.set_override(name, value, group="amphora_rest")
        port = free_port()
        config = proxy_config(proxy_pki, host="127.0.0.1", port=port, networks={NETWORK: None})
        config = config.replace("debug = true", "debug = false")
        try:
            with running_proxy(str(Path(directory) / "proxy"), config, host="127.0.0.1", port=port) as proxy:
                direct = boot_agents(compute, pki, agents)
                proxied = [
                    dataclasses.replace(endpoint, proxy=proxy.address, network_id=NETWORK)
                    for endpoint in direct
                ]
                by_amphora = {endpoint.amphora_id: endpoint for endpoint in proxied}
                for endpoint in direct:
                    driver.wait_until_reachable(endpoint, 60)
                    driver.put_config(endpoint, LB_ID, CONFIG, 1)
                transport = measure(
                    {
                        "through the proxy re-push": lambda e: driver.put_config(
                            by_amphora[e.amphora_id], LB_ID, CONFIG, 1
                        ),
                        "direct re-push": lambda e: driver.put_config(e, LB_ID, CONFIG, 1),
                    },
                    direct,
                    duration,
                )
                versions = itertools.count(2)
                full = measure(
                    {
                        "through the proxy new version": lambda e: driver.put_config(
                            by_amphora[e.amphora_id], LB_ID, CONFIG, next(versions)
                        ),
                        "direct new version": lambda e: driver.put_config(e, LB_ID, CONFIG, next(versions)),
                    },
                    direct,
                    duration,
                )
        finally:
            driver.close()
            compute.close()
    (proxied_rate, proxied_latencies), (direct_rate, direct_latencies) = transport.values()
    (proxied_full, _), (direct_full, _) = full.values()
    table = [
        row(f"re-push to {agents} agents via proxy", proxied_rate, direct_rate, "pushes/s", ">= 0.8x"),
        row(f"push new version to {agents} agents via proxy", proxied_full, direct_full, "pushes/s", ">= 0.8x"),
    ]
    for name, fraction, goal in (("p50", 0.5, "report"), ("p99", 0.99, "<= 1.5x")):
        proxied_ms = percentile(proxied_latencies, fraction)
        direct_ms = percentile(direct_latencies, fraction)
        table.append(row(f"re-push latency {name} via proxy", proxied_ms, direct_ms, "ms", goal))
    return table


if __name__ == "__main__":
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    print(format_table(rows(seconds, count)))
