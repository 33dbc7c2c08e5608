"""The amphora agent's REST API as both ends see it: version, paths, headers, identifiers.

The agent (a Flask application) registers its routes from these templates with
:func:`flask_rule`; the controller's REST driver builds its request paths from the same templates
with :func:`path`. A path or header changes here, for both, or not at all.
"""

from __future__ import annotations

import re
import urllib.parse

from keramos.framework.schema import IDENTIFIER_PATTERN

API_VERSION = "1.0"
#: Every route but version discovery (``GET /``) lives under this prefix.
API_PREFIX = "/" + API_VERSION

#: Request and response header carrying the version of a load balancer's configuration. A push
#: without it is unversioned (Octavia's client never sends it): the agent accepts it only while the
#: load balancer has never had a versioned configuration, and answers 409 afterwards.
CONFIG_VERSION_HEADER = "X-Config-Version"
#: Content type of PEM bodies (server certificate bundles, listener certificates).
PEM_CONTENT_TYPE = "application/x-pem-file"
#: What ``PUT LOADBALANCER_ACTION`` may ask of a load balancer's HAProxy.
LOADBALANCER_ACTIONS = ("start", "stop", "reload")

VERSION_DISCOVERY = "/"
INFO = "/info"
DETAILS = "/details"
ACTIVATE = "/activate"
CSR = "/csr"
SERVER_CERTIFICATE = "/certificate"
AGENT_CONFIG = "/config"
HAPROXY_UPLOAD = "/loadbalancer/{amphora_id}/{lb_id}/haproxy"
HAPROXY_CONFIG = "/loadbalancer/{lb_id}/haproxy"
#: ``lb_id`` may also name a UDP listener: Octavia starts, stops and reloads both on this path.
LOADBALANCER_ACTION = "/loadbalancer/{lb_id}/{action}"
LOADBALANCER = "/loadbalancer/{lb_id}"
LISTENER_CERTIFICATE = "/loadbalancer/{lb_id}/certificates/{filename}"
#: Every listener's status (HAProxy frontends and UDP listeners).
LISTENERS = "/listeners"
#: ``GET``: one listener's status. ``DELETE``: Octavia's way to delete a load balancer (its id) or
#: a UDP listener (its id).
LISTENER = "/listeners/{object_id}"
UDP_LISTENER_UPLOAD = "/listeners/{amphora_id}/{listener_id}/udp_listener"
UDP_LISTENER_CONFIG = "/listeners/{listener_id}/udp_listener"
#: Octavia routes Keramos answers with 501 and a JSON body saying what it does instead.
PLUG_VIP = "/plug/vip/{vip}"
PLUG_NETWORK = "/plug/network"
INTERFACE = "/interface/{ip_addr}"
INTERFACE_RULES = "/interface/{ip_addr}/rules"
VRRP_UPLOAD = "/vrrp/upload"
VRRP_ACTION = "/vrrp/{action}"

#: Load balancer and amphora ids: they become directory names on the agent, so no separators and
#: no leading dot (which also rules out "." and "..").
ID_RE = re.compile(IDENTIFIER_PATTERN)
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def is_valid_id(value: str) -> bool:
    """Whether ``value`` may name an amphora or a load balancer."""
    return ID_RE.fullmatch(value) is not None


def path(template: str, **segments: str) -> str:
    """The request path of ``template`` under :data:`API_PREFIX`, each segment quoted so that a
    ``/``, ``?`` or ``#`` in a value cannot change the path."""
    quoted = {name: urllib.parse.quote(value, safe="") for name, value in segments.items()}
    return API_PREFIX + template.format(**quoted)


def flask_rule(template: str) -> str:
    """The Flask URL rule of ``template``: ``{name}`` placeholders become ``<name>``."""
    if template == VERSION_DISCOVERY:
        return template
    return API_PREFIX + _PLACEHOLDER.sub(r"<\1>", template)
