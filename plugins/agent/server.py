"""The agent's REST API: a Flask application exposing the core under ``/1.0``.

Paths and semantics follow Octavia's amphora agent API 1.0 (``GET /``, ``/info``, ``/details``,
the ``haproxy`` upload and read-back, start/stop/reload, ``/listeners``, UDP listeners,
``/certificate``, listener certificates, ``/config``); the routes Keramos does not implement
(interface plugging, VRRP) answer 501 with a JSON body saying what Keramos does instead
(doc/agent-api.md). Keramos adds configuration versions: a push carries ``X-Config-Version``, the
agent reports the stored and running versions in ``/info`` and refuses an older push with 409, so
that a delayed retry can never roll an amphora back. A push without the header (Octavia's) is
accepted only while the object never had a versioned configuration (see
:func:`keramos.plugins.agent.haproxy.accept_push`). It also adds the
controller's activation of the amphora (``POST /activate``; until then configuration changes are
refused with 409) and, in csr mode, ``GET /csr`` (see :mod:`keramos.plugins.agent.identity`).

Every error, 404 and 405 included, is a JSON body ``{"message", "details"}`` served as
``application/json``: controllers treat a non-JSON 404 as "agent not up yet".
"""

from __future__ import annotations

import configparser
import logging
import os
import re
import shutil
import socket
from typing import Any

import flask
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from oslo_config import cfg
from werkzeug.exceptions import HTTPException

from keramos.framework.agent_protocol import rest as protocol
from keramos.framework.agent_protocol.rest import is_valid_id
from keramos.framework.files import write_atomic
from keramos.plugins.agent import haproxy, system
from keramos.plugins.agent.files import contained_path, is_valid_pem_filename
from keramos.plugins.agent.identity import (
    Activation,
    ActivationError,
    load_server_key,
    public_key_der,
    server_csr,
)
from keramos.plugins.agent.lvs import LvsManager
from keramos.plugins.agent.options import GROUP, AgentSettings, agent_opts

LOG = logging.getLogger(__name__)

_VERSION_RE = re.compile(r"[0-9]{1,18}")


class ApiError(Exception):
    """An error answered as ``{"message", "details"}`` with ``status``."""

    def __init__(self, status: int, message: str, details: str = "") -> None:
        self.status = status
        self.message = message
        self.details = details
        super().__init__(f"{status} {message}: {details}")


def _json_response(status: int, body: dict[str, Any]) -> flask.Response:
    response = flask.jsonify(body)
    response.status_code = status
    return response


def _ok(status: int = 202, message: str = "OK", details: str | None = None) -> flask.Response:
    body: dict[str, Any] = {"message": message}
    if details is not None:
        body["details"] = details
    return _json_response(status, body)


def register_error_handlers(app: flask.Flask) -> None:
    """Answer every error as JSON, keeping the headers (``Allow`` on 405) werkzeug sets."""

    @app.errorhandler(ApiError)
    def _api_error(error: ApiError) -> flask.Response:
        return _json_response(error.status, {"message": error.message, "details": error.details})

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> flask.Response:
        response = error.get_response()
        response.set_data(flask.json.dumps({"message": error.name, "details": error.description}))
        response.content_type = "application/json"
        return response

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> flask.Response:
        LOG.exception("unexpected error serving %s %s", flask.request.method, flask.request.path)
        return _json_response(500, {"message": "Internal Server Error", "details": str(error)})


def _check_id(kind: str, value: str) -> None:
    if not is_valid_id(value):
        raise ApiError(400, "Invalid request", f"invalid {kind} {value!r}")


_READ_SIZE = 64 << 10


