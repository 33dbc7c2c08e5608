"""The ``[amphora_agent]`` options and the settings the agent application runs with."""

from __future__ import annotations

import dataclasses
import os

from oslo_config import cfg

GROUP = "amphora_agent"
#: In csr mode, the agent's certificate and its own key in state_dir unless configured elsewhere.
CSR_MODE_CERT_NAME = "amphora_server_cert.pem"
CSR_MODE_KEY_NAME = "amphora_server_key.pem"

agent_opts = [
    cfg.StrOpt(
        "bind_host",
        default="0.0.0.0",
        help="Address the agent's HTTPS API listens on.",
    ),
    cfg.PortOpt("bind_port", default=9443, help="TCP port the agent's HTTPS API listens on."),
    cfg.StrOpt(
        "amphora_id",
        help="Id of the amphora this agent runs on; its server certificate names it, and "
        "configurations addressed to another amphora are refused.",
    ),
    cfg.StrOpt(
        "server_cert",
        help="PEM file holding the agent's server certificate (signed by the server CA). It may "
        "also hold the private key, in which case server_key can be left unset.",
    ),
    cfg.StrOpt(
        "server_key",
        help="PEM file holding the private key of the server certificate (mode 0600).",
    ),
    cfg.StrOpt(
        "certificate_mode",
        default="controller",
        choices=[
            ("controller", "server_cert and server_key come from the controller (config drive)"),
            (
                "csr",
                "the agent makes its own EC P-256 server key (it never leaves the amphora) and a "
                "self-signed bootstrap certificate, and hands a CSR naming amphora_id to the "
                "controller, which installs the signed certificate",
            ),
        ],
        help="Who makes the agent's server key. In csr mode amphora_id must be set, and "
        "server_cert and server_key default to files in state_dir.",
    ),
    cfg.StrOpt(
        "activation_token_file",
        help="The config drive's one-time activation token. Set: the agent starts unactivated "
        "and refuses configuration changes (409) until a controller takes the token with "
        "POST /1.0/activate; the file is then deleted and the activation recorded in state_dir. "
        "The file must be writable by the agent. Unset: the agent needs no activation.",
    ),
    cfg.StrOpt(
        "client_ca",
        help="PEM file of the client CA: only clients presenting a certificate it signed can "
        "complete the TLS handshake.",
    ),
    cfg.StrOpt(
        "state_dir",
        default="/var/lib/keramos-agent",
        help="Directory where the agent keeps load balancer configurations, their versions, "
        "HAProxy pid files and listener certificates.",
    ),
    cfg.StrOpt(
        "haproxy_binary",
        default="haproxy",
        help="HAProxy executable used to validate configurations and run load balancers.",
    ),
    cfg.StrOpt(
        "keepalived_binary",
        default="keepalived",
        help="keepalived executable used to validate and run UDP (LVS) listener configurations.",
    ),
    cfg.FloatOpt(
        "haproxy_timeout",
        default=30.0,
        min=1.0,
        help="Seconds a 'haproxy -c' or 'keepalived --config-test' check, start or reload may "
        "take before it is abandoned.",
    ),
    cfg.IntOpt(
        "max_config_bytes",
        default=1 << 20,
        min=1024,
        help="Largest HAProxy configuration, UDP listener configuration or agent configuration "
        "body accepted, in bytes (413 above it, whatever the transfer encoding).",
    ),
    cfg.IntOpt(
        "max_certificate_bytes",
        default=64 << 10,
        min=1024,
        help="Largest certificate or PEM bundle body accepted, in bytes.",
    ),
    cfg.IntOpt("workers", default=1, min=1, help="gunicorn worker processes."),
    cfg.IntOpt(
        "threads",
        default=8,
        min=1,
        help="Threads per gunicorn worker; also the number of kept-alive connections one "
        "worker serves at once.",
    ),
    cfg.IntOpt(
        "keepalive",
        default=75,
        min=0,
        help="Seconds an idle kept-alive connection stays open, so that the controller reuses "
        "its TLS sessions instead of handshaking for every request.",
    ),
    cfg.ListOpt(
        "controller_heartbeat_endpoints",
        default=[],
        help="host:port of every health manager ([health] bind_host/bind_port) the agent sends "
        "its UDP heartbeats to. Empty: no heartbeats are sent.",
    ),
    cfg.FloatOpt(
        "heartbeat_interval",
        default=10.0,
        min=0.05,
        help="Seconds between two heartbeats; keep it well below the health manager's "
        "[health] heartbeat_timeout.",
    ),
    cfg.StrOpt(
        "heartbeat_key",
        secret=True,
        help="Shared key signing the heartbeats (HMAC-SHA256); must equal the health manager's "
        "[health] heartbeat_key. Unset: no heartbeats are sent.",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    """Register the ``[amphora_agent]`` options on ``conf`` (idempotent)."""
    conf.register_opts(agent_opts, group=GROUP)


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """The agent's options, for the sample-config generator."""
    return [(GROUP, list(agent_opts))]


@dataclasses.dataclass(frozen=True)
class AgentSettings:
    """What the agent application needs, independent of where it was configured.

    ``config_file`` is the agent configuration that ``PUT /1.0/config`` replaces; without it that
    route answers 503. ``activation_token_file`` unset means the agent needs no activation; in
    ``csr`` ``certificate_mode``, ``server_cert`` and ``server_key`` are the files of the key the
    agent makes itself (in ``state_dir`` unless configured).
    """

    state_dir: str
    amphora_id: str | None = None
    haproxy_binary: str = "haproxy"
    haproxy_timeout: float = 30.0
    keepalived_binary: str = "keepalived"
    max_config_bytes: int = 1 << 20
    max_certificate_bytes: int = 64 << 10
    server_cert: str | None = None
    server_key: str | None = None
    config_file: str | None = None
    certificate_mode: str = "controller"
    activation_token_file: str | None = None

    @classmethod
    def from_conf(cls, conf: cfg.ConfigOpts, config_file: str | None = None) -> AgentSettings:
        """Build settings from a configuration carrying the ``[amphora_agent]`` options."""
        register_opts(conf)
        group = conf[GROUP]
        server_cert, server_key = group.server_cert, group.server_key
        if group.certificate_mode == "csr":
            server_cert = server_cert or os.path.join(group.state_dir, CSR_MODE_CERT_NAME)
            server_key = server_key or os.path.join(group.state_dir, CSR_MODE_KEY_NAME)
        return cls(
            state_dir=group.state_dir,
            amphora_id=group.amphora_id,
            haproxy_binary=group.haproxy_binary,
            haproxy_timeout=group.haproxy_timeout,
            keepalived_binary=group.keepalived_binary,
            max_config_bytes=group.max_config_bytes,
            max_certificate_bytes=group.max_certificate_bytes,
            server_cert=server_cert,
            server_key=server_key,
            config_file=config_file,
            certificate_mode=group.certificate_mode,
            activation_token_file=group.activation_token_file,
        )
