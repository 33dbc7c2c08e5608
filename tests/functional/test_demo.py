"""The README's one command, as a newcomer runs it: ``keramos demo``, both parts, real agents."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.functional.agent_helpers import require_haproxy


def agent_processes() -> set[int]:
    """Process ids of running keramos agents (``python -m keramos.plugins.agent.main``)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                if b"keramos.plugins.agent.main" in cmdline.read():
                    found.add(int(entry))
        except OSError:
            continue
    return found


#: The longest line the demo may print: a terminal's width twice and a half.
MAX_LINE = 200


def assert_clean_output(output: str) -> None:
    """No line an operator must scroll sideways to read, no HTTP library's raw retry message."""
    long_lines = [line for line in output.splitlines() if len(line) > MAX_LINE]
    assert long_lines == [], "\n".join(long_lines)
    assert "urllib3" not in output and "Max retries exceeded" not in output
    assert "Warning" not in output


def test_keramos_demo_without_amphorae_prints_short_clean_lines():
    completed = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "keramos"), "demo", "--no-amphorae"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert completed.stderr == ""
    assert_clean_output(completed.stdout)


def test_keramos_demo_boots_amphorae_serves_traffic_fails_one_over_and_cleans_up():
    require_haproxy()
    before = agent_processes()
    completed = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "keramos"), "demo"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    out = completed.stdout
    assert completed.returncode == 0, out + completed.stderr
    for expected in (
        "[6] real amphorae",
        "validate_signing_certificate",
        "amp-a is READY: agent at https://127.0.0.1:",
        "activation token spent: True",
        "amp-b is READY",
        "both amphorae run configuration version 1",
        "20 answered by the backend",
        "killed processes",
        "casts failover_amphora",
        "is READY, amp-a is DELETED",
        "amphorae READY: 0; agent processes left: 0",
        "demo finished",
    ):
        assert expected in out, f"{expected!r} missing from:\n{out}\n{completed.stderr}"
    traffic = [line for line in out.splitlines() if "20 requests to the load balancer" in line]
    assert len(traffic) == 3 and all("20 answered by the backend" in line for line in traffic), out
    assert agent_processes() - before == set()
    assert_clean_output(out + completed.stderr)
    killed_line = next(line for line in out.splitlines() if "killed processes" in line)
    killed = [int(pid) for pid in killed_line.split("killed processes ")[1].split(";")[0].split(", ")]
    assert len(killed) >= 2, killed_line  # the agent and its HAProxy
    assert not [pid for pid in killed if os.path.exists(f"/proc/{pid}")], killed_line
