"""What an operator sees when the configuration or the broker is wrong: the real console
scripts, run as programs, print one line on stderr and exit non-zero, in bounded time, and no
dependency's deprecation warning."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import unused_port

BIN = Path(sys.executable).parent
KERAMOS = str(BIN / "keramos")
WORKER = str(BIN / "keramos-worker")

#: One invocation of every command group that reads the configuration.
COMMANDS = [
    ["amphora", "list"],
    ["amphora", "show", "amp-1"],
    ["run", "create_amphora"],
    ["cast", "create_amphora"],
    ["status", "req-1"],
    ["image", "verify", "img-1"],
    ["cert", "list"],
    ["jobs", "list"],
    ["drivers"],
    ["demo", "--no-amphorae"],
]


def run(*argv: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    return done, time.monotonic() - started


def write_config(tmp_path: Path, defaults: str, sections: str = "") -> Path:
    """``keramos.conf`` in ``tmp_path``: state there, the given [DEFAULT] lines, then sections."""
    config = tmp_path / "keramos.conf"
    config.write_text(f"[DEFAULT]\nstate_path = {tmp_path}\n{defaults}{sections}")
    return config


def assert_one_line_error(done: subprocess.CompletedProcess, *expected: str) -> str:
    assert done.returncode != 0, done.stdout + done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda argv: " ".join(argv))
def test_a_missing_config_file_is_one_line_naming_it(tmp_path, command):
    missing = tmp_path / "missing.conf"
    done, _ = run(KERAMOS, "--config-file", str(missing), *command)
    line = assert_one_line_error(done, str(missing))
    assert line.startswith(f"keramos {command[0]}: configuration error:")


@pytest.mark.parametrize("command", [["amphora", "list"], ["run", "create_amphora"], ["drivers"]])
def test_a_config_file_that_does_not_parse_is_one_line_naming_where(tmp_path, command):
    broken = tmp_path / "broken.conf"
    broken.write_text("[drivers\ncompute = noop\n")
    done, _ = run(KERAMOS, "--config-file", str(broken), *command)
    assert_one_line_error(done, f"{broken}:1", "[drivers")


def test_an_invalid_option_value_stops_the_cli_before_it_does_anything(tmp_path):
    config = write_config(tmp_path, "", "[amphora]\ncertificate_mode = bogus\n")
    done, _ = run(KERAMOS, "--config-file", str(config), "amphora", "list")
    assert_one_line_error(done, "[amphora] certificate_mode", "'bogus'", "controller, csr")
    assert done.stdout == ""


def test_an_invalid_option_value_stops_the_worker_at_start(tmp_path):
    config = write_config(tmp_path, "transport_url = fake://\n", "[amphora]\ncertificate_mode = bogus\n")
    done, _ = run(WORKER, "--config-file", str(config), timeout=60)
    assert_one_line_error(done, "keramos-worker", "[amphora] certificate_mode", "'bogus'")


def closed_broker_config(tmp_path: Path) -> tuple[Path, int]:
    port = unused_port()
    return write_config(tmp_path, f"transport_url = rabbit://guest:guest@127.0.0.1:{port}/\n"), port


@pytest.fixture(scope="module")
def start_margin() -> float:
    """Seconds a command may take beyond its stated timeout: twice what starting Python and
    loading the whole command takes on this machine now (``keramos --version``), plus two."""
    done, elapsed = run(KERAMOS, "--version")
    assert done.returncode == 0
    return 2 * elapsed + 2.0


@pytest.mark.parametrize(
    "command, stated",
    [
        (["cast", "create_amphora", "--connect-timeout", "2"], 2.0),
        (["cast", "create_amphora", "--wait", "--connect-timeout", "2"], 2.0),
        (["status", "req-1", "--timeout", "3"], 3.0),
    ],
    ids=["cast", "cast --wait", "status"],
)
def test_an_unreachable_broker_fails_within_the_stated_timeout_naming_it(
    tmp_path, start_margin, command, stated
):
    config, port = closed_broker_config(tmp_path)
    done, elapsed = run(KERAMOS, "--config-file", str(config), *command, timeout=60)
    assert_one_line_error(done, f"RabbitMQ at 127.0.0.1:{port}", f"within {stated:g}s")
    assert stated <= elapsed < stated + start_margin


def test_cast_waits_ten_seconds_for_the_broker_by_default():
    from keramos.framework.cli import build_parser

    args = build_parser().parse_args(["cast", "create_amphora"])
    assert args.connect_timeout == 10.0


def test_the_worker_help_prints_no_warning():
    done, _ = run(WORKER, "--help")
    assert done.returncode == 0
    assert done.stderr == ""


def test_importing_keramos_raises_no_deprecation_warning_even_when_they_are_errors():
    modules = (
        "keramos.framework.service, keramos.framework.cli, keramos.framework.testing, "
        "keramos.plugins.agent.main, keramos.plugins.health.manager"
    )
    done, _ = run(
        sys.executable, "-W", "error::DeprecationWarning", "-W", "error::Warning",
        "-c", f"import {modules}",
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


def test_a_worker_start_prints_no_deprecation_warning(tmp_path):
    config = write_config(
        tmp_path, "transport_url = fake://\n", "[worker]\ngraceful_shutdown_timeout = 1\n"
    )
    worker = subprocess.Popen(
        [WORKER, "--config-file", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        time.sleep(6)
    finally:
        worker.terminate()
        output, _ = worker.communicate(timeout=60)
    assert "Starting" in output or "keramos" in output, output
    assert "Warning" not in output, output
    assert "deprecated" not in output.lower(), output


def test_a_plugin_authors_pytest_run_with_the_keramos_worker_fixture_shows_no_warning(tmp_path):
    (tmp_path / "test_my_plugin.py").write_text(
        textwrap.dedent(
            """
            def test_create(keramos_worker):
                worker = keramos_worker(
                    conf_overrides={"amphora": {"require_signed_images": False}}
                )
                request_id = worker.client.create_amphora("amp-1", image_id="img")
                assert worker.client.wait(request_id, timeout=30)["state"] == "success"
            """
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rw", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    summary = done.stdout.strip().splitlines()[-1]
    assert "1 passed" in summary and "warning" not in summary, done.stdout
