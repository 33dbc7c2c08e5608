"""The ``rest`` amphora driver: the controller's client of the agent API, over mutual TLS.

Every amphora gets one :class:`requests.Session` with a connection pool of its own, kept alive
between calls, so that the TLS handshake is paid once per amphora and not once per request. The
session presents the controller's client certificate, trusts only the server CA, and checks that
the agent's certificate names the amphora id (not the address, which may be reused).

An amphora whose endpoint names a ``keramos-proxy`` (and a network) is reached through it: each
kept-alive connection is an HTTP CONNECT tunnel over mutual TLS with the proxy (the proxy CA's
certificates, ``proxy_*`` options), the request signed with ``proxy_route_key``
(:mod:`keramos.framework.agent_protocol.proxy`); the agent's own mutual TLS runs inside it, so
the checks above are unchanged and the proxy sees no key and no cleartext.

In csr mode the agent first serves a self-signed bootstrap certificate: :meth:`fetch_csr` and
:meth:`install_signed_certificate` use one-off connections that do not verify it against the
server CA but report (and pin) the key it proves. Behind a proxy they run inside a tunnel opened by
:meth:`RestAmphoraDriver._open_tunnel` (:class:`TunnelledHTTPSConnection`).

Connection errors, timeouts and 503s are retried with exponential backoff; 4xx never are. Every
failure becomes :class:`AgentError` (a :class:`~keramos.framework.errors.DriverError`) carrying the
agent's own ``message`` and ``details``.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import requests
import urllib3
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from oslo_config import cfg
from requests.adapters import HTTPAdapter
from urllib3.util.ssltransport import SSLTransport

from keramos.framework import tracing
from keramos.framework.agent_protocol import proxy as proxy_protocol
from keramos.framework.agent_protocol import rest as protocol
from keramos.framework.agent_protocol.heartbeat import parse_endpoint
from keramos.framework.contracts import AmphoraCSR, AmphoraDriver, AmphoraEndpoint
from keramos.framework.errors import AlreadyActivated, ConfigError, DriverError, Timeout

GROUP = "amphora_rest"
#: A proxy's answer to CONNECT that no retry changes (4xx); a 502 (agent not up yet) is retried.
_PROXY_REFUSAL = re.compile(r"Tunnel connection failed: (4\d\d [^'\"]*)")
_T = TypeVar("_T")

rest_opts = [
    cfg.StrOpt(
        "controller_client_cert",
        help="PEM file of the controller's client certificate (signed by the client CA); it "
        "may also hold the key.",
    ),
    cfg.StrOpt(
        "controller_client_key",
        help="PEM file of the controller's client private key (unset: in controller_client_cert).",
    ),
    cfg.StrOpt("server_ca", help="PEM file of the server CA that signs amphora certificates."),
    cfg.PortOpt("agent_port", default=9443, help="Agent port used when an endpoint names none."),
    cfg.FloatOpt("connect_timeout", default=5.0, min=0.01, help="Seconds to connect to an agent."),
    cfg.FloatOpt(
        "read_timeout",
        default=60.0,
        min=0.01,
        help="Seconds to wait for an agent's answer (a push runs 'haproxy -c' and a reload).",
    ),
    cfg.IntOpt(
        "retries",
        default=3,
        min=0,
        help="Extra attempts after a connection error, a timeout or a 503 (never after a 4xx).",
    ),
    cfg.FloatOpt(
        "backoff",
        default=0.5,
        min=0,
        help="Seconds before the first retry; doubled before each next one.",
    ),
    cfg.IntOpt(
        "pool_maxsize",
        default=4,
        min=1,
        help="Kept-alive connections per amphora (concurrent calls to one agent).",
    ),
    cfg.StrOpt(
        "proxy_client_cert",
        help="PEM file of the controller's client certificate for keramos-proxy, issued by the "
        "proxy CA ('keramos cert issue-proxy --role client'); it may also hold the key. Needed only "
        "for amphorae reached through a proxy.",
    ),
    cfg.StrOpt("proxy_client_key", help="PEM file of its key (unset: in proxy_client_cert)."),
    cfg.StrOpt("proxy_ca", help="PEM file of the proxy CA, which proxies' certificates must chain to."),
    cfg.StrOpt(
        "proxy_server_name",
        default=proxy_protocol.DEFAULT_PROXY_NAME,
        help="Name a proxy's certificate must carry.",
    ),
    cfg.StrOpt(
        "proxy_route_key",
        secret=True,
        help="Key shared with the proxies ([proxy] route_key) that signs each route.",
    ),
]


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """The driver's options, for the sample-config generator."""
    return [(GROUP, list(rest_opts))]


