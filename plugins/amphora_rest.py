"""The ``rest`` amphora driver: the controller's client of the agent API, over mutual TLS.

Every amphora gets one :class:`requests.Session` with a connection pool of its own, kept alive
between calls, so that the TLS handshake is paid once per amphora and not once per request. The
session presents the controller's client certificate, trusts only the server CA, and checks that
the agent's certificate names the amphora id (not the address, which may be reused).

Connection errors, timeouts and 503s are retried with exponential backoff; 4xx never are. Every
failure becomes :class:`AgentError` (a :class:`~keramos.framework.errors.DriverError`) carrying the
agent's own ``message`` and ``details``.
"""

from __future__ import annotations

import os
import threading
import time
import urllib.parse
from typing import Any

import requests
from oslo_config import cfg
from requests.adapters import HTTPAdapter

from keramos.framework.contracts import AmphoraDriver, AmphoraEndpoint
from keramos.framework.errors import ConfigError, DriverError, Timeout

GROUP = "amphora_rest"
API_PREFIX = "/1.0"
VERSION_HEADER = "X-Config-Version"

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


class AmphoraIdAdapter(HTTPAdapter):
    """An adapter whose TLS connections must present a certificate naming ``amphora_id``."""

    def __init__(self, amphora_id: str, pool_maxsize: int) -> None:
        self.amphora_id = amphora_id
        super().__init__(pool_connections=1, pool_maxsize=pool_maxsize, max_retries=0)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        """Create the pool manager with the amphora id as the name to check."""
        pool_kwargs["assert_hostname"] = self.amphora_id
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)


def _segment(value: str) -> str:
    """``value`` quoted as one URL path segment (a ``/``, ``?`` or ``#`` cannot change the path)."""
    return urllib.parse.quote(value, safe="")


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
        self._lock = threading.Lock()
        self._sessions: dict[tuple[str, str, int], requests.Session] = {}

    def session(self, endpoint: AmphoraEndpoint) -> requests.Session:
        """The kept-alive session of one amphora (made on first use)."""
        key = (endpoint.amphora_id, endpoint.address, endpoint.port or self.agent_port)
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                session = requests.Session()
                session.trust_env = False
                session.verify = self.server_ca
                session.cert = self.client_cert
                session.mount("https://", AmphoraIdAdapter(endpoint.amphora_id, self.pool_maxsize))
                self._sessions[key] = session
            return session

    def url(self, endpoint: AmphoraEndpoint, path: str) -> str:
        """The URL of ``path`` (below ``/1.0``) on the endpoint's agent."""
        host = f"[{endpoint.address}]" if ":" in endpoint.address else endpoint.address
        return f"https://{host}:{endpoint.port or self.agent_port}{API_PREFIX}{path}"

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
        """Send one API call, retrying connection errors, timeouts and 503s with backoff."""
        operation = f"{method} {API_PREFIX}{path}"
        attempts = 1 + (self.retries if retries is None else retries)
        session = self.session(endpoint)
        error: AgentError | None = None
        for attempt in range(attempts):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                response = session.request(
                    method, self.url(endpoint, path), data=data, headers=headers, timeout=self.timeout
                )
            except requests.exceptions.SSLError as ssl_error:
                raise AgentError(endpoint.amphora_id, operation, f"TLS failure: {ssl_error}") from None
            except (requests.ConnectionError, requests.Timeout) as connection_error:
                error = AgentError(
                    endpoint.amphora_id, operation, f"unreachable: {connection_error}", retryable=True
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
        try:
            body = response.json()
            message, details = str(body.get("message", response.reason)), str(body.get("details", ""))
            is_json = True
        except (ValueError, AttributeError):
            message, details, is_json = response.reason or "error", response.text[:200], False
        # A 404 without a JSON body comes from something in front of the agent, not the agent:
        # it is not up yet.
        retryable = response.status_code == 503 or (response.status_code == 404 and not is_json)
        return AgentError(
            endpoint.amphora_id,
            operation,
            message,
            status=response.status_code,
            details=details,
            retryable=retryable,
        )

    def get_info(self, endpoint: AmphoraEndpoint) -> dict[str, Any]:
        """The agent's ``/info`` document (versions of every load balancer it runs)."""
        return self.request(endpoint, "GET", "/info").json()

    def wait_until_reachable(self, endpoint: AmphoraEndpoint, timeout: float) -> dict[str, Any]:
        """Poll ``/info`` until the agent answers; TLS failures are not waited out."""
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            try:
                return self.request(endpoint, "GET", "/info", retries=0).json()
            except AgentError as error:
                if not error.retryable:
                    raise
                if time.monotonic() + delay > deadline:
                    raise Timeout(
                        f"amphora {endpoint.amphora_id} not reachable within {timeout:g} s: {error}"
                    ) from None
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def put_config(self, endpoint: AmphoraEndpoint, lb_id: str, config: str, version: int) -> None:
        """Upload ``config`` as ``version`` without reloading (the agent checks it first)."""
        self.request(
            endpoint,
            "PUT",
            f"/loadbalancer/{_segment(endpoint.amphora_id)}/{_segment(lb_id)}/haproxy",
            data=config.encode(),
            headers={VERSION_HEADER: str(version), "Content-Type": "text/plain"},
        )

    def action(self, endpoint: AmphoraEndpoint, lb_id: str, action: str) -> str:
        """``start``, ``stop`` or ``reload`` the load balancer; returns the agent's details."""
        return self.request(endpoint, "PUT", f"/loadbalancer/{_segment(lb_id)}/{_segment(action)}").json().get(
            "details", ""
        )

    def upload_config(self, endpoint: AmphoraEndpoint, lb_id: str, config: str, version: int) -> None:
        """Upload ``config`` as ``version`` and reload HAProxy on it."""
        self.put_config(endpoint, lb_id, config, version)
        self.action(endpoint, lb_id, "reload")

    def get_config(self, endpoint: AmphoraEndpoint, lb_id: str) -> tuple[str, int]:
        """The stored configuration of ``lb_id`` and its version."""
        response = self.request(endpoint, "GET", f"/loadbalancer/{_segment(lb_id)}/haproxy")
        return response.text, int(response.headers.get(VERSION_HEADER, "0"))

    def delete_config(self, endpoint: AmphoraEndpoint, lb_id: str) -> None:
        """Stop ``lb_id`` and remove its configuration (the agent keeps its version)."""
        self.request(endpoint, "DELETE", f"/loadbalancer/{_segment(lb_id)}")

    def install_certificate(self, endpoint: AmphoraEndpoint, pem_bundle: bytes) -> None:
        """Replace the agent's server certificate and key (used from the next connection)."""
        self.request(endpoint, "PUT", "/certificate", data=pem_bundle)

    def upload_listener_certificate(
        self, endpoint: AmphoraEndpoint, lb_id: str, filename: str, pem: bytes
    ) -> None:
        """Store a listener's TLS material as ``filename`` on the amphora."""
        self.request(endpoint, "PUT", f"/loadbalancer/{_segment(lb_id)}/certificates/{_segment(filename)}", data=pem)

    def forget(self, endpoint: AmphoraEndpoint) -> None:
        """Close the session of an amphora that is gone."""
        key = (endpoint.amphora_id, endpoint.address, endpoint.port or self.agent_port)
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
