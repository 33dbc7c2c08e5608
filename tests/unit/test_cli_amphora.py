"""``keramos amphora list|show``: what operators read of the amphorae in the state store."""

from __future__ import annotations

import datetime as dt
import json

from keramos.framework.config import make_conf
from keramos.framework.records import AmphoraRecord, AmphoraStatus, utcnow
from keramos.plugins.state_store.sqlalchemy import SQLAlchemyStateStore
from tests.unit.test_cli import run_cli


def record_amphorae(state_path) -> None:
    store = SQLAlchemyStateStore(make_conf(config_files=[], overrides={"DEFAULT": {"state_path": str(state_path)}}))
    try:
        store.save(AmphoraRecord("amp-ready", status=AmphoraStatus.READY, address="192.0.2.5", agent_port=9443,
                                 cert_serial="0a1b", last_heartbeat_at=utcnow() - dt.timedelta(seconds=5)))
        store.save(AmphoraRecord("amp-broken", status=AmphoraStatus.ERROR, error="boot_amphora: no capacity",
                                 activation_token_hash="ab" * 32))
        store.save(AmphoraRecord("amp-gone", status=AmphoraStatus.DELETED))
    finally:
        store.close()


def test_list_shows_live_amphorae_with_agent_certificate_heartbeat_age_and_error(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "amphora", "list", state_path=tmp_path)
    assert (code, out) == (0, "no amphorae recorded\n")
    record_amphorae(tmp_path)
    code, out, _ = run_cli(capsys, "amphora", "list", state_path=tmp_path)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["AMPHORA", "STATUS", "AGENT", "CERTIFICATE", "HEARTBEAT", "ERROR"]
    ready = lines[1].split()
    assert ready[:4] == ["amp-ready", "READY", "192.0.2.5:9443", "0a1b"]
    assert 4 <= int(ready[4].rstrip("s")) <= 60
    assert lines[2].split()[:5] == ["amp-broken", "ERROR", "-", "-", "-"]
    assert lines[2].endswith("boot_amphora: no capacity")
    assert "amp-gone" not in out

    _, out, _ = run_cli(capsys, "amphora", "list", "--all", state_path=tmp_path)
    assert "amp-gone" in out
    _, out, _ = run_cli(capsys, "amphora", "list", "--status", "error", state_path=tmp_path)
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["amp-broken"]


def test_show_prints_the_record_without_the_token_hash_and_refuses_an_unknown_id(capsys, tmp_path):
    record_amphorae(tmp_path)
    code, out, _ = run_cli(capsys, "amphora", "show", "amp-broken", state_path=tmp_path)
    assert code == 0
    document = json.loads(out)
    assert document["status"] == "ERROR" and document["activation_token_unused"] is True
    assert "activation_token_hash" not in document and "ab" * 32 not in out
    code, _, err = run_cli(capsys, "amphora", "show", "amp-nowhere", state_path=tmp_path)
    assert code == 1
    assert "no amphora amp-nowhere" in err


def test_an_amphora_behind_a_proxy_shows_its_network_and_proxy(capsys, tmp_path):
    store = SQLAlchemyStateStore(make_conf(config_files=[], overrides={"DEFAULT": {"state_path": str(tmp_path)}}))
    try:
        store.save(AmphoraRecord("amp-far", status=AmphoraStatus.READY, address="10.9.0.2", agent_port=9443,
                                 proxy="192.0.2.9:9444", network_id="tenant-a"))
        store.save(AmphoraRecord("amp-near", status=AmphoraStatus.READY, address="192.0.2.5", agent_port=9443))
    finally:
        store.close()
    _, out, _ = run_cli(capsys, "amphora", "list", state_path=tmp_path)
    assert "10.9.0.2:9443 in tenant-a via 192.0.2.9:9444" in out
    _, out, _ = run_cli(capsys, "amphora", "show", "amp-far", state_path=tmp_path)
    document = json.loads(out)
    assert (document["proxy"], document["network_id"]) == ("192.0.2.9:9444", "tenant-a")
    assert document["route"] == "10.9.0.2:9443 in tenant-a via 192.0.2.9:9444"
    _, out, _ = run_cli(capsys, "amphora", "show", "amp-near", state_path=tmp_path)
    assert json.loads(out)["route"] == "direct"


def test_list_shows_an_address_without_a_port_and_cuts_long_errors_between_words(capsys, tmp_path):
    error = "boot_amphora: the compute service refused the request because the project quota is exhausted"
    store = SQLAlchemyStateStore(make_conf(config_files=[], overrides={"DEFAULT": {"state_path": str(tmp_path)}}))
    try:
        store.save(AmphoraRecord("amp-portless", status=AmphoraStatus.BOOTING, address="192.0.2.7"))
        store.save(AmphoraRecord("amp-verbose", status=AmphoraStatus.ERROR, error=error))
    finally:
        store.close()
    _, out, _ = run_cli(capsys, "amphora", "list", state_path=tmp_path)
    portless = next(line for line in out.splitlines() if line.startswith("amp-portless"))
    assert portless.split()[2] == "192.0.2.7"
    assert "None" not in out
    verbose = next(line for line in out.splitlines() if line.startswith("amp-verbose"))
    shown = verbose[verbose.index("boot_amphora") :]
    assert shown.endswith("…") and len(shown) <= 60
    assert error.startswith(shown[:-1].rstrip() + " ")
