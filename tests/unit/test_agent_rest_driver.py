"""The rest amphora driver's retries, error mapping and sessions, against a scripted adapter."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
import requests
from requests.adapters import HTTPAdapter
from urllib3 import HTTPResponse

from keramos.framework.config import make_conf
from keramos.framework.contracts import AmphoraEndpoint
from keramos.framework.errors import AlreadyActivated, ConfigError, DriverError, Timeout
from keramos.plugins.amphora_rest import AgentError, AmphoraIdAdapter, RestAmphoraDriver, list_opts
from tests.conftest import unused_port

ENDPOINT = AmphoraEndpoint("amp-1", "127.0.0.1", 9443)


class ScriptedAdapter(HTTPAdapter):
    """Answers each request with the next scripted outcome: an exception or (status, body)."""

    def __init__(self, outcomes: list[Any]) -> None:
        super().__init__()
        self.outcomes = list(outcomes)
        self.requests: list[requests.PreparedRequest] = []

    def send(self, request, **kwargs):  # noqa: D102 (HTTPAdapter's method)
        self.requests.append(request)
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        status, body = outcome
        if isinstance(body, (dict, list)):
            data, content_type = json.dumps(body).encode(), "application/json"
        else:
            data, content_type = body, "text/html"
        raw = HTTPResponse(
            body=io.BytesIO(data),
            status=status,
            headers={"Content-Type": content_type},
            preload_content=False,
        )
        return self.build_response(request, raw)


@pytest.fixture
def driver(tmp_path) -> RestAmphoraDriver:
    made = make_driver(tmp_path)
    yield made
    made.close()


def make_driver(tmp_path) -> RestAmphoraDriver:
    """A rest driver with placeholder certificate files, no retry backoff and two retries."""
    for name in ("client.pem", "ca.pem"):
        (tmp_path / name).write_text("placeholder\n")
    conf = make_conf([], config_files=[])
    for group, opts in list_opts():
        conf.register_opts(opts, group=group)
    conf.set_override("controller_client_cert", str(tmp_path / "client.pem"), group="amphora_rest")
    conf.set_override("server_ca", str(tmp_path / "ca.pem"), group="amphora_rest")
    conf.set_override("backoff", 0.0, group="amphora_rest")
    conf.set_override("retries", 2, group="amphora_rest")
    return RestAmphoraDriver(conf)


def script(driver: RestAmphoraDriver, *outcomes: Any) -> ScriptedAdapter:
    adapter = ScriptedAdapter(list(outcomes))
    driver.session(ENDPOINT).mount("https://", adapter)
    return adapter


def test_missing_or_unreadable_files_are_a_config_error(tmp_path):
    conf = make_conf([], config_files=[])
    with pytest.raises(ConfigError, match="controller_client_cert must be set"):
        RestAmphoraDriver(conf)
    conf.set_override("controller_client_cert", str(tmp_path / "absent.pem"), group="amphora_rest")
    with pytest.raises(ConfigError, match="cannot read"):
        RestAmphoraDriver(conf)


def test_connection_errors_are_retried_then_succeed(driver):
    adapter = script(
        driver,
        requests.ConnectionError("refused"),
        requests.ConnectTimeout("slow"),
        (200, {"api_version": "1.0"}),
    )
    assert driver.get_info(ENDPOINT) == {"api_version": "1.0"}
    assert len(adapter.requests) == 3


def test_503_is_retried_and_finally_raised_retryable(driver):
    adapter = script(driver, *[(503, {"message": "busy", "details": "reloading"})] * 3)
    with pytest.raises(AgentError) as caught:
        driver.get_info(ENDPOINT)
    assert caught.value.retryable and caught.value.status == 503
    assert caught.value.agent_message == "busy" and caught.value.details == "reloading"
    assert len(adapter.requests) == 3


def test_4xx_is_not_retried_and_carries_the_agent_message(driver):
    adapter = script(driver, (409, {"message": "Stale configuration version", "details": "has 5"}))
    with pytest.raises(AgentError) as caught:
        driver.upload_config(ENDPOINT, "lb-1", "global\n", 4)
    error = caught.value
    assert isinstance(error, DriverError) and not error.retryable
    assert error.status == 409 and "Stale configuration version" in str(error) and "has 5" in str(error)
    assert len(adapter.requests) == 1


def test_tls_failures_are_not_retried(driver):
    adapter = script(driver, requests.exceptions.SSLError("certificate verify failed"))
    with pytest.raises(AgentError, match="TLS failure") as caught:
        driver.get_info(ENDPOINT)
    assert not caught.value.retryable
    assert len(adapter.requests) == 1


def test_a_non_json_404_means_not_up_yet_and_is_waited_out(driver):
    adapter = script(driver, (404, b"<html>nothing</html>"), (200, {"amphora_id": "amp-1"}))
    assert driver.wait_until_reachable(ENDPOINT, timeout=5) == {"amphora_id": "amp-1"}
    assert len(adapter.requests) == 2


def test_a_json_404_is_a_real_answer(driver):
    script(driver, (404, {"message": "Loadbalancer Not Found", "details": "lb-1"}))
    with pytest.raises(AgentError) as caught:
        driver.get_config(ENDPOINT, "lb-1")
    assert caught.value.status == 404 and not caught.value.retryable


def test_waiting_gives_up_with_a_timeout(driver):
    script(driver, *[requests.ConnectionError("refused")] * 50)
    with pytest.raises(Timeout, match="amp-1 not reachable"):
        driver.wait_until_reachable(ENDPOINT, timeout=0.2)


def test_upload_sends_the_version_then_reloads(driver):
    adapter = script(driver, (202, {"message": "OK"}), (202, {"message": "OK", "details": "reloaded"}))
    driver.upload_config(ENDPOINT, "lb-1", "global\n", 7)
    put, reload = adapter.requests
    assert (put.method, put.path_url) == ("PUT", "/1.0/loadbalancer/amp-1/lb-1/haproxy")
    assert put.headers["X-Config-Version"] == "7" and put.body == b"global\n"
    assert (reload.method, reload.path_url) == ("PUT", "/1.0/loadbalancer/lb-1/reload")


def test_one_kept_alive_session_per_amphora_checking_its_id(driver):
    session = driver.session(ENDPOINT)
    assert driver.session(ENDPOINT) is session
    other = driver.session(AmphoraEndpoint("amp-2", "127.0.0.1", 9444))
    assert other is not session
    adapter = other.get_adapter("https://127.0.0.1:9444/")
    assert isinstance(adapter, AmphoraIdAdapter)
    assert adapter.poolmanager.connection_pool_kw["assert_hostname"] == "amp-2"
    assert session.verify == driver.server_ca and not session.trust_env


def test_activation_returns_the_token_the_agent_hands_over(driver):
    adapter = script(driver, (200, {"amphora_id": "amp-1", "activation_token": "t0k"}))
    assert driver.activate(ENDPOINT) == "t0k"
    (request,) = adapter.requests
    assert (request.method, request.path_url) == ("POST", "/1.0/activate")


def test_a_second_activation_is_a_410_not_retried_and_an_answer_without_token_is_refused(driver):
    adapter = script(driver, (410, {"message": "Gone", "details": "already activated"}))
    with pytest.raises(AgentError) as caught:
        driver.activate(ENDPOINT)
    assert caught.value.status == 410 and not caught.value.retryable
    assert isinstance(caught.value, AlreadyActivated)
    assert len(adapter.requests) == 1
    script(driver, (200, {"amphora_id": "amp-1"}))
    with pytest.raises(AgentError, match="answer without an activation token"):
        driver.activate(ENDPOINT)


def test_an_agent_nobody_listens_for_is_one_short_line_with_the_cause(driver):
    port = unused_port()
    endpoint = AmphoraEndpoint("amp-gone", "127.0.0.1", port)
    with pytest.raises(AgentError) as caught:
        driver.get_info(endpoint)
    message = str(caught.value)
    assert message.endswith(f"unreachable at 127.0.0.1:{port}: Connection refused"), message
    assert caught.value.retryable
    assert "Max retries" not in message and "urllib3" not in message and len(message) < 120


def test_an_amphora_behind_a_proxy_needs_its_network_the_route_key_and_the_proxy_files(driver, tmp_path):
    behind = AmphoraEndpoint("amp-far", "10.9.0.2", 9443, proxy="192.0.2.9:9444")
    with pytest.raises(ConfigError, match="reached through proxy 192.0.2.9:9444 but its record names no network"):
        driver.session(behind)
    behind = AmphoraEndpoint("amp-far", "10.9.0.2", 9443, proxy="192.0.2.9:9444", network_id="tenant-a")
    with pytest.raises(ConfigError, match=r"\[amphora_rest\] proxy_route_key must be set"):
        driver.session(behind)
    driver.conf.set_override("proxy_route_key", "key", group="amphora_rest")
    with pytest.raises(ConfigError, match=r"\[amphora_rest\] proxy_ca must be set"):
        driver.session(behind)
    assert driver.session(AmphoraEndpoint("amp-near", "192.0.2.5", 9443)).proxies == {}
