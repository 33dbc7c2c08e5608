"""The ``[proxy]`` options of ``keramos-proxy`` and the settings it runs with."""

from __future__ import annotations

import dataclasses
import os
import re

from oslo_config import cfg

from keramos.framework.agent_protocol.heartbeat import parse_endpoint
from keramos.framework.agent_protocol.proxy import route_key_bytes
from keramos.framework.errors import ConfigError
from keramos.framework.schema import IDENTIFIER_PATTERN

GROUP = "proxy"
_ID_RE = re.compile(IDENTIFIER_PATTERN)

proxy_opts = [
    cfg.StrOpt("bind_host", default="0.0.0.0", help="Address the controllers connect to (TCP)."),
    cfg.PortOpt("bind_port", default=9444, help="Port the controllers connect to (mutual TLS)."),
    cfg.StrOpt(
        "server_cert",
        help="PEM file of the proxy's server certificate, issued by the proxy CA ('keramos cert "
        "issue-proxy --role server'); it may also hold the key.",
    ),
    cfg.StrOpt("server_key", help="PEM file of the proxy's private key (0600)."),
    cfg.StrOpt(
        "proxy_ca",
        help="PEM file of the proxy CA: only controllers presenting a client certificate it "
        "signed complete the TLS handshake. Not the amphora server or client CA.",
    ),
    cfg.StrOpt(
        "route_key",
        secret=True,
        help="Key shared with the controllers ([amphora_rest] proxy_route_key) that signs each "
        "route (HMAC-SHA256). Prefer route_key_file; set only one.",
    ),
    cfg.StrOpt("route_key_file", help="File whose content (trailing newline removed) is route_key."),
    cfg.ListOpt(
        "networks",
        default=[],
        help="The allow-list: NETWORK_ID:NAMESPACE for every network this proxy serves, NAMESPACE "
        "being the network namespace its connections leave from (empty: the proxy's own). A "
        "request for any other network is refused (403) and logged.",
    ),
    cfg.FloatOpt(
        "connect_timeout", default=5.0, min=0.01, help="Seconds to connect to an agent."
    ),
    cfg.PortOpt(
        "heartbeat_port",
        default=0,
        help="UDP port the proxy receives amphora heartbeats on, in every served network's "
        "namespace; 0: no heartbeat relay.",
    ),
    cfg.StrOpt(
        "heartbeat_bind_host",
        default="0.0.0.0",
        help="Address the heartbeat relay listens on in every served network's namespace.",
    ),
    cfg.ListOpt(
        "heartbeat_upstreams",
        default=[],
        help="host:port of every health manager the relayed heartbeats are sent to, unchanged.",
    ),
]


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """The ``[proxy]`` options, for the sample-config generator."""
    return [(GROUP, list(proxy_opts))]


@dataclasses.dataclass(frozen=True)
class ProxySettings:
    """What one proxy runs with, checked: every problem is a :class:`ConfigError`."""

    bind_host: str
    bind_port: int
    server_cert: str
    server_key: str | None
    proxy_ca: str
    route_key: bytes
    networks: dict[str, str | None]
    connect_timeout: float
    heartbeat_port: int
    heartbeat_bind_host: str
    heartbeat_upstreams: tuple[tuple[str, int], ...]

    @classmethod
    def from_conf(cls, conf: cfg.ConfigOpts) -> ProxySettings:
        """Read and check ``[proxy]``."""
        conf.register_opts(proxy_opts, group=GROUP)
        group = conf[GROUP]
        for name in ("server_cert", "proxy_ca"):
            path = group[name]
            if not path:
                raise ConfigError(f"[{GROUP}] {name} must be set")
            if not os.access(path, os.R_OK):
                raise ConfigError(f"[{GROUP}] {name}: cannot read {path}")
        if not group.networks:
            raise ConfigError(f"[{GROUP}] networks is empty: this proxy would serve nothing")
        try:
            upstreams = tuple(parse_endpoint(item) for item in group.heartbeat_upstreams)
        except ValueError as error:
            raise ConfigError(f"[{GROUP}] heartbeat_upstreams: {error}") from None
        if group.heartbeat_port and not upstreams:
            raise ConfigError(f"[{GROUP}] heartbeat_port is set but heartbeat_upstreams is empty")
        return cls(
            bind_host=group.bind_host,
            bind_port=group.bind_port,
            server_cert=group.server_cert,
            server_key=group.server_key,
            proxy_ca=group.proxy_ca,
            route_key=_route_key(group),
            networks=parse_networks(group.networks),
            connect_timeout=group.connect_timeout,
            heartbeat_port=group.heartbeat_port,
            heartbeat_bind_host=group.heartbeat_bind_host,
            heartbeat_upstreams=upstreams,
        )


def _route_key(group: cfg.ConfigOpts.GroupAttr) -> bytes:
    if group.route_key and group.route_key_file:
        raise ConfigError(f"[{GROUP}] route_key and route_key_file are both set; keep one")
    if group.route_key_file:
        try:
            with open(group.route_key_file, "rb") as stream:
                key = stream.read().rstrip(b"\r\n")
        except OSError as error:
            raise ConfigError(f"[{GROUP}] route_key_file: {error.strerror}: {group.route_key_file}") from None
    else:
        key = (group.route_key or "").encode()
    try:
        return route_key_bytes(key)
    except ValueError:
        raise ConfigError(f"[{GROUP}] route_key (or route_key_file) must be set and not empty") from None


def parse_networks(entries: list[str]) -> dict[str, str | None]:
    """``["NETWORK_ID:NAMESPACE", ...]`` as ``{network_id: namespace or None}``."""
    networks: dict[str, str | None] = {}
    for entry in entries:
        network_id, _, namespace = entry.strip().partition(":")
        if not _ID_RE.fullmatch(network_id):
            raise ConfigError(f"[{GROUP}] networks: {entry[:64]!r} is not NETWORK_ID:NAMESPACE")
        if network_id in networks:
            raise ConfigError(f"[{GROUP}] networks: {network_id} is listed twice")
        networks[network_id] = namespace.strip() or None
    return networks
