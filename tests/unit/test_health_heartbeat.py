"""Heartbeats: signing and every refusal (tampering, wrong key, replay, size), and the sender."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket

import pytest

from keramos.framework.agent_protocol import heartbeat as hb
from keramos.framework.agent_protocol.heartbeat import Heartbeat, HeartbeatRejected, HeartbeatVerifier
from keramos.plugins.agent import main as agent_main
from keramos.plugins.agent.heartbeat_sender import HeartbeatSender, sender_from_settings

KEY = "heartbeat-key-for-tests"
NOW = 1_800_000_000.0


def beat(sequence: int = 1, sent_at: float = NOW, **versions: int) -> Heartbeat:
    return Heartbeat("amp-1", sequence, sent_at, versions or {"lb-1": 3})


def verifier(window: float = 30.0, max_bytes: int = hb.MAX_HEARTBEAT_BYTES) -> HeartbeatVerifier:
    return HeartbeatVerifier(KEY, replay_window=window, max_bytes=max_bytes, clock=lambda: NOW)


def signed(body: bytes, key: str = KEY) -> bytes:
    """A datagram of the right format whose body is anything, correctly signed."""
    message = hb.MAGIC + body
    return message + hmac.new(key.encode(), message, hashlib.sha256).digest()


def test_a_signed_heartbeat_verifies_and_carries_its_fields():
    received = verifier().verify(hb.encode(beat(7, **{"lb-1": 3, "lb-2": 9}), KEY))
    assert received == Heartbeat("amp-1", 7, NOW, {"lb-1": 3, "lb-2": 9})


def test_the_datagram_is_json_signed_with_hmac_sha256():
    datagram = hb.encode(beat(), KEY)
    body, digest = datagram[len(hb.MAGIC):-32], datagram[-32:]
    assert datagram.startswith(b"KHB1")
    assert json.loads(body)["amphora_id"] == "amp-1"
    assert digest == hmac.new(KEY.encode(), datagram[:-32], hashlib.sha256).digest()


@pytest.mark.parametrize("position", [0, 5, -40, -1])
def test_a_tampered_datagram_is_refused(position):
    datagram = bytearray(hb.encode(beat(), KEY))
    datagram[position] ^= 0x01
    with pytest.raises(HeartbeatRejected, match="bad signature|unknown format"):
        verifier().verify(bytes(datagram))


def test_a_changed_version_is_refused_even_with_valid_json():
    datagram = hb.encode(beat(**{"lb-1": 3}), KEY)
    forged = datagram.replace(b'"lb-1":3', b'"lb-1":9')
    assert forged != datagram
    with pytest.raises(HeartbeatRejected, match="bad signature"):
        verifier().verify(forged)


def test_a_heartbeat_signed_with_another_key_is_refused():
    with pytest.raises(HeartbeatRejected, match="bad signature: tampered, or signed with another key"):
        verifier().verify(hb.encode(beat(), "another-key"))


def test_the_same_sequence_twice_is_refused_as_a_replay():
    check = verifier()
    datagram = hb.encode(beat(5), KEY)
    check.verify(datagram)
    with pytest.raises(HeartbeatRejected, match="sequence 5 is not greater than 5"):
        check.verify(datagram)
    with pytest.raises(HeartbeatRejected, match="sequence 4 is not greater than 5"):
        check.verify(hb.encode(beat(4), KEY))
    assert check.verify(hb.encode(beat(6), KEY)).sequence == 6


def test_sequences_are_tracked_per_amphora():
    check = verifier()
    check.verify(hb.encode(beat(5), KEY))
    other = Heartbeat("amp-2", 1, NOW, {})
    assert check.verify(hb.encode(other, KEY)).amphora_id == "amp-2"


def test_an_old_heartbeat_is_refused_and_does_not_advance_the_sequence():
    check = verifier(window=30)
    with pytest.raises(HeartbeatRejected, match=r"sent 31.0s ago, outside the 30s replay window"):
        check.verify(hb.encode(beat(9, sent_at=NOW - 31), KEY))
    assert check.verify(hb.encode(beat(2, sent_at=NOW - 29), KEY)).sequence == 2


def test_a_heartbeat_from_the_future_is_refused():
    with pytest.raises(HeartbeatRejected, match="in the future"):
        verifier(window=30).verify(hb.encode(beat(sent_at=NOW + 31), KEY))


def test_an_oversized_datagram_is_refused_before_anything_else():
    with pytest.raises(HeartbeatRejected, match="exceeds 600 bytes"):
        verifier(max_bytes=600).verify(hb.encode(beat(**{f"lb-{n}": n for n in range(60)}), KEY))


def test_the_sender_refuses_to_build_an_oversized_datagram():
    with pytest.raises(ValueError, match="exceeds the 600-byte limit"):
        hb.encode(beat(**{f"lb-{n}": n for n in range(60)}), KEY, max_bytes=600)


@pytest.mark.parametrize(
    "datagram, reason",
    [
        (b"", "too short"),
        (b"KHB1{}", "too short"),
        (b"XXXX" + b"{}" + bytes(32), "unknown format"),
        (b"KHB1" + b"{}" + bytes(32), "bad signature"),
    ],
)
def test_garbage_is_refused_with_a_reason(datagram, reason):
    with pytest.raises(HeartbeatRejected, match=reason):
        verifier().verify(datagram)


@pytest.mark.parametrize(
    "body, reason",
    [
        (b"not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"amphora_id": "amp-1"}', "differ from the expected"),
        (
            b'{"amphora_id": "../etc", "sequence": 1, "sent_at": 1, "config_versions": {}}',
            "not an identifier",
        ),
        (
            b'{"amphora_id": "amp-1", "sequence": -1, "sent_at": 1, "config_versions": {}}',
            "sequence -1",
        ),
        (
            b'{"amphora_id": "amp-1", "sequence": true, "sent_at": 1, "config_versions": {}}',
            "sequence True",
        ),
        (
            b'{"amphora_id": "amp-1", "sequence": 1, "sent_at": "now", "config_versions": {}}',
            "sent_at 'now'",
        ),
        (
            b'{"amphora_id": "amp-1", "sequence": 1, "sent_at": 1, "config_versions": {"lb": "3"}}',
            "config_versions",
        ),
        (
            b'{"amphora_id": "amp-1", "sequence": 1, "sent_at": 1, "config_versions": [3]}',
            "config_versions",
        ),
    ],
)
def test_a_signed_but_malformed_body_is_refused_with_a_reason(body, reason):
    with pytest.raises(HeartbeatRejected, match=reason):
        verifier().verify(signed(body))


def test_an_empty_key_is_refused():
    with pytest.raises(ValueError, match="empty"):
        HeartbeatVerifier("", replay_window=30)


@pytest.mark.parametrize(
    "endpoint, expected",
    [("127.0.0.1:5555", ("127.0.0.1", 5555)), ("[::1]:5555", ("::1", 5555)), (" ctl:1 ", ("ctl", 1))],
)
def test_endpoints_are_parsed(endpoint, expected):
    assert hb.parse_endpoint(endpoint) == expected


@pytest.mark.parametrize("endpoint", ["127.0.0.1", ":5555", "host:0", "host:70000", "host:port"])
def test_a_bad_endpoint_is_refused(endpoint):
    with pytest.raises(ValueError, match="is not host:port"):
        hb.parse_endpoint(endpoint)


@pytest.fixture
def udp_receiver():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        yield sock


def test_the_sender_sends_one_signed_beat_to_every_endpoint_with_a_growing_sequence(udp_receiver):
    port = udp_receiver.getsockname()[1]
    sender = HeartbeatSender(
        "amp-1", [f"127.0.0.1:{port}", f"127.0.0.1:{port}"], KEY, 10, lambda: {"lb-1": 4},
        clock=lambda: NOW,
    )
    assert sender.send_once() == 2
    first = verifier().verify(udp_receiver.recv(65536))
    second = hb.decode(udp_receiver.recv(65536), KEY)
    assert first == second == Heartbeat("amp-1", int(NOW * 1000) + 1, NOW, {"lb-1": 4})
    sender.send_once()
    assert hb.decode(udp_receiver.recv(65536), KEY).sequence == first.sequence + 1


def test_a_restarted_sender_starts_above_its_previous_sequences():
    before = HeartbeatSender("amp-1", [], KEY, 10, dict, clock=lambda: NOW)
    for _ in range(1000):
        before.sequence += 1
    after = HeartbeatSender("amp-1", [], KEY, 10, dict, clock=lambda: NOW + 2)
    assert after.sequence > before.sequence


def test_the_sender_keeps_beating_when_the_versions_cannot_be_read(udp_receiver):
    def broken() -> dict[str, int]:
        raise OSError("state directory gone")

    port = udp_receiver.getsockname()[1]
    sender = HeartbeatSender("amp-1", [f"127.0.0.1:{port}"], KEY, 10, broken, clock=lambda: NOW)
    assert sender.send_once() == 1
    assert hb.decode(udp_receiver.recv(65536), KEY).config_versions == {}


def test_an_unreachable_endpoint_does_not_stop_the_others(udp_receiver):
    port = udp_receiver.getsockname()[1]
    sender = HeartbeatSender(
        "amp-1", ["nowhere.invalid:5555", f"127.0.0.1:{port}"], KEY, 10, dict, clock=lambda: NOW
    )
    assert sender.send_once() == 1
    assert hb.decode(udp_receiver.recv(65536), KEY).amphora_id == "amp-1"


def test_the_sender_thread_beats_until_stopped(udp_receiver):
    port = udp_receiver.getsockname()[1]
    sender = HeartbeatSender("amp-1", [f"127.0.0.1:{port}"], KEY, 0.01, dict).start()
    try:
        sequences = [hb.decode(udp_receiver.recv(65536), KEY).sequence for _ in range(3)]
    finally:
        sender.stop()
    assert sequences == sorted(set(sequences))


@pytest.mark.parametrize("endpoints, key", [([], KEY), (["127.0.0.1:5555"], None), (["127.0.0.1:5555"], "")])
def test_no_sender_without_endpoints_or_key(tmp_path, endpoints, key):
    assert sender_from_settings("amp-1", endpoints, key, 10, str(tmp_path)) is None


def test_a_configured_sender_needs_an_amphora_id(tmp_path):
    with pytest.raises(ValueError, match="amphora_id"):
        sender_from_settings(None, ["127.0.0.1:5555"], KEY, 10, str(tmp_path))


def test_the_sender_reports_running_versions_from_the_agent_state(tmp_path):
    sender = sender_from_settings("amp-1", ["127.0.0.1:5555"], KEY, 10, str(tmp_path))
    assert sender is not None and sender.versions() == {}
    lb_dir = tmp_path / "loadbalancers" / "lb-1"
    lb_dir.mkdir(parents=True)
    (lb_dir / "state.json").write_text(json.dumps({"config_version": 4, "running_version": 3}))
    # No HAProxy process runs for lb-1 here: its running version is reported as 0.
    assert sender.versions() == {"lb-1": 0}


def agent_options(tmp_path, **options: str) -> dict:
    path = tmp_path / "agent.conf"
    settings = {
        "server_cert": "/s.pem",
        "client_ca": "/c.pem",
        "state_dir": str(tmp_path / "state"),
        "amphora_id": "amp-1",
        **options,
    }
    path.write_text("[amphora_agent]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))
    conf, config_file = agent_main.build_conf(["--config-file", str(path)])
    return agent_main.AgentApplication(conf, config_file).gunicorn_options()


def test_the_agent_starts_heartbeats_when_its_server_is_ready(tmp_path, udp_receiver):
    port = udp_receiver.getsockname()[1]
    options = agent_options(
        tmp_path, controller_heartbeat_endpoints=f"127.0.0.1:{port}", heartbeat_key=KEY,
        heartbeat_interval="0.05",
    )
    options["when_ready"](None)
    try:
        assert hb.decode(udp_receiver.recv(65536), KEY).amphora_id == "amp-1"
    finally:
        options["on_exit"](None)


def test_an_agent_with_a_bad_heartbeat_endpoint_refuses_to_start(tmp_path):
    with pytest.raises(SystemExit, match="is not host:port"):
        agent_options(tmp_path, controller_heartbeat_endpoints="controller", heartbeat_key=KEY)
