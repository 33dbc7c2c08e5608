"""The proxy's edges: the mutual-TLS tunnel server and the heartbeat relay (asyncio).

One event loop serves every tunnel: it reads a CONNECT request, checks its signature and the
allow-list, connects to the agent from the network's namespace, answers ``200`` and then copies
bytes both ways until either side closes. It never parses what it relays: the agent's TLS session
runs inside, between the controller and the agent.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from typing import Any

from oslo_log import log as logging

from keramos.framework.agent_protocol.heartbeat import MAX_HEARTBEAT_BYTES
from keramos.framework.agent_protocol.proxy import (
    MAX_REQUEST_HEAD,
    Route,
    RouteRejected,
    parse_connect,
    verify_route,
)
from keramos.plugins.proxy.netns import NamespaceSockets
from keramos.plugins.proxy.options import ProxySettings

LOG = logging.getLogger(__name__)
_CHUNK = 256 * 1024
_REASONS = {400: "Bad Request", 403: "Forbidden", 502: "Bad Gateway"}


def server_context(settings: ProxySettings) -> ssl.SSLContext:
    """TLS 1.2 or later, the proxy's certificate, client certificates of the proxy CA required."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=settings.proxy_ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(settings.server_cert, settings.server_key)
    return context


def _peer_name(writer: asyncio.StreamWriter) -> str:
    certificate = writer.get_extra_info("peercert") or {}
    for entry in certificate.get("subject", ()):
        for name, value in entry:
            if name == "commonName":
                return str(value)
    return "?"


def _refusal(status: int, message: str) -> bytes:
    """The answer refusing a tunnel: the reason phrase is the message itself (printable ASCII),
    because HTTP clients report a failed CONNECT by its status line only."""
    body = json.dumps({"message": message}).encode()
    reason = "".join(c for c in message if " " <= c <= "~")[:200] or _REASONS.get(status, "Error")
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await reader.read(_CHUNK)
            if not data:
                return
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError, OSError):
        return


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await writer.wait_closed()
    except (ConnectionError, ssl.SSLError, OSError):
        pass


class TunnelServer:
    """Accepts controllers' tunnels and relays them to the agents of the allowed networks."""

    def __init__(self, settings: ProxySettings, namespaces: dict[str, NamespaceSockets]) -> None:
        self.settings = settings
        self.namespaces = namespaces
        self._server: asyncio.Server | None = None

    async def start(self) -> tuple[str, int]:
        """Listen; returns the address bound (the port is known when 0 was asked)."""
        self._server = await asyncio.start_server(
            self._serve,
            self.settings.bind_host,
            self.settings.bind_port,
            ssl=server_context(self.settings),
            limit=MAX_REQUEST_HEAD,
        )
        return self._server.sockets[0].getsockname()[:2]

    def route_for(self, head: bytes) -> Route:
        """The route a CONNECT head asks for, if it is signed and allowed; else RouteRejected."""
        route, signature = parse_connect(head)
        verify_route(route, signature, self.settings.route_key)
        if route.network_id not in self.namespaces:
            raise RouteRejected(403, f"network {route.network_id} is not served by this proxy")
        return route

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        controller = _peer_name(writer)
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError,
                ConnectionError, ssl.SSLError, OSError):
            await _close(writer)
            return
        try:
            route = self.route_for(head)
            upstream = await self._connect(route)
        except RouteRejected as refusal:
            LOG.warning("refused a tunnel for %s (controller %s from %s): %s",
                        head.split(b"\r\n", 1)[0][:80], controller, peer, refusal)
            writer.write(_refusal(refusal.status, str(refusal)))
            await _close(writer)
            return
        upstream_reader, upstream_writer = upstream
        LOG.debug("tunnel %s -> %s in %s for amphora %s", controller, route.target,
                  route.network_id, route.amphora_id)
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        pipes = [
            asyncio.ensure_future(_pipe(reader, upstream_writer)),
            asyncio.ensure_future(_pipe(upstream_reader, writer)),
        ]
        await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        for pipe in pipes:
            pipe.cancel()
        await _close(upstream_writer)
        await _close(writer)

    async def _connect(self, route: Route) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Connect from the network's namespace: only the socket is made in its thread, the
        connect itself waits in the event loop, so an unreachable agent holds no thread."""
        namespace = self.namespaces[route.network_id]
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in route.address else socket.AF_INET
        sock = await loop.run_in_executor(None, namespace.socket, family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await asyncio.wait_for(
                loop.sock_connect(sock, (route.address, route.port)), self.settings.connect_timeout
            )
            return await asyncio.open_connection(sock=sock)
        except (OSError, asyncio.TimeoutError) as error:
            sock.close()
            reason = str(error) or "timed out"
            raise RouteRejected(
                502, f"cannot reach {route.target} in network {route.network_id}: {reason}"
            ) from None

    async def stop(self) -> None:
        """Stop accepting tunnels."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class _Upstream(asyncio.DatagramProtocol):
    """Sends every datagram handed to it to each health manager, unchanged."""

    def __init__(self, upstreams: tuple[tuple[str, int], ...]) -> None:
        self.upstreams = upstreams
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def forward(self, datagram: bytes) -> None:
        if self.transport is None:
            return
        for upstream in self.upstreams:
            self.transport.sendto(datagram, upstream)


class _Downstream(asyncio.DatagramProtocol):
    """Receives heartbeats in one network and hands them to the upstream side.

    Nothing is checked but the size: the health manager checks the signature and the sequence,
    so a proxy can neither forge nor replay a heartbeat it would accept.
    """

    def __init__(self, network_id: str, upstream: _Upstream) -> None:
        self.network_id = network_id
        self.upstream = upstream

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(data) > MAX_HEARTBEAT_BYTES:
            LOG.warning("dropped a %d-byte datagram from %s in %s", len(data), addr, self.network_id)
            return
        self.upstream.forward(data)


class HeartbeatRelay:
    """One UDP listener per served network (in its namespace), one sender upstream."""

    def __init__(self, settings: ProxySettings, namespaces: dict[str, NamespaceSockets]) -> None:
        self.settings = settings
        self.namespaces = namespaces
        self._transports: list[asyncio.BaseTransport] = []

    async def start(self) -> None:
        """Bind the listeners; nothing when ``heartbeat_port`` is 0."""
        if not self.settings.heartbeat_port:
            return
        loop = asyncio.get_running_loop()
        transport, upstream = await loop.create_datagram_endpoint(
            lambda: _Upstream(self.settings.heartbeat_upstreams), family=socket.AF_INET
        )
        self._transports.append(transport)
        for network_id, namespace in self.namespaces.items():
            sock = namespace.socket(socket.AF_INET, socket.SOCK_DGRAM)
            # Replicas on one host share the port: the kernel spreads heartbeats among them,
            # and the others take them all when one stops.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((self.settings.heartbeat_bind_host, self.settings.heartbeat_port))
            sock.setblocking(False)
            listener, _ = await loop.create_datagram_endpoint(
                lambda network_id=network_id: _Downstream(network_id, upstream), sock=sock
            )
            self._transports.append(listener)

    def stop(self) -> None:
        """Close every socket."""
        for transport in self._transports:
            transport.close()
