"""``keramos-agent --config-file FILE``: the agent's API served by gunicorn over mutual TLS.

gunicorn presents the server certificate and requires a client certificate signed by the client
CA (``cert_reqs = CERT_REQUIRED``): a client without one never reaches the application. The
``gthread`` worker keeps connections alive, so a controller pays the TLS handshake once per
amphora rather than once per request. In csr ``certificate_mode`` the agent makes its own server
key and a bootstrap certificate before gunicorn starts (:mod:`keramos.plugins.agent.identity`).

gunicorn's control socket (gunicorn 24 and later) is disabled: its default path is one per user
(``~/.gunicorn/gunicorn.ctl``), so every agent on a host would fight over it, and the agent is
controlled through its mutual-TLS API only.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import ssl
import sys
from collections.abc import Callable, Sequence
from typing import Any

from gunicorn.app.base import BaseApplication
from oslo_config import cfg

from keramos.plugins.agent import options
from keramos.plugins.agent.haproxy import HaproxyManager
from keramos.plugins.agent.heartbeat_sender import run_sender_process, sender_from_settings
from keramos.plugins.agent.identity import prepare_server_identity
from keramos.plugins.agent.lvs import LvsManager
from keramos.plugins.agent.options import GROUP, AgentSettings
from keramos.plugins.agent.server import create_app

list_opts = options.list_opts


def tls_context(conf: Any, default_factory: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    """gunicorn's ``ssl_context`` hook: its context, TLS 1.2 at least, client certificate required."""
    context = default_factory()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    return context


class AgentApplication(BaseApplication):
    """gunicorn application serving the agent with TLS and client certificates required."""

    def __init__(self, conf: cfg.ConfigOpts, config_file: str | None = None) -> None:
        self.agent_conf = conf
        self.settings = AgentSettings.from_conf(conf, config_file)
        if self.settings.certificate_mode == "csr":
            prepare_csr_mode(self.settings)
        super().__init__()

    def gunicorn_options(self) -> dict[str, Any]:
        """The gunicorn settings derived from ``[amphora_agent]``."""
        group = self.agent_conf[GROUP]
        missing = [
            name
            for name, value in (("server_cert", self.settings.server_cert), ("client_ca", group.client_ca))
            if not value
        ]
        if missing:
            raise SystemExit(f"keramos-agent: [{GROUP}] {', '.join(missing)} must be set")
        host = group.bind_host
        bind = f"[{host}]:{group.bind_port}" if ":" in host else f"{host}:{group.bind_port}"
        state_dir = self.settings.state_dir
        binary = self.settings.haproxy_binary
        heartbeat_settings = (
            group.amphora_id,
            group.controller_heartbeat_endpoints,
            group.heartbeat_key,
            group.heartbeat_interval,
            state_dir,
            binary,
        )
        try:
            sends_heartbeats = sender_from_settings(*heartbeat_settings) is not None
        except ValueError as error:
            raise SystemExit(f"keramos-agent: [{GROUP}] {error}") from None
        heartbeats: list[multiprocessing.process.BaseProcess] = []

        def start_heartbeats(_arbiter: Any) -> None:
            # A process of its own, spawned: no thread may run in the arbiter that forks workers.
            if sends_heartbeats:
                process = multiprocessing.get_context("spawn").Process(
                    target=run_sender_process, args=heartbeat_settings, daemon=True
                )
                process.start()
                heartbeats.append(process)

        def stop_load_balancers(_arbiter: Any) -> None:
            for process in heartbeats:
                process.terminate()
                process.join(5)
            HaproxyManager(state_dir, binary).stop_all()
            LvsManager(state_dir, self.settings.keepalived_binary).stop_all()

        options: dict[str, Any] = {
            "bind": [bind],
            "certfile": self.settings.server_cert,
            "keyfile": self.settings.server_key or self.settings.server_cert,
            "ca_certs": group.client_ca,
            "cert_reqs": ssl.CERT_REQUIRED,
            "ssl_context": tls_context,
            "worker_class": "gthread",
            "workers": group.workers,
            "threads": group.threads,
            "keepalive": group.keepalive,
            "accesslog": None,
            "errorlog": "-",
            "loglevel": "info",
            "proc_name": f"keramos-agent {group.amphora_id or ''}".strip(),
            "when_ready": start_heartbeats,
            "on_exit": stop_load_balancers,
        }
        if "control_socket_disable" in self.cfg.settings:
            options["control_socket_disable"] = True
        return options

    def load_config(self) -> None:
        """Hand the options to gunicorn (gunicorn's own command line is never parsed)."""
        for key, value in self.gunicorn_options().items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        """Build the Flask application in the worker."""
        return create_app(self.settings)


def prepare_csr_mode(settings: AgentSettings) -> None:
    """csr mode: make the agent's own server key and bootstrap certificate before gunicorn
    loads them (kept across restarts)."""
    if not settings.amphora_id:
        raise SystemExit(f"keramos-agent: [{GROUP}] amphora_id must be set in csr certificate_mode")
    assert settings.server_cert and settings.server_key
    prepare_server_identity(settings.amphora_id, settings.server_cert, settings.server_key)


def build_conf(argv: Sequence[str]) -> tuple[cfg.ConfigOpts, str | None]:
    """Parse ``--config-file`` arguments into a private configuration with the agent options."""
    parser = argparse.ArgumentParser(
        prog="keramos-agent",
        description="Keramos amphora agent: HAProxy control API over mutual TLS.",
    )
    parser.add_argument("--config-file", action="append", required=True, metavar="PATH")
    args = parser.parse_args(list(argv))
    conf = cfg.ConfigOpts()
    options.register_opts(conf)
    cli_args: list[str] = []
    for path in args.config_file:
        cli_args += ["--config-file", path]
    conf(cli_args, project="keramos-agent", default_config_files=[])
    os.makedirs(conf[GROUP].state_dir, mode=0o700, exist_ok=True)
    return conf, args.config_file[-1]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``keramos-agent`` console script."""
    conf, config_file = build_conf(sys.argv[1:] if argv is None else argv)
    AgentApplication(conf, config_file).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