class AgentError(DriverError):
    """A call to an agent failed; carries its HTTP status and the agent's JSON message."""

    def __init__(
        self,
        amphora_id: str,
        operation: str,
        message: str,
        *,
        status: int | None = None,
        details: str = "",
        retryable: bool = False,
    ) -> None:
        self.amphora_id = amphora_id
        self.operation = operation
        self.status = status
        self.agent_message = message
        self.details = details
        where = f"amphora {amphora_id}: {operation}"
        what = f"{status} {message}" if status is not None else message
        super().__init__(f"{where}: {what}" + (f": {details}" if details else ""), retryable=retryable)


class AgentAlreadyActivated(AgentError, AlreadyActivated):
    """The agent answered 410 to ``POST /activate``: it handed its token over already."""


def _agent_error(
    endpoint: AmphoraEndpoint, operation: str, status: int, reason: str | None, content: bytes
) -> AgentError:
    """The error an agent's answer ``status`` means, with its JSON ``message`` and ``details``."""
    try:
        body = json.loads(content)
        message, details = str(body.get("message", reason)), str(body.get("details", ""))
        is_json = True
    except (ValueError, AttributeError):
        message, is_json = reason or "error", False
        details = content[:200].decode("utf-8", errors="replace")
    # A 404 without a JSON body comes from something in front of the agent, not the agent:
    # it is not up yet.
    retryable = status == 503 or (status == 404 and not is_json)
    return AgentError(
        endpoint.amphora_id, operation, message, status=status, details=details, retryable=retryable
    )


def connection_failure(error: BaseException) -> str:
    """What stopped a connection, in the operating system's words (``Connection refused``).

    requests and urllib3 wrap the socket's error three times over, each layer repeating the
    URL, which makes a 300-character message with "Max retries exceeded" in it although the
    driver tried once; the operator needs the cause at the bottom.
    """
    pending: list[BaseException] = [error]
    seen: set[int] = set()
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.strerror:
            return current.strerror
        if isinstance(current, TimeoutError):
            return "timed out"
        nested = (*current.args, getattr(current, "reason", None), current.__cause__, current.__context__)
        pending += [cause for cause in nested if isinstance(cause, BaseException)]
    return "timed out" if isinstance(error, requests.Timeout) else type(error).__name__


def _token_of(endpoint: AmphoraEndpoint, operation: str, body: Any) -> str:
    token = body.get("activation_token") if isinstance(body, dict) else None
    if not isinstance(token, str) or not token:
        raise AgentError(endpoint.amphora_id, operation, "answer without an activation token")
    return token


def _raise_if_refused(endpoint: AmphoraEndpoint, operation: str, failure: str) -> None:
    """Raise the non-retryable error of a proxy's 4xx answer to CONNECT, if ``failure`` is one."""
    refusal = _PROXY_REFUSAL.search(failure)
    if refusal:
        raise AgentError(
            endpoint.amphora_id, operation, f"proxy {endpoint.proxy} refused the route: {refusal.group(1)}"
        ) from None


def _peer_public_key(sock: ssl.SSLSocket | SSLTransport) -> bytes:
    """The public key (PEM) of the certificate the TLS peer presented (and proved to hold)."""
    der = sock.getpeercert(binary_form=True)
    if not der:
        raise ssl.SSLError("the agent presented no certificate")
    return x509.load_der_x509_certificate(der).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _key_der(public_key_pem: bytes) -> bytes:
    return serialization.load_pem_public_key(public_key_pem).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class AmphoraIdAdapter(HTTPAdapter):
    """An adapter whose TLS connections must present a certificate naming ``amphora_id``."""

    def __init__(self, amphora_id: str, pool_maxsize: int) -> None:
        self.amphora_id = amphora_id
        super().__init__(pool_connections=1, pool_maxsize=pool_maxsize, max_retries=0)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        """Create the pool manager with the amphora id as the name to check."""
        pool_kwargs["assert_hostname"] = self.amphora_id
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)


