"""``keramos-proxy --config-file FILE``: serve controllers' tunnels to the agents of the networks
in ``[proxy] networks`` and relay those networks' heartbeats upstream.

Stateless: everything comes from the configuration file, so any number of replicas can run
behind one address and a restarted proxy loses nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
import sys
from collections.abc import Sequence

from oslo_config import cfg
from oslo_log import log as logging

from keramos.framework.errors import KeramosError
from keramos.framework.warnings_filter import silence_dependency_warnings
from keramos.plugins.proxy.netns import NamespaceSockets
from keramos.plugins.proxy.options import ProxySettings, list_opts
from keramos.plugins.proxy.server import HeartbeatRelay, TunnelServer

LOG = logging.getLogger(__name__)

__all__ = ["list_opts", "main"]


def build_conf(argv: Sequence[str]) -> cfg.ConfigOpts:
    """The configuration from ``--config-file`` arguments (``[proxy]`` and oslo.log)."""
    parser = argparse.ArgumentParser(
        prog="keramos-proxy",
        description="Relay controllers' mutual-TLS tunnels to amphora agents on networks they "
        "cannot route to, and those amphorae's heartbeats to the health managers.",
    )
    parser.add_argument("--config-file", action="append", default=[], metavar="PATH", required=True)
    args = parser.parse_args(argv)
    conf = cfg.ConfigOpts()
    logging.register_options(conf)
    for group, opts in list_opts():
        conf.register_opts(opts, group=group)
    cli_args = [item for path in args.config_file for item in ("--config-file", path)]
    conf(cli_args, project="keramos", prog="keramos-proxy", default_config_files=[])
    return conf


async def serve(settings: ProxySettings, stopped: asyncio.Event | None = None) -> None:
    """Run until ``stopped`` is set (or SIGTERM/SIGINT when none is given)."""
    namespaces = {network_id: NamespaceSockets(name) for network_id, name in settings.networks.items()}
    tunnels = TunnelServer(settings, namespaces)
    relay = HeartbeatRelay(settings, namespaces)
    try:
        host, port = await tunnels.start()
        await relay.start()
        LOG.info("keramos-proxy serving %s on %s:%s", ", ".join(settings.networks), host, port)
        if stopped is None:
            stopped = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, stopped.set)
        await stopped.wait()
    finally:
        relay.stop()
        await tunnels.stop()
        for namespace in namespaces.values():
            namespace.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``keramos-proxy`` console script."""
    silence_dependency_warnings()
    try:
        conf = build_conf(sys.argv[1:] if argv is None else argv)
    except cfg.Error as error:
        print(f"keramos-proxy: configuration error: {error}", file=sys.stderr)
        return 2
    logging.setup(conf, "keramos")
    try:
        settings = ProxySettings.from_conf(conf)
        asyncio.run(serve(settings))
    except (KeramosError, ssl.SSLError, OSError) as error:
        print(f"keramos-proxy: cannot start: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
