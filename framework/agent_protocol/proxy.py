"""What the controller and a ``keramos-proxy`` say to each other: one HTTP ``CONNECT`` per tunnel.

The controller opens a mutual-TLS connection to the proxy (certificates of the proxy CA, not the
amphora CAs) and sends::

    CONNECT 10.0.0.2:9443 HTTP/1.1
    Host: 10.0.0.2:9443
    X-Keramos-Network: tenant-a
    X-Keramos-Amphora: amp-1
    X-Keramos-Route-Signature: <hex HMAC-SHA256 of the route under the route key>

The proxy checks the signature and its allow-list of networks, connects to the address inside the
named network and answers ``200``; from then on it relays bytes only, and the controller runs its
own TLS session with the agent inside the tunnel. Any refusal is a JSON body ``{"message"}`` with
403 (bad signature, network not allowed), 400 (malformed request) or 502 (target unreachable).

Why a signature on top of mutual TLS: the proxy CA's client certificates authenticate *a*
controller, but the route key says which routes it may ask for; a leaked proxy client
certificate alone opens no tunnel, and a route cannot be edited by anything relaying the
request without the key. The signature covers every routing field, so none can be swapped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import ipaddress
import re

from keramos.framework.errors import KeramosError
from keramos.framework.schema import IDENTIFIER_PATTERN

NETWORK_HEADER = "X-Keramos-Network"
AMPHORA_HEADER = "X-Keramos-Amphora"
SIGNATURE_HEADER = "X-Keramos-Route-Signature"
#: The name a proxy's server certificate carries, which the controller checks by default.
DEFAULT_PROXY_NAME = "keramos-proxy"
#: Largest CONNECT request head (request line and headers) a proxy reads.
MAX_REQUEST_HEAD = 8192

_ID_RE = re.compile(IDENTIFIER_PATTERN)


class RouteRejected(KeramosError):
    """A tunnel request the proxy refuses; ``status`` is the HTTP status it answers with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclasses.dataclass(frozen=True)
class Route:
    """Which agent a tunnel reaches: an address and port inside one network, for one amphora."""

    network_id: str
    address: str
    port: int
    amphora_id: str

    def signed_text(self) -> bytes:
        """The bytes the route signature covers: every field, one per line."""
        return f"{self.network_id}\n{self.address}\n{self.port}\n{self.amphora_id}".encode()

    @property
    def target(self) -> str:
        """``address:port`` as a CONNECT request names it (IPv6 in brackets)."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


def route_key_bytes(key: str | bytes) -> bytes:
    """The route key as bytes; refuses an empty key (a signature under it proves nothing)."""
    data = key.encode("utf-8") if isinstance(key, str) else key
    if not data:
        raise ValueError("the proxy route key is empty")
    return data


def sign_route(route: Route, key: str | bytes) -> str:
    """The hexadecimal HMAC-SHA256 of ``route`` under ``key``."""
    return hmac.new(route_key_bytes(key), route.signed_text(), hashlib.sha256).hexdigest()


def connect_headers(route: Route, key: str | bytes) -> dict[str, str]:
    """The headers of the CONNECT request that asks a proxy for ``route``."""
    return {
        NETWORK_HEADER: route.network_id,
        AMPHORA_HEADER: route.amphora_id,
        SIGNATURE_HEADER: sign_route(route, key),
    }


def _parse_target(target: str) -> tuple[str, int]:
    host, separator, port = target.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not separator or not port.isdigit() or not 0 < int(port) < 65536:
        raise RouteRejected(400, f"CONNECT target {target[:64]!r} is not address:port")
    try:
        address = str(ipaddress.ip_address(host))
    except ValueError:
        raise RouteRejected(400, f"CONNECT target {host[:64]!r} is not an IP address") from None
    return address, int(port)


def parse_connect(head: bytes) -> tuple[Route, str]:
    """The route and signature of a CONNECT request head (up to the blank line).

    Raises :class:`RouteRejected` (400) for anything that is not a well-formed, fully routed
    CONNECT request; the signature is checked by :func:`verify_route`.
    """
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise RouteRejected(400, "request head is not ASCII") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[0] != "CONNECT" or not parts[2].startswith("HTTP/1."):
        raise RouteRejected(400, f"only CONNECT is served, not {lines[0][:64]!r}")
    address, port = _parse_target(parts[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, separator, value = line.partition(":")
        if not separator:
            raise RouteRejected(400, f"malformed header line {line[:64]!r}")
        headers[name.strip().lower()] = value.strip()
    fields = {}
    for header in (NETWORK_HEADER, AMPHORA_HEADER, SIGNATURE_HEADER):
        value = headers.get(header.lower(), "")
        if not value:
            raise RouteRejected(400, f"CONNECT without the {header} header")
        fields[header] = value
    for header in (NETWORK_HEADER, AMPHORA_HEADER):
        if not _ID_RE.fullmatch(fields[header]):
            raise RouteRejected(400, f"{header} {fields[header][:64]!r} is not an identifier")
    route = Route(fields[NETWORK_HEADER], address, port, fields[AMPHORA_HEADER])
    return route, fields[SIGNATURE_HEADER]


def verify_route(route: Route, signature: str, key: str | bytes) -> None:
    """Raise :class:`RouteRejected` (403) unless ``signature`` signs ``route`` under ``key``."""
    if not hmac.compare_digest(signature.lower().encode("ascii", "replace"), sign_route(route, key).encode()):
        raise RouteRejected(403, "route signature does not verify: forged, edited, or another key")