class ProxiedAdapter(AmphoraIdAdapter):
    """Connections to one amphora through a ``keramos-proxy``: a CONNECT tunnel per connection.

    The tunnel is mutual TLS with the proxy (the proxy CA's certificates, the proxy's name
    checked); the CONNECT request names the route and its signature. The agent's TLS session
    then runs inside the tunnel with the session's certificates, as without a proxy.
    """

    def __init__(
        self,
        route: proxy_protocol.Route,
        pool_maxsize: int,
        *,
        proxy_context: ssl.SSLContext,
        proxy_server_name: str,
        route_key: bytes,
    ) -> None:
        self.route = route
        self.tunnels = pool_maxsize
        self.proxy_context = proxy_context
        self.proxy_server_name = proxy_server_name
        self.route_key = route_key
        super().__init__(route.amphora_id, pool_maxsize)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> urllib3.ProxyManager:
        """The one proxy manager of this amphora's route (made on first use)."""
        manager = self.proxy_manager.get(proxy)
        if manager is None:
            manager = urllib3.ProxyManager(
                proxy,
                num_pools=1,
                maxsize=self.tunnels,
                proxy_headers=proxy_protocol.connect_headers(self.route, self.route_key),
                proxy_ssl_context=self.proxy_context,
                proxy_assert_hostname=self.proxy_server_name,
                assert_hostname=self.amphora_id,
                # The request head and body are two writes inside the tunnel: without
                # TCP_NODELAY the body waits for the proxy's delayed ACK (about 40 ms).
                socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
            )
            self.proxy_manager[proxy] = manager
        return manager


class TunnelledHTTPSConnection(http.client.HTTPConnection):
    """An HTTPS connection to an agent inside a proxy tunnel: TLS within the proxy's TLS.

    ``open_tunnel`` returns the proxy connection, already routed (CONNECT answered 200).
    """

    def __init__(
        self,
        host: str,
        port: int,
        open_tunnel: Callable[[], ssl.SSLSocket],
        *,
        context: ssl.SSLContext,
        timeout: float,
    ) -> None:
        super().__init__(host, port, timeout=timeout)
        self.open_tunnel = open_tunnel
        self.context = context

    def connect(self) -> None:
        """Open the tunnel, then run the agent's TLS handshake inside it."""
        self.sock = SSLTransport(self.open_tunnel(), self.context)


def _file_option(conf: cfg.ConfigOpts, name: str) -> str:
    path = conf[GROUP][name]
    if not path:
        raise ConfigError(f"[{GROUP}] {name} must be set for the rest amphora driver")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"[{GROUP}] {name}: cannot read {path}")
    return path


