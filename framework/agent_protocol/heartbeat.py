"""The heartbeat wire format: one signed UDP datagram, and the checks a receiver makes on it.

A datagram is ``MAGIC + body + digest``:

- ``MAGIC`` (``b"KHB1"``) names the format and its version;
- ``body`` is compact UTF-8 JSON ``{"amphora_id", "sequence", "sent_at", "config_versions"}``;
- ``digest`` is the 32-byte HMAC-SHA256 of ``MAGIC + body`` under the shared heartbeat key.

The receiver checks, in this order and before trusting anything: the size, the magic, the
digest (``hmac.compare_digest``), only then parses the JSON, checks its fields, and applies the
replay window: ``sent_at`` within ``replay_window`` seconds of its clock and ``sequence`` greater
than the last one it accepted from that amphora. Every refusal is a :class:`HeartbeatRejected`
whose message says why.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from keramos.framework.errors import KeramosError
from keramos.framework.schema import IDENTIFIER_PATTERN

MAGIC = b"KHB1"
DIGEST_SIZE = hashlib.sha256().digest_size
#: Largest datagram accepted by default; the receiver's ``[health] max_heartbeat_bytes``.
MAX_HEARTBEAT_BYTES = 8192
_ID_RE = re.compile(IDENTIFIER_PATTERN)
_MAX_VERSION = (1 << 63) - 1


class HeartbeatRejected(KeramosError):
    """A datagram that is not an acceptable heartbeat; the message is the reason."""


@dataclasses.dataclass(frozen=True)
class Heartbeat:
    """What an amphora's agent reports: who it is, a counter, when, and its running versions.

    ``sequence`` only grows for one amphora; ``sent_at`` is seconds since the epoch (UTC);
    ``config_versions`` maps each load balancer id to the configuration version it runs.
    """

    amphora_id: str
    sequence: int
    sent_at: float
    config_versions: Mapping[str, int]

    def to_dict(self) -> dict[str, Any]:
        """The JSON body of the datagram."""
        return {
            "amphora_id": self.amphora_id,
            "sequence": self.sequence,
            "sent_at": self.sent_at,
            "config_versions": dict(self.config_versions),
        }


def key_bytes(key: str | bytes) -> bytes:
    """The HMAC key as bytes; refuses an empty key (a signature under it proves nothing)."""
    data = key.encode("utf-8") if isinstance(key, str) else key
    if not data:
        raise ValueError("the heartbeat key is empty")
    return data


def _digest(key: bytes, signed: bytes) -> bytes:
    return hmac.new(key, signed, hashlib.sha256).digest()


def encode(heartbeat: Heartbeat, key: str | bytes, max_bytes: int = MAX_HEARTBEAT_BYTES) -> bytes:
    """The signed datagram of ``heartbeat``; ValueError if it would exceed ``max_bytes``."""
    body = json.dumps(heartbeat.to_dict(), separators=(",", ":"), sort_keys=True).encode()
    signed = MAGIC + body
    datagram = signed + _digest(key_bytes(key), signed)
    if len(datagram) > max_bytes:
        raise ValueError(f"heartbeat of {len(datagram)} bytes exceeds the {max_bytes}-byte limit")
    return datagram


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_body(body: bytes) -> Heartbeat:
    try:
        fields = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise HeartbeatRejected(f"signed body is not JSON: {error}") from None
    if not isinstance(fields, dict):
        raise HeartbeatRejected("signed body is not a JSON object")
    expected = {"amphora_id", "sequence", "sent_at", "config_versions"}
    if set(fields) != expected:
        raise HeartbeatRejected(
            f"fields {sorted(fields)} differ from the expected {sorted(expected)}"
        )
    amphora_id, sequence = fields["amphora_id"], fields["sequence"]
    sent_at, versions = fields["sent_at"], fields["config_versions"]
    if not isinstance(amphora_id, str) or not _ID_RE.fullmatch(amphora_id):
        raise HeartbeatRejected(f"amphora_id {amphora_id!r} is not an identifier")
    if not _is_int(sequence) or not 0 <= sequence <= _MAX_VERSION:
        raise HeartbeatRejected(f"sequence {sequence!r} is not a non-negative integer")
    if not isinstance(sent_at, (int, float)) or isinstance(sent_at, bool) or not math.isfinite(sent_at):
        raise HeartbeatRejected(f"sent_at {sent_at!r} is not a time in seconds")
    if not isinstance(versions, dict) or not all(
        isinstance(lb_id, str) and _ID_RE.fullmatch(lb_id) and _is_int(version)
        and 0 <= version <= _MAX_VERSION
        for lb_id, version in versions.items()
    ):
        raise HeartbeatRejected("config_versions is not a map of load balancer id to version")
    return Heartbeat(amphora_id, sequence, float(sent_at), dict(versions))


def decode(datagram: bytes, key: str | bytes, max_bytes: int = MAX_HEARTBEAT_BYTES) -> Heartbeat:
    """Check a datagram's size, format and signature, then parse it (no replay check)."""
    if len(datagram) > max_bytes:
        raise HeartbeatRejected(f"datagram of {len(datagram)} bytes exceeds {max_bytes} bytes")
    if len(datagram) < len(MAGIC) + DIGEST_SIZE + 2:
        raise HeartbeatRejected(f"datagram of {len(datagram)} bytes is too short")
    if not datagram.startswith(MAGIC):
        raise HeartbeatRejected("not a Keramos heartbeat (unknown format marker)")
    signed, digest = datagram[:-DIGEST_SIZE], datagram[-DIGEST_SIZE:]
    if not hmac.compare_digest(digest, _digest(key_bytes(key), signed)):
        raise HeartbeatRejected("bad signature: tampered, or signed with another key")
    return _parse_body(signed[len(MAGIC):])


