"""A keramos-worker process consuming casts from the real RabbitMQ."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import oslo_messaging

from keramos.framework.records import TaskState
from tests.functional.conftest import BIN

AMPHORA = {"amphora_id": "rabbit-amp-1", "image_id": "img"}


def test_a_cast_reaches_the_worker_and_cast_wait_reports_success(worker_process):
    worker = worker_process()
    done = worker.cli("cast", "create_amphora", "--payload", json.dumps(AMPHORA), "--wait")
    assert done.returncode == 0, done.stderr + worker.log()
    request_id, _progress = done.stdout.split("\n", 1)
    record = json.loads(done.stdout[done.stdout.index("\n{") :])
    assert record["request_id"] == request_id
    assert record["state"] == TaskState.SUCCESS
    assert record["result"]["amphora"]["status"] == "READY"
    status = worker.cli("status", request_id)
    assert status.returncode == 0
    assert json.loads(status.stdout)["state"] == TaskState.SUCCESS


def test_a_failing_flow_reports_failure_with_its_error_and_the_state_store_shows_it(worker_process):
    worker = worker_process()
    payload = json.dumps(AMPHORA)
    assert worker.cli("cast", "create_amphora", "--payload", payload, "--wait").returncode == 0
    failed = worker.cli("cast", "create_amphora", "--payload", payload, "--wait")
    assert failed.returncode == 1
    assert "KeramosError: amphora rabbit-amp-1 already exists (READY)" in failed.stderr
    request_id = failed.stdout.split("\n", 1)[0]
    record = json.loads(worker.cli("status", request_id).stdout)
    assert record["state"] == TaskState.FAILURE
    assert record["message"] == "amphora rabbit-amp-1 already exists (READY)"


def test_bad_casts_are_reported_and_the_worker_keeps_serving(worker_process):
    worker = worker_process()
    with worker.client() as client:
        bad = {
            client.cast("create_amphora", {"amphora_id": 12, "image_id": "i"}): "PayloadError",
            client.cast("create_amphora", {"image_id": "i"}): "PayloadError",
            client.cast("launch_rocket", {}): "UnknownEvent",
            client.cast("create_amphora", dict(AMPHORA), version="2.0"): "IncompatibleVersion",
        }
        for request_id, error_type in bad.items():
            deadline = time.monotonic() + 30
            while (record := client.status(request_id)) is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert record["state"] == TaskState.FAILURE
            assert record["error_type"] == error_type
        good = client.wait(client.create_amphora("rabbit-amp-2", "img"), timeout=60)
        assert good["state"] == TaskState.SUCCESS
    assert worker.process.poll() is None


def test_flow_events_are_published_as_notifications(worker_process, rabbit_url):
    worker = worker_process()
    conf = worker.conf()
    transport = oslo_messaging.get_notification_transport(conf)
    received = []

    class Endpoint:
        def info(self, ctxt, publisher_id, event_type, payload, metadata):
            received.append((event_type, payload))

        def error(self, ctxt, publisher_id, event_type, payload, metadata):
            received.append((event_type, payload))

    topic = conf.oslo_messaging_notifications.topics[0]
    listener = oslo_messaging.get_notification_listener(
        transport, [oslo_messaging.Target(topic=topic)], [Endpoint()], executor="threading"
    )
    listener.start()
    try:
        with worker.client() as client:
            request_id = client.create_amphora("rabbit-amp-3", "img")
            client.wait(request_id, timeout=60)
            deadline = time.monotonic() + 30
            while len(received) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        listener.stop()
        listener.wait()
        transport.cleanup()
    assert [event for event, _ in received] == [
        "keramos.create_amphora.start",
        "keramos.create_amphora.end",
    ]
    assert received[1][1]["request_id"] == request_id
    assert received[1][1]["resource_id"] == "rabbit-amp-3"


def test_two_worker_processes_share_the_topic(worker_process):
    worker = worker_process({"worker": {"workers": 2}})
    with worker.client() as client:
        request_ids = [client.create_amphora(f"multi-{n}", "img") for n in range(10)]
        for request_id in request_ids:
            assert client.wait(request_id, timeout=60)["state"] == TaskState.SUCCESS


def test_a_driver_that_does_not_exist_stops_the_worker_at_start_with_one_clear_line(
    worker_process,
):
    worker = worker_process({"drivers": {"compute": "nowhere"}}, ready=False)
    assert worker.process.wait(60) == 2
    assert "keramos.compute: entry point 'nowhere': no such entry point is installed" in worker.log()


def test_sigterm_stops_the_worker_cleanly(worker_process):
    worker = worker_process()
    assert worker.stop(signal.SIGTERM) == 0


def test_the_worker_help_says_what_it_does():
    shown = subprocess.run([str(BIN / "keramos-worker"), "--help"], capture_output=True, text=True)
    assert shown.returncode == 0
    assert "Consume Keramos casts" in shown.stdout