class RestAmphoraDriver(AmphoraDriver):
    """Talks to amphora agents over HTTPS with mutual TLS and kept-alive connections."""

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        super().__init__(conf)
        conf.register_opts(rest_opts, group=GROUP)
        group = conf[GROUP]
        client_cert = _file_option(conf, "controller_client_cert")
        client_key = (
            _file_option(conf, "controller_client_key") if group.controller_client_key else None
        )
        self.client_cert: str | tuple[str, str] = (
            (client_cert, client_key) if client_key else client_cert
        )
        self.server_ca = _file_option(conf, "server_ca")
        self.timeout = (group.connect_timeout, group.read_timeout)
        self.retries = group.retries
        self.backoff = group.backoff
        self.agent_port = group.agent_port
        self.pool_maxsize = group.pool_maxsize
        self.proxy_server_name = group.proxy_server_name
        self._proxy_context: ssl.SSLContext | None = None
        self._lock = threading.Lock()
        self._sessions: dict[tuple[str, str, int, str | None, str | None], requests.Session] = {}

    def _session_key(self, endpoint: AmphoraEndpoint) -> tuple[str, str, int, str | None, str | None]:
        port = endpoint.port or self.agent_port
        return (endpoint.amphora_id, endpoint.address, port, endpoint.proxy, endpoint.network_id)

    def session(self, endpoint: AmphoraEndpoint) -> requests.Session:
        """The kept-alive session of one amphora (made on first use)."""
        key = self._session_key(endpoint)
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                session = requests.Session()
                session.trust_env = False
                session.verify = self.server_ca
                session.cert = self.client_cert
                if endpoint.proxy:
                    session.mount("https://", self._proxied_adapter(endpoint))
                    session.proxies = {"https": f"https://{endpoint.proxy}"}
                else:
                    session.mount("https://", AmphoraIdAdapter(endpoint.amphora_id, self.pool_maxsize))
                self._sessions[key] = session
            return session

    def address(self, endpoint: AmphoraEndpoint) -> str:
        """``host:port`` of the endpoint's agent (an IPv6 host in brackets)."""
        host = f"[{endpoint.address}]" if ":" in endpoint.address else endpoint.address
        return f"{host}:{endpoint.port or self.agent_port}"

    def _proxied_adapter(self, endpoint: AmphoraEndpoint) -> ProxiedAdapter:
        if not endpoint.network_id:
            raise ConfigError(
                f"amphora {endpoint.amphora_id} is reached through proxy {endpoint.proxy} "
                "but its record names no network"
            )
        route = proxy_protocol.Route(
            endpoint.network_id, endpoint.address, endpoint.port or self.agent_port, endpoint.amphora_id
        )
        key = self.conf[GROUP].proxy_route_key
        if not key:
            raise ConfigError(
                f"amphora {endpoint.amphora_id} is reached through proxy {endpoint.proxy}: "
                f"[{GROUP}] proxy_route_key must be set"
            )
        return ProxiedAdapter(
            route,
            self.pool_maxsize,
            proxy_context=self._proxy_ssl_context(),
            proxy_server_name=self.proxy_server_name,
            route_key=key.encode(),
        )

    def _proxy_ssl_context(self) -> ssl.SSLContext:
        """The TLS context of every proxy tunnel: the proxy CA, the controller's proxy certificate."""
        if self._proxy_context is None:
            ca = _file_option(self.conf, "proxy_ca")
            cert = _file_option(self.conf, "proxy_client_cert")
            key = _file_option(self.conf, "proxy_client_key") if self.conf[GROUP].proxy_client_key else None
            context = ssl.create_default_context(cafile=ca)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            # The proxy's name is checked by urllib3 against proxy_server_name, not its address.
            context.check_hostname = False
            context.load_cert_chain(cert, key)
            self._proxy_context = context
        return self._proxy_context

    def url(self, endpoint: AmphoraEndpoint, path: str) -> str:
        """The URL of ``path`` (from :func:`protocol.path`) on the endpoint's agent."""
        return f"https://{self.address(endpoint)}{path}"

    def request(
        self,
        endpoint: AmphoraEndpoint,
        method: str,
        path: str,
        *,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        retries: int | None = None,
    ) -> requests.Response:
        """Send one API call, retrying connection errors, timeouts and 503s with backoff.

        The call is one trace span (``agent <METHOD>``, a child of the running task's span when
        tracing is on) whose context goes to the agent in the ``traceparent`` header.
        """
        url = self.url(endpoint, path)
        attributes = {"http.request.method": method, "url.full": url, "keramos.amphora_id": endpoint.amphora_id}
        with tracing.outgoing(f"agent {method}", attributes=attributes) as out:
            response = self._send(endpoint, method, url, path, data, {**(headers or {}), **out.headers}, retries)
            out.attribute("http.response.status_code", response.status_code)
            return response

    def _send(
        self,
        endpoint: AmphoraEndpoint,
        method: str,
        url: str,
        path: str,
        data: bytes | None,
        headers: dict[str, str],
        retries: int | None,
    ) -> requests.Response:
        operation = f"{method} {path}"
        attempts = 1 + (self.retries if retries is None else retries)
        session = self.session(endpoint)
        error: AgentError | None = None
        for attempt in range(attempts):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                response = session.request(method, url, data=data, headers=headers, timeout=self.timeout)
            except requests.exceptions.SSLError as ssl_error:
                raise AgentError(endpoint.amphora_id, operation, f"TLS failure: {ssl_error}") from None
            except requests.exceptions.ProxyError as proxy_error:
                _raise_if_refused(endpoint, operation, str(proxy_error))
                error = AgentError(
                    endpoint.amphora_id, operation, f"unreachable: {proxy_error}", retryable=True
                )
                continue
            except (requests.ConnectionError, requests.Timeout) as connection_error:
                error = AgentError(
                    endpoint.amphora_id,
                    operation,
                    f"unreachable at {self.address(endpoint)}: {connection_failure(connection_error)}",
                    retryable=True,
                )
                continue
            if response.status_code < 400:
                return response
            error = self._error_from(endpoint, operation, response)
            if not error.retryable:
                raise error
        assert error is not None
        raise error

    @staticmethod
    def _error_from(
        endpoint: AmphoraEndpoint, operation: str, response: requests.Response
    ) -> AgentError:
        return _agent_error(
            endpoint, operation, response.status_code, response.reason, response.content
        )

    def get_info(self, endpoint: AmphoraEndpoint) -> dict[str, Any]:
        """The agent's ``/info`` document (versions of every load balancer it runs)."""
        return self.request(endpoint, "GET", protocol.path(protocol.INFO)).json()

    @staticmethod
    def _wait(endpoint: AmphoraEndpoint, timeout: float, call: Callable[[], _T]) -> _T:
        """``call()`` until it does not fail with a retryable error; TLS failures are not waited out."""
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            try:
                return call()
            except AgentError as error:
                if not error.retryable:
                    raise
                if time.monotonic() + delay > deadline:
                    raise Timeout(
                        f"amphora {endpoint.amphora_id} not reachable within {timeout:g} s: {error}"
                    ) from None
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def wait_until_reachable(self, endpoint: AmphoraEndpoint, timeout: float) -> dict[str, Any]:
        """Poll ``/info`` until the agent answers."""
        info = protocol.path(protocol.INFO)
        return self._wait(endpoint, timeout, lambda: self.request(endpoint, "GET", info, retries=0).json())

    def activate(self, endpoint: AmphoraEndpoint) -> str:
        """``POST /activate``: the agent hands over its activation token and deletes it."""
        activate = protocol.path(protocol.ACTIVATE)
        try:
            body = self.request(endpoint, "POST", activate).json()
        except AgentError as error:
            if error.status == 410:
                raise AgentAlreadyActivated(
                    error.amphora_id, error.operation, error.agent_message,
                    status=error.status, details=error.details,
                ) from None
            raise
        return _token_of(endpoint, f"POST {activate}", body)

    def fetch_csr(self, endpoint: AmphoraEndpoint, timeout: float) -> AmphoraCSR:
        """``GET /csr`` over a connection that does not verify the bootstrap certificate."""
        operation = f"GET {protocol.path(protocol.CSR)}"

        def fetch() -> AmphoraCSR:
            status, body, peer_key = self.pinned_request(endpoint, "GET", protocol.path(protocol.CSR), retries=0)
            csr = body.get("csr")
            if not isinstance(csr, str):
                raise AgentError(endpoint.amphora_id, operation, f"answer without a CSR (status {status})")
            return AmphoraCSR(csr.encode("ascii"), _token_of(endpoint, operation, body), peer_key)

        return self._wait(endpoint, timeout, fetch)

    def install_signed_certificate(
        self, endpoint: AmphoraEndpoint, certificate_pem: bytes, server_public_key_pem: bytes
    ) -> None:
        """``PUT /certificate`` with the certificate alone, to the agent holding the pinned key."""
        self.pinned_request(
            endpoint,
            "PUT",
            protocol.path(protocol.SERVER_CERTIFICATE),
            data=certificate_pem,
            pinned_key=server_public_key_pem,
        )

    def pinned_request(
        self,
        endpoint: AmphoraEndpoint,
        method: str,
        path: str,
        *,
        data: bytes | None = None,
        pinned_key: bytes | None = None,
        retries: int | None = None,
    ) -> tuple[int, dict[str, Any], bytes]:
        """One API call on a fresh connection that presents the client certificate but does not
        verify the agent's certificate against the server CA (it is self-signed in csr mode).

        Returns the status, the JSON body and the public key (PEM) the agent's TLS connection
        proved. With ``pinned_key``, an agent proving another key is refused before anything is
        sent. Connection errors and 503s are retried like :meth:`request`.
        """
        operation = f"{method} {path}"
        attempts = 1 + (self.retries if retries is None else retries)
        error: AgentError | None = None
        for attempt in range(attempts):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                return self._pinned_call(endpoint, operation, method, path, data, pinned_key)
            except AgentError as failed:
                if not failed.retryable:
                    raise
                error = failed
        assert error is not None
        raise error

    def _bootstrap_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        if isinstance(self.client_cert, tuple):
            context.load_cert_chain(*self.client_cert)
        else:
            context.load_cert_chain(self.client_cert)
        return context

    def _pinned_call(
        self,
        endpoint: AmphoraEndpoint,
        operation: str,
        method: str,
        path: str,
        data: bytes | None,
        pinned_key: bytes | None,
    ) -> tuple[int, dict[str, Any], bytes]:
        connect_timeout, read_timeout = self.timeout
        connection: http.client.HTTPConnection
        if endpoint.proxy:
            connection = TunnelledHTTPSConnection(
                endpoint.address,
                endpoint.port or self.agent_port,
                lambda: self._open_tunnel(endpoint, operation),
                context=self._bootstrap_context(),
                timeout=connect_timeout,
            )
        else:
            connection = http.client.HTTPSConnection(
                endpoint.address,
                endpoint.port or self.agent_port,
                context=self._bootstrap_context(),
                timeout=connect_timeout,
            )
        try:
            try:
                connection.connect()
                assert connection.sock is not None
                connection.sock.settimeout(read_timeout)
                peer_key = _peer_public_key(connection.sock)
                if pinned_key is not None and _key_der(pinned_key) != _key_der(peer_key):
                    raise AgentError(
                        endpoint.amphora_id, operation, "the agent proved another server key than its CSR's"
                    )
                headers = {"Content-Type": protocol.PEM_CONTENT_TYPE} if data is not None else {}
                connection.request(method, path, body=data, headers=headers)
                response = connection.getresponse()
                content = response.read()
            except ssl.SSLError as ssl_error:
                raise AgentError(endpoint.amphora_id, operation, f"TLS failure: {ssl_error}") from None
            except (OSError, http.client.HTTPException) as connection_error:
                raise AgentError(
                    endpoint.amphora_id,
                    operation,
                    f"unreachable at {self.address(endpoint)}: {connection_failure(connection_error)}",
                    retryable=True,
                ) from None
        finally:
            connection.close()
        if response.status >= 400:
            raise _agent_error(endpoint, operation, response.status, response.reason, content)
        try:
            body = json.loads(content)
        except ValueError:
            raise AgentError(endpoint.amphora_id, operation, "the answer is not JSON") from None
        return response.status, body if isinstance(body, dict) else {}, peer_key

    def _open_tunnel(self, endpoint: AmphoraEndpoint, operation: str) -> ssl.SSLSocket:
        """A mutual-TLS connection to the endpoint's proxy, tunnelled to its agent (CONNECT done).

        What :class:`ProxiedAdapter` has urllib3 do, for the one-off bootstrap connections of
        csr mode that :mod:`http.client` makes.
        """
        adapter = self._proxied_adapter(endpoint)
        host, port = parse_endpoint(endpoint.proxy or "")
        raw = socket.create_connection((host, port), timeout=self.timeout[0])
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            tunnel = adapter.proxy_context.wrap_socket(raw, server_hostname=host)
        except BaseException:
            raw.close()
            raise
        try:
            names = [value for kind, value in tunnel.getpeercert().get("subjectAltName", ()) if kind == "DNS"]
            if self.proxy_server_name not in names:
                raise ssl.SSLError(f"the proxy's certificate does not name {self.proxy_server_name}")
            route = adapter.route
            headers = proxy_protocol.connect_headers(route, adapter.route_key)
            head = f"CONNECT {route.target} HTTP/1.1\r\nHost: {route.target}\r\n"
            head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
            tunnel.sendall((head + "\r\n").encode())
            answer = http.client.HTTPResponse(tunnel, method="CONNECT")
            answer.begin()
            if answer.status != 200:
                status = f"Tunnel connection failed: {answer.status} {answer.reason}"
                _raise_if_refused(endpoint, operation, status)
                raise OSError(status)
        except BaseException:
            tunnel.close()
            raise
        return tunnel

    def put_config(self, endpoint: AmphoraEndpoint, lb_id: str, config: str, version: int) -> None:
        """Upload ``config`` as ``version`` without reloading (the agent checks it first)."""
        self.request(
            endpoint,
            "PUT",
            protocol.path(protocol.HAPROXY_UPLOAD, amphora_id=endpoint.amphora_id, lb_id=lb_id),
            data=config.encode(),
            headers={protocol.CONFIG_VERSION_HEADER: str(version), "Content-Type": "text/plain"},
        )

    def action(self, endpoint: AmphoraEndpoint, lb_id: str, action: str) -> str:
        """``start``, ``stop`` or ``reload`` the load balancer; returns the agent's details."""
        path = protocol.path(protocol.LOADBALANCER_ACTION, lb_id=lb_id, action=action)
        return self.request(endpoint, "PUT", path).json().get("details", "")

    def upload_config(self, endpoint: AmphoraEndpoint, lb_id: str, config: str, version: int) -> None:
        """Upload ``config`` as ``version`` and reload HAProxy on it."""
        self.put_config(endpoint, lb_id, config, version)
        self.action(endpoint, lb_id, "reload")

    def upload_udp_listener_config(
        self, endpoint: AmphoraEndpoint, listener_id: str, config: str, version: int | None = None
    ) -> None:
        """Upload a UDP listener's keepalived configuration (checked by the agent with
        ``keepalived --config-test``) and restart its keepalived on it."""
        path = protocol.path(
            protocol.UDP_LISTENER_UPLOAD, amphora_id=endpoint.amphora_id, listener_id=listener_id
        )
        headers = {"Content-Type": "text/plain"}
        if version is not None:
            headers[protocol.CONFIG_VERSION_HEADER] = str(version)
        self.request(endpoint, "PUT", path, data=config.encode("utf-8"), headers=headers)
        self.action(endpoint, listener_id, "reload")

    def get_udp_listener_config(self, endpoint: AmphoraEndpoint, listener_id: str) -> str:
        """The stored keepalived configuration of a UDP listener."""
        path = protocol.path(protocol.UDP_LISTENER_CONFIG, listener_id=listener_id)
        return self.request(endpoint, "GET", path).text

    def delete_listener(self, endpoint: AmphoraEndpoint, object_id: str) -> None:
        """Stop and remove a UDP listener, or a load balancer, by id (Octavia's route)."""
        self.request(endpoint, "DELETE", protocol.path(protocol.LISTENER, object_id=object_id))

    def get_config(self, endpoint: AmphoraEndpoint, lb_id: str) -> tuple[str, int]:
        """The stored configuration of ``lb_id`` and its version."""
        response = self.request(endpoint, "GET", protocol.path(protocol.HAPROXY_CONFIG, lb_id=lb_id))
        return response.text, int(response.headers.get(protocol.CONFIG_VERSION_HEADER, "0"))

    def delete_config(self, endpoint: AmphoraEndpoint, lb_id: str) -> None:
        """Stop ``lb_id`` and remove its configuration (the agent keeps its version)."""
        self.request(endpoint, "DELETE", protocol.path(protocol.LOADBALANCER, lb_id=lb_id))

    def install_certificate(self, endpoint: AmphoraEndpoint, pem_bundle: bytes) -> None:
        """Replace the agent's server certificate and key (used from the next connection)."""
        self.request(endpoint, "PUT", protocol.path(protocol.SERVER_CERTIFICATE), data=pem_bundle)

    def upload_listener_certificate(
        self, endpoint: AmphoraEndpoint, lb_id: str, filename: str, pem: bytes
    ) -> None:
        """Store a listener's TLS material as ``filename`` on the amphora."""
        path = protocol.path(protocol.LISTENER_CERTIFICATE, lb_id=lb_id, filename=filename)
        self.request(endpoint, "PUT", path, data=pem)

    def forget(self, endpoint: AmphoraEndpoint) -> None:
        """Close the session of an amphora that is gone."""
        key = self._session_key(endpoint)
        with self._lock:
            session = self._sessions.pop(key, None)
        if session is not None:
            session.close()

    def close(self) -> None:
        """Close every session."""
        with self._lock:
            sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            session.close()
