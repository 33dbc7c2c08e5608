"""HAProxy configuration of a load balancer, rendered from one template per protocol.

A load balancer description is plain data (what a cast carries)::

    listeners: [{"id", "protocol": "HTTP"|"TCP", "address", "port", "default_pool",
                 "connection_limit"?}]
    pools:     [{"id", "protocol": "HTTP"|"TCP", "algorithm"?: "ROUND_ROBIN"|"LEAST_CONNECTIONS"|
                 "SOURCE_IP", "health_check"?: bool, "members": [{"id", "address", "port",
                 "weight"?}]}]

Every value is checked before it reaches a template (ids against a strict pattern, addresses with
:mod:`ipaddress`, ports and weights by range), so a description can never inject a directive.
The templates are ``string.Template`` files beside this module: ``base``, ``listener_<proto>``,
``pool_<proto>``. The global ``maxconn`` is left to HAProxy, which derives it from the file
descriptor limit of the amphora; listeners carry their own limit.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import string
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

from keramos.framework.errors import PayloadError

PROTOCOLS = ("HTTP", "TCP")
BALANCE = {"ROUND_ROBIN": "roundrobin", "LEAST_CONNECTIONS": "leastconn", "SOURCE_IP": "source"}
HEALTH_CHECKS = {"HTTP": "    option httpchk GET /\n", "TCP": ""}
DEFAULT_CONNECTION_LIMIT = 10000
#: Ids of load balancers, listeners, pools and members: they name HAProxy sections and files.
ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}"

_LISTENER_KEYS = {"id", "protocol", "address", "port", "default_pool", "connection_limit"}
_POOL_KEYS = {"id", "protocol", "algorithm", "health_check", "members"}
_MEMBER_KEYS = {"id", "address", "port", "weight"}


@functools.cache
def _template(name: str) -> string.Template:
    return string.Template(resources.files(__name__).joinpath(f"{name}.cfg.tmpl").read_text())


def _object(where: str, value: Any, allowed: set[str], required: set[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise PayloadError(f"{where} must be an object")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise PayloadError(f"{where}: unknown field(s) {', '.join(unknown)}")
    missing = sorted(required - set(value))
    if missing:
        raise PayloadError(f"{where}: missing field(s) {', '.join(missing)}")
    return value


def _id(where: str, value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(ID_PATTERN, value):
        raise PayloadError(f"{where} must match {ID_PATTERN}, got {value!r}")
    return value


def _int(where: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise PayloadError(f"{where} must be an integer from {low} to {high}, got {value!r}")
    return value


def _endpoint(where: str, address: Any, port: Any) -> str:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise PayloadError(f"{where}.address must be an IP address, got {address!r}") from None
    port = _int(f"{where}.port", port, 1, 65535)
    return f"ipv6@{ip}:{port}" if ip.version == 6 else f"{ip}:{port}"


def _choice(where: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise PayloadError(f"{where} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _render_pool(where: str, pool: Any) -> tuple[str, str, str]:
    pool = _object(where, pool, _POOL_KEYS, {"id", "protocol", "members"})
    pool_id = _id(f"{where}.id", pool["id"])
    protocol = _choice(f"{where}.protocol", pool["protocol"], PROTOCOLS)
    algorithm = _choice(f"{where}.algorithm", pool.get("algorithm", "ROUND_ROBIN"), list(BALANCE))
    health_check = pool.get("health_check", False)
    if not isinstance(health_check, bool):
        raise PayloadError(f"{where}.health_check must be true or false")
    if not isinstance(pool["members"], list):
        raise PayloadError(f"{where}.members must be a list")
    lines = []
    seen: set[str] = set()
    for index, member in enumerate(pool["members"]):
        member_where = f"{where}.members[{index}]"
        member = _object(member_where, member, _MEMBER_KEYS, {"id", "address", "port"})
        member_id = _id(f"{member_where}.id", member["id"])
        if member_id in seen:
            raise PayloadError(f"{member_where}.id {member_id!r} is used twice")
        seen.add(member_id)
        target = _endpoint(member_where, member["address"], member["port"])
        weight = _int(f"{member_where}.weight", member.get("weight", 1), 0, 256)
        check = " check" if health_check else ""
        lines.append(f"    server member_{member_id} {target} weight {weight}{check}\n")
    text = _template(f"pool_{protocol.lower()}").substitute(
        pool_id=pool_id,
        balance=BALANCE[algorithm],
        health_check=HEALTH_CHECKS[protocol] if health_check else "",
        members="".join(lines),
    )
    return pool_id, protocol, text


def render_haproxy_config(
    lb_id: str, listeners: Sequence[Any], pools: Sequence[Any]
) -> str:
    """Render the HAProxy configuration of a load balancer; PayloadError on a bad description."""
    _id("lb_id", lb_id)
    if not isinstance(listeners, list) or not listeners:
        raise PayloadError("listeners must be a non-empty list")
    if not isinstance(pools, list):
        raise PayloadError("pools must be a list")
    rendered_pools: dict[str, tuple[str, str]] = {}
    for index, pool in enumerate(pools):
        pool_id, protocol, text = _render_pool(f"pools[{index}]", pool)
        if pool_id in rendered_pools:
            raise PayloadError(f"pools[{index}].id {pool_id!r} is used twice")
        rendered_pools[pool_id] = (protocol, text)
    sections = []
    listener_ids: set[str] = set()
    for index, listener in enumerate(listeners):
        where = f"listeners[{index}]"
        listener = _object(
            where, listener, _LISTENER_KEYS, {"id", "protocol", "address", "port", "default_pool"}
        )
        listener_id = _id(f"{where}.id", listener["id"])
        if listener_id in listener_ids:
            raise PayloadError(f"{where}.id {listener_id!r} is used twice")
        listener_ids.add(listener_id)
        protocol = _choice(f"{where}.protocol", listener["protocol"], PROTOCOLS)
        pool_id = _id(f"{where}.default_pool", listener["default_pool"])
        if pool_id not in rendered_pools:
            raise PayloadError(f"{where}.default_pool {pool_id!r} is not among the pools")
        if rendered_pools[pool_id][0] != protocol:
            raise PayloadError(
                f"{where} is {protocol} but its pool {pool_id!r} is {rendered_pools[pool_id][0]}"
            )
        limit = _int(
            f"{where}.connection_limit",
            listener.get("connection_limit", DEFAULT_CONNECTION_LIMIT),
            1,
            1_000_000,
        )
        sections.append(
            _template(f"listener_{protocol.lower()}").substitute(
                listener_id=listener_id,
                bind=_endpoint(where, listener["address"], listener["port"]),
                connection_limit=limit,
                pool_id=pool_id,
            )
        )
    sections.extend(text for _protocol, text in rendered_pools.values())
    return _template("base").substitute(lb_id=lb_id) + "".join(sections)