class ReplayGuard:
    """Refuses heartbeats outside the time window or not newer than the last one accepted.

    The last accepted sequence of each amphora is kept in memory; after a restart, the time
    window alone bounds how old a replayed datagram can be.
    """

    def __init__(self, window: float) -> None:
        self.window = window
        self._lock = threading.Lock()
        self._last_sequence: dict[str, int] = {}

    def check(self, heartbeat: Heartbeat, now: float) -> None:
        """Accept ``heartbeat`` (remembering its sequence) or raise :class:`HeartbeatRejected`."""
        age = now - heartbeat.sent_at
        if age > self.window:
            raise HeartbeatRejected(
                f"{heartbeat.amphora_id}: sent {age:.1f}s ago, outside the {self.window:g}s "
                "replay window (replayed, or the clocks disagree)"
            )
        if age < -self.window:
            raise HeartbeatRejected(
                f"{heartbeat.amphora_id}: sent {-age:.1f}s in the future, outside the "
                f"{self.window:g}s replay window (the clocks disagree)"
            )
        with self._lock:
            last = self._last_sequence.get(heartbeat.amphora_id)
            if last is not None and heartbeat.sequence <= last:
                raise HeartbeatRejected(
                    f"{heartbeat.amphora_id}: sequence {heartbeat.sequence} is not greater than "
                    f"{last}, the last accepted (replayed or duplicated)"
                )
            self._last_sequence[heartbeat.amphora_id] = heartbeat.sequence


class HeartbeatVerifier:
    """Everything a receiver checks: :func:`decode`, then the :class:`ReplayGuard`."""

    def __init__(
        self,
        key: str | bytes,
        *,
        replay_window: float,
        max_bytes: int = MAX_HEARTBEAT_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.key = key_bytes(key)
        self.max_bytes = max_bytes
        self.clock = clock
        self.guard = ReplayGuard(replay_window)

    def verify(self, datagram: bytes) -> Heartbeat:
        """The heartbeat ``datagram`` carries, or :class:`HeartbeatRejected` saying why not."""
        heartbeat = decode(datagram, self.key, self.max_bytes)
        self.guard.check(heartbeat, self.clock())
        return heartbeat


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """``host:port`` or ``[ipv6]:port`` as ``(host, port)``; ValueError says what is wrong."""
    host, separator, port = endpoint.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not separator or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"heartbeat endpoint {endpoint!r} is not host:port")
    return host, int(port)


def first_sequence(clock: Callable[[], float] = time.time) -> int:
    """Where a sender's counter starts: milliseconds since the epoch.

    A restarted agent thus starts above every sequence it sent before (it sends far fewer than
    one heartbeat a millisecond), without keeping the counter on disk.
    """
    return int(clock() * 1000)