def _read_body(limit: int) -> bytes:
    """The whole request body, or 413 when it is larger than ``limit``, whatever its framing.

    A chunked body (no Content-Length) is read from the WSGI input the server terminates, not
    from Flask's ``request.stream``: that one ends silently at ``MAX_CONTENT_LENGTH``, which made
    a body over the limit look complete and get stored cut.
    """
    request = flask.request
    too_large = ApiError(413, "Request Entity Too Large", f"body larger than {limit} bytes")
    length = request.content_length
    if length is not None:
        if length > limit:
            raise too_large
        stream = request.stream
    elif request.environ.get("wsgi.input_terminated"):
        stream = request.environ["wsgi.input"]
    elif "chunked" in request.headers.get("Transfer-Encoding", "").lower():
        raise ApiError(411, "Length Required", "this server cannot read a chunked body")
    else:
        return b""
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = stream.read(min(_READ_SIZE, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        raise too_large
    return b"".join(chunks)


def _parse_version(value: str | None) -> int | None:
    """The pushed version, ``None`` for an unversioned push (no header)."""
    if value is None:
        return None
    if not _VERSION_RE.fullmatch(value) or int(value) < 1:
        raise ApiError(400, "Invalid request", f"{protocol.CONFIG_VERSION_HEADER} must be a positive integer")
    return int(value)


def _load_certificates(data: bytes) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as error:
        raise ApiError(400, "Invalid request", f"no PEM certificate in the body: {error}") from None


def _not_implemented(what: str, instead: str) -> flask.Response:
    return _json_response(
        501, {"message": "Not Implemented", "details": f"{what} is not implemented by Keramos: {instead}"}
    )


_NO_NETWORKING = (
    "Keramos amphorae run HAProxy in the agent's own network namespace, whose interfaces the "
    "compute and network drivers set up; the agent plugs no VIP or member network and manages no "
    "interface (network namespaces arrive with the agent proxy)"
)
_NO_VRRP = (
    "Keramos runs no VRRP keepalived on the amphora: a failed amphora is replaced by the "
    "controller's failover flow (health manager), not taken over by a standby"
)


def has_private_key(data: bytes) -> bool:
    """Whether a PEM body carries a private key (of any PEM type)."""
    return b"PRIVATE KEY-----" in data


def _split_server_bundle(data: bytes, amphora_id: str | None, held_key: Any = None) -> tuple[bytes, bytes]:
    """Return (certificates PEM, private key PEM) of a server bundle, checked to belong together.

    A body without a private key is a certificate for ``held_key``, the key the agent already has.
    """
    certificates = _load_certificates(data)
    if has_private_key(data):
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as error:
            raise ApiError(400, "Invalid request", f"no unencrypted private key: {error}") from None
        mismatch = "the private key does not match the certificate"
    elif held_key is not None:
        key, mismatch = held_key, "the certificate does not certify the key this agent holds"
    else:
        raise ApiError(400, "Invalid request", "no private key in the body and none held by the agent")
    encoding = serialization.Encoding.PEM
    if public_key_der(key.public_key()) != public_key_der(certificates[0].public_key()):
        raise ApiError(400, "Invalid request", mismatch)
    if amphora_id is not None:
        names = [
            attribute.value
            for attribute in certificates[0].subject.get_attributes_for_oid(
                x509.NameOID.COMMON_NAME
            )
        ]
        try:
            san = certificates[0].extensions.get_extension_for_class(x509.SubjectAlternativeName)
            names += san.value.get_values_for_type(x509.DNSName)
        except x509.ExtensionNotFound:
            pass
        if amphora_id not in names:
            raise ApiError(400, "Invalid request", f"the certificate does not name {amphora_id}")
    certificates_pem = b"".join(cert.public_bytes(encoding) for cert in certificates)
    key_pem = key.private_bytes(
        encoding, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return certificates_pem, key_pem


#: Routes an unactivated agent answers anyway: activation itself, a certificate for its own key,
#: and the routes it does not implement (501 whether activated or not).
_ANSWERED_BEFORE_ACTIVATION = frozenset(
    {
        "activate",
        "upload_server_certificate",
        "plug_vip",
        "plug_network",
        "set_interface_rules",
        "upload_vrrp_config",
        "vrrp_action",
    }
)


class Server:
    """Registers every route of the agent API on a Flask application (``self.app``)."""

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.haproxy = haproxy.HaproxyManager(
            settings.state_dir, settings.haproxy_binary, settings.haproxy_timeout
        )
        self.lvs = LvsManager(
            settings.state_dir, settings.keepalived_binary, settings.haproxy_timeout
        )
        self.app = flask.Flask(__name__)
        self.app.config["MAX_CONTENT_LENGTH"] = max(
            settings.max_config_bytes, settings.max_certificate_bytes
        )
        self.activation = Activation(settings.state_dir, settings.activation_token_file)
        register_error_handlers(self.app)
        self.app.before_request(self.refuse_changes_until_activated)
        routes = [
            (protocol.VERSION_DISCOVERY, self.version_discovery, ["GET"]),
            (protocol.INFO, self.get_info, ["GET"]),
            (protocol.DETAILS, self.get_details, ["GET"]),
            (protocol.ACTIVATE, self.activate, ["POST"]),
            (protocol.CSR, self.get_csr, ["GET"]),
            (protocol.HAPROXY_UPLOAD, self.upload_haproxy_config, ["PUT"]),
            (protocol.HAPROXY_CONFIG, self.get_haproxy_config, ["GET"]),
            (protocol.LOADBALANCER_ACTION, self.start_stop_lb, ["PUT"]),
            (protocol.LOADBALANCER, self.delete_lb, ["DELETE"]),
            (protocol.SERVER_CERTIFICATE, self.upload_server_certificate, ["PUT"]),
            (protocol.LISTENER_CERTIFICATE, self.upload_certificate, ["PUT"]),
            (protocol.LISTENER_CERTIFICATE, self.get_certificate_md5, ["GET"]),
            (protocol.LISTENER_CERTIFICATE, self.delete_certificate, ["DELETE"]),
            (protocol.AGENT_CONFIG, self.update_agent_config, ["PUT"]),
            (protocol.LISTENERS, self.get_all_listeners, ["GET"]),
            (protocol.LISTENER, self.get_listener_status, ["GET"]),
            (protocol.LISTENER, self.delete_listener, ["DELETE"]),
            (protocol.UDP_LISTENER_UPLOAD, self.upload_udp_listener_config, ["PUT"]),
            (protocol.UDP_LISTENER_CONFIG, self.get_udp_listener_config, ["GET"]),
            (protocol.PLUG_VIP, self.plug_vip, ["POST"]),
            (protocol.PLUG_NETWORK, self.plug_network, ["POST"]),
            (protocol.INTERFACE, self.get_interface, ["GET"]),
            (protocol.INTERFACE_RULES, self.set_interface_rules, ["PUT"]),
            (protocol.VRRP_UPLOAD, self.upload_vrrp_config, ["PUT"]),
            (protocol.VRRP_ACTION, self.vrrp_action, ["PUT"]),
        ]
        for template, view, methods in routes:
            self.app.add_url_rule(protocol.flask_rule(template), view_func=view, methods=methods)

    def refuse_changes_until_activated(self) -> None:
        """Before every request: an unactivated agent answers reads only (409 otherwise).

        ``POST /activate`` is how it gets activated, and ``PUT /certificate`` takes, before
        activation, only a certificate for the key the agent already holds (csr mode).
        """
        if flask.request.method in ("GET", "HEAD") or flask.request.routing_exception is not None:
            return
        if self.activation.activated:
            return
        if flask.request.endpoint in _ANSWERED_BEFORE_ACTIVATION:
            return
        raise ApiError(
            409,
            "Not activated",
            "this amphora has not been activated by the controller yet: configuration changes "
            "are refused",
        )

    def activate(self) -> flask.Response:
        """``POST /1.0/activate``: hand the activation token to the controller, once.

        The agent records itself activated and deletes the token file; a second call is 410.
        """
        try:
            token = self.activation.activate()
        except ActivationError as error:
            raise ApiError(410 if error.gone else 409, "Gone", str(error)) from None
        LOG.info("activated by the controller")
        return _json_response(200, {"amphora_id": self.settings.amphora_id, "activation_token": token})

    def get_csr(self) -> flask.Response:
        """``GET /1.0/csr`` (csr mode): the CSR for the agent's own key and the activation token.

        The token proves to the controller that this agent booted from the amphora's config
        drive; it stays valid until ``POST /activate``, after which this route answers 410.
        """
        if self.settings.certificate_mode != "csr" or not self.settings.server_key:
            raise ApiError(404, "No CSR", "this agent's server key comes from the controller")
        try:
            token = self.activation.token()
        except ActivationError as error:
            raise ApiError(410, "Gone", str(error)) from None
        csr = server_csr(self.settings.amphora_id or "", self.settings.server_key)
        return _json_response(
            200,
            {"amphora_id": self.settings.amphora_id, "csr": csr.decode("ascii"), "activation_token": token},
        )

    def version_discovery(self) -> flask.Response:
        """``GET /``: the API version this agent speaks."""
        return _json_response(200, {"api_version": protocol.API_VERSION})

    def _info(self) -> dict[str, Any]:
        return {
            "hostname": socket.gethostname(),
            "api_version": protocol.API_VERSION,
            "haproxy_version": self.haproxy.version(),
            "keepalived_version": self.lvs.version(),
            "ipvsadm_version": None,
            "amphora_id": self.settings.amphora_id,
            "activated": self.activation.activated,
            "loadbalancers": {
                state.lb_id: {
                    "config_version": state.config_version,
                    "running_version": state.running_version,
                    "running": state.running,
                }
                for state in self.haproxy.loadbalancers()
            },
            "udp_listeners": {
                listener_id: self.lvs.state(listener_id) for listener_id in self.lvs.listeners()
            },
        }

    def get_info(self) -> flask.Response:
        """``GET /1.0/info``: identity, versions, and each load balancer's config versions."""
        return _json_response(200, self._info())

    def get_details(self) -> flask.Response:
        """``GET /1.0/details``: ``info`` plus every key of Octavia's agent's details.

        What the agent can measure is measured (cpu, memory, disk of the state directory, load,
        network counters, listeners, process counts); what it does not manage is reported as
        such: ``topology`` ``SINGLE`` (no VRRP), no tuned profile, no package list.
        """
        details = self._info()
        disk = shutil.disk_usage(self.settings.state_dir)
        listeners = sorted(
            {status["uuid"] for status in self._listener_statuses()}
        )
        details.update(
            networks=system.network_counters(),
            active=True,
            haproxy_count=sum(1 for lb in details["loadbalancers"].values() if lb["running"]),
            lvs_listener_process_count=sum(
                1 for listener in details["udp_listeners"].values() if listener["running"]
            ),
            cpu_count=os.cpu_count(),
            cpu=system.cpu_times(),
            memory=system.meminfo(),
            disk={"used": disk.used, "available": disk.free},
            load=system.load(),
            active_tuned_profiles="",
            topology="SINGLE",
            topology_status="OK",
            listeners=listeners,
            packages={},
        )
        return _json_response(200, details)

    def _statuses_by_loadbalancer(self) -> dict[str, list[dict[str, str]]]:
        """Each load balancer's listener statuses, one per HAProxy frontend of its configuration."""
        by_loadbalancer = {}
        for state in self.haproxy.loadbalancers():
            try:
                config = self.haproxy.read_config(state.lb_id)
            except haproxy.NoSuchLoadBalancer:
                continue
            status = "ACTIVE" if state.running else "OFFLINE"
            by_loadbalancer[state.lb_id] = [
                {"status": status, "uuid": name, "type": kind} for name, kind in haproxy.frontends(config).items()
            ]
        return by_loadbalancer

    def _listener_statuses(self) -> list[dict[str, str]]:
        """Octavia's listener statuses: one per HAProxy frontend, one per UDP listener."""
        statuses = [status for listeners in self._statuses_by_loadbalancer().values() for status in listeners]
        for listener_id in self.lvs.listeners():
            statuses.append({"status": self.lvs.status(listener_id), "uuid": listener_id, "type": "UDP"})
        return statuses

    def get_all_listeners(self) -> flask.Response:
        """``GET /1.0/listeners``: ``[{"status", "uuid", "type"}]`` of every listener.

        ``status`` is ``ACTIVE`` when the process serving it runs, ``OFFLINE`` when it does not
        (Octavia's agent says ``ACTIVE`` for every HAProxy frontend), ``ERROR`` for a UDP
        listener whose keepalived died.
        """
        return _json_response(200, self._listener_statuses())  # type: ignore[arg-type]

    def get_listener_status(self, object_id: str) -> flask.Response:
        """``GET /1.0/listeners/<id>``: one listener's status (Octavia's client has this call;
        Octavia's agent has no such route).

        The id is a listener's (a HAProxy frontend or a UDP listener) or, as for
        ``DELETE /1.0/listeners/<id>`` and the start/stop/reload actions since Octavia combined
        a load balancer's listeners into one HAProxy, a load balancer's: its status is that of
        its HAProxy, its ``type`` its listeners' types (comma-separated when they differ), and
        ``listeners`` lists them.
        """
        _check_id("listener or load balancer id", object_id)
        for status in self._listener_statuses():
            if status["uuid"] == object_id:
                return _json_response(200, status)
        listeners = self._statuses_by_loadbalancer().get(object_id)
        if listeners is None:
            raise ApiError(404, "Listener Not Found", f"No listener or load balancer with UUID: {object_id}")
        state = self.haproxy.state(object_id)
        return _json_response(
            200,
            {
                "status": "ACTIVE" if state.running else "OFFLINE",
                "uuid": object_id,
                "type": ",".join(sorted({listener["type"] for listener in listeners})),
                "listeners": listeners,
            },
        )

    def delete_listener(self, object_id: str) -> flask.Response:
        """``DELETE /1.0/listeners/<id>``: delete the UDP listener of that id, or else stop and
        remove the load balancer of that id, as Octavia's agent does (idempotent)."""
        _check_id("listener or load balancer id", object_id)
        if self.lvs.exists(object_id):
            self.lvs.delete(object_id)
        else:
            self.haproxy.delete(object_id)
        return _ok(200)

    def upload_udp_listener_config(self, amphora_id: str, listener_id: str) -> flask.Response:
        """``PUT .../listeners/<amphora_id>/<listener_id>/udp_listener``: check a keepalived
        (LVS) configuration with ``keepalived --config-test`` and store it, all or nothing."""
        _check_id("amphora id", amphora_id)
        _check_id("listener id", listener_id)
        self._check_amphora(amphora_id)
        if self.haproxy.has_config(listener_id):
            raise ApiError(409, "Conflict", f"{listener_id} is a load balancer on this amphora")
        version = _parse_version(flask.request.headers.get(protocol.CONFIG_VERSION_HEADER))
        config = _read_body(self.settings.max_config_bytes)
        try:
            etag, changed = self.lvs.install_config(listener_id, config, version)
        except haproxy.ConfigInvalid as error:
            raise ApiError(400, "Invalid request", error.details) from None
        except (haproxy.StaleConfigVersion, haproxy.UnversionedPushRefused) as error:
            raise ApiError(409, error.message, error.details) from None
        except haproxy.HaproxyFailed as error:
            raise ApiError(500, error.message, error.details) from None
        return self._pushed(200, etag, changed, version)

    def get_udp_listener_config(self, listener_id: str) -> flask.Response:
        """``GET .../listeners/<listener_id>/udp_listener``: the stored keepalived configuration."""
        _check_id("listener id", listener_id)
        try:
            config = self.lvs.read_config(listener_id)
        except haproxy.NoSuchLoadBalancer as error:
            raise ApiError(404, error.message, error.details) from None
        response = flask.Response(config, status=200, mimetype="text/plain")
        version = self.lvs.state(listener_id)["config_version"]
        if version is not None:
            response.headers[protocol.CONFIG_VERSION_HEADER] = str(version)
        return response

    def plug_vip(self, vip: str) -> flask.Response:
        """``POST /1.0/plug/vip/<vip>``: 501, see :data:`_NO_NETWORKING`."""
        return _not_implemented("plug_vip", _NO_NETWORKING)

    def plug_network(self) -> flask.Response:
        """``POST /1.0/plug/network``: 501, see :data:`_NO_NETWORKING`."""
        return _not_implemented("plug_network", _NO_NETWORKING)

    def get_interface(self, ip_addr: str) -> flask.Response:
        """``GET /1.0/interface/<ip>``: 501, see :data:`_NO_NETWORKING`."""
        return _not_implemented("get_interface", _NO_NETWORKING)

    def set_interface_rules(self, ip_addr: str) -> flask.Response:
        """``PUT /1.0/interface/<ip>/rules``: 501, see :data:`_NO_NETWORKING`."""
        return _not_implemented("set_interface_rules", _NO_NETWORKING)

    def upload_vrrp_config(self) -> flask.Response:
        """``PUT /1.0/vrrp/upload``: 501, see :data:`_NO_VRRP`."""
        return _not_implemented("upload_vrrp_config", _NO_VRRP)

    def vrrp_action(self, action: str) -> flask.Response:
        """``PUT /1.0/vrrp/<action>``: 501, see :data:`_NO_VRRP`."""
        return _not_implemented(f"vrrp {action}", _NO_VRRP)

    def _check_amphora(self, amphora_id: str) -> None:
        if self.settings.amphora_id is not None and amphora_id != self.settings.amphora_id:
            raise ApiError(
                400, "Wrong amphora", f"this is amphora {self.settings.amphora_id}, not {amphora_id}"
            )

    @staticmethod
    def _pushed(status: int, etag: str, changed: bool, version: int | None) -> flask.Response:
        already = "this configuration is already installed"
        if version is not None:
            already = f"version {version} already installed"
        response = _ok(status, "OK", None if changed else already)
        response.headers["ETag"] = etag
        if version is not None:
            response.headers[protocol.CONFIG_VERSION_HEADER] = str(version)
        return response

    def upload_haproxy_config(self, amphora_id: str, lb_id: str) -> flask.Response:
        """``PUT .../loadbalancer/<amphora_id>/<lb_id>/haproxy``: check and store a config."""
        _check_id("amphora id", amphora_id)
        _check_id("load balancer id", lb_id)
        self._check_amphora(amphora_id)
        if self.lvs.exists(lb_id):
            raise ApiError(409, "Conflict", f"{lb_id} is a UDP listener on this amphora")
        version = _parse_version(flask.request.headers.get(protocol.CONFIG_VERSION_HEADER))
        config = _read_body(self.settings.max_config_bytes)
        try:
            etag, changed = self.haproxy.install_config(lb_id, config, version)
        except haproxy.ConfigInvalid as error:
            raise ApiError(400, "Invalid request", error.details) from None
        except (haproxy.StaleConfigVersion, haproxy.UnversionedPushRefused) as error:
            raise ApiError(409, error.message, error.details) from None
        return self._pushed(202, etag, changed, version)

    def get_haproxy_config(self, lb_id: str) -> flask.Response:
        """``GET .../loadbalancer/<lb_id>/haproxy``: the stored config as text/plain."""
        _check_id("load balancer id", lb_id)
        try:
            config = self.haproxy.read_config(lb_id)
            state = self.haproxy.state(lb_id)
        except haproxy.NoSuchLoadBalancer as error:
            raise ApiError(404, error.message, error.details) from None
        response = flask.Response(config, status=200, mimetype="text/plain")
        response.headers["ETag"] = state.etag or haproxy.config_etag(config)
        if state.config_version is not None:
            response.headers[protocol.CONFIG_VERSION_HEADER] = str(state.config_version)
        return response

    def start_stop_lb(self, lb_id: str, action: str) -> flask.Response:
        """``PUT .../loadbalancer/<id>/<start|stop|reload>``: of a load balancer's HAProxy, or of
        a UDP listener's keepalived when ``id`` names one (as in Octavia's agent)."""
        _check_id("load balancer id", lb_id)
        if action not in protocol.LOADBALANCER_ACTIONS:
            raise ApiError(400, "Invalid Request", f"Unknown action: {action}")
        manager: Any = self.lvs if self.lvs.exists(lb_id) else self.haproxy
        try:
            details = getattr(manager, action)(lb_id)
        except haproxy.NoSuchLoadBalancer as error:
            raise ApiError(404, error.message, error.details) from None
        except haproxy.HaproxyFailed as error:
            raise ApiError(500, error.message, error.details) from None
        return _ok(202, "OK", details)

    def delete_lb(self, lb_id: str) -> flask.Response:
        """``DELETE .../loadbalancer/<lb_id>``: stop it and remove its files (idempotent)."""
        _check_id("load balancer id", lb_id)
        self.haproxy.delete(lb_id)
        return _ok(200)

    def _held_server_key(self) -> Any:
        """The server key the agent holds now, or ``None``."""
        for path in (self.settings.server_key, self.settings.server_cert):
            if path:
                try:
                    return load_server_key(path)
                except (OSError, ValueError, TypeError):
                    continue
        return None

    def upload_server_certificate(self) -> flask.Response:
        """``PUT /1.0/certificate``: install a rotated server certificate and key (PEM bundle),
        or a certificate alone for the key the agent already holds (its own key in csr mode).

        Before activation only the latter is accepted. Takes effect for the next TLS connection
        (gunicorn loads the files per connection).
        """
        if not self.settings.server_cert:
            raise ApiError(503, "Not configured", "this agent has no server_cert path")
        data = _read_body(self.settings.max_certificate_bytes)
        if has_private_key(data) and not self.activation.activated:
            raise ApiError(
                409,
                "Not activated",
                "this amphora has not been activated yet: only a certificate for the key it holds "
                "is accepted",
            )
        held_key = None if has_private_key(data) else self._held_server_key()
        certificates, key = _split_server_bundle(data, self.settings.amphora_id, held_key)
        key_path = self.settings.server_key
        if key_path and os.path.abspath(key_path) != os.path.abspath(self.settings.server_cert):
            if held_key is None:
                write_atomic(key_path, key, 0o600, make_dirs=True)
            write_atomic(self.settings.server_cert, certificates, 0o600, make_dirs=True)
        else:
            write_atomic(self.settings.server_cert, certificates + key, 0o600, make_dirs=True)
        return _ok(202, "OK. Server certificate installed")

    def _certificate_path(self, lb_id: str, filename: str) -> str:
        _check_id("load balancer id", lb_id)
        if not is_valid_pem_filename(filename):
            raise ApiError(400, "Filename has wrong format", f"invalid filename {filename!r}")
        try:
            return contained_path(self.haproxy.certificates_dir(lb_id), filename)
        except ValueError as error:
            raise ApiError(400, "Filename has wrong format", str(error)) from None

    def upload_certificate(self, lb_id: str, filename: str) -> flask.Response:
        """``PUT .../loadbalancer/<lb_id>/certificates/<filename>``: listener TLS material."""
        path = self._certificate_path(lb_id, filename)
        data = _read_body(self.settings.max_certificate_bytes)
        _load_certificates(data)
        write_atomic(path, data, 0o600, make_dirs=True)
        return _ok(200)

    def get_certificate_md5(self, lb_id: str, filename: str) -> flask.Response:
        """``GET .../certificates/<filename>``: the MD5 of a stored file (never its content)."""
        path = self._certificate_path(lb_id, filename)
        try:
            with open(path, "rb") as stream:
                md5 = haproxy.config_etag(stream.read())
        except FileNotFoundError:
            raise ApiError(
                404, "Certificate Not Found", f"No certificate with filename: {filename}"
            ) from None
        response = _json_response(200, {"md5sum": md5})
        response.headers["ETag"] = md5
        return response

    def delete_certificate(self, lb_id: str, filename: str) -> flask.Response:
        """``DELETE .../certificates/<filename>`` (idempotent)."""
        path = self._certificate_path(lb_id, filename)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return _ok(200)

    def update_agent_config(self) -> flask.Response:
        """``PUT /1.0/config``: replace the agent's configuration file (used at next start).

        Only ``[amphora_agent]`` options this agent knows are accepted.
        """
        if not self.settings.config_file:
            raise ApiError(503, "Not configured", "this agent was started without a config file")
        data = _read_body(self.settings.max_config_bytes)
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read_string(data.decode("utf-8"))
        except (UnicodeDecodeError, configparser.Error) as error:
            raise ApiError(400, "Invalid request", f"not an INI file: {error}") from None
        known = {opt.dest for opt in agent_opts}
        for section in parser.sections():
            if section != GROUP:
                raise ApiError(400, "Invalid request", f"unknown section [{section}]")
            unknown = sorted(set(parser[section]) - known)
            if unknown:
                raise ApiError(400, "Invalid request", f"unknown option(s): {', '.join(unknown)}")
        write_atomic(self.settings.config_file, data, 0o600, make_dirs=True)
        return _ok(202)


def create_app(config: AgentSettings | cfg.ConfigOpts) -> flask.Flask:
    """Build the agent application from settings or from a configuration with its options."""
    settings = config if isinstance(config, AgentSettings) else AgentSettings.from_conf(config)
    return Server(settings).app
