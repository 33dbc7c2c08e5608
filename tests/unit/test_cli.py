"""The keramos command: help, exit codes and output users rely on."""

from __future__ import annotations

import json
import logging
import re
import shutil

import pytest

from keramos.framework.cli import COMMAND_MODULES, main


def run_cli(capsys, *argv, state_path=None):
    args = list(argv)
    if state_path is not None:
        conf = state_path / "keramos.conf"
        conf.write_text(
            f"[DEFAULT]\nstate_path = {state_path}\n[amphora]\nrequire_signed_images = false\n"
        )
        args = ["--config-file", str(conf), *args]
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("command", COMMAND_MODULES)
def test_every_command_has_help(capsys, command):
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: keramos {command}" in out
    assert len(out.splitlines()) > 3


def test_drivers_lists_groups_entry_points_and_distributions_as_json(capsys):
    code, out, _ = run_cli(capsys, "drivers", "--format", "json", "--check")
    assert code == 0
    entries = json.loads(out)
    noop = [e for e in entries if e["group"] == "keramos.compute" and e["name"] == "noop"]
    assert noop == [
        {
            "group": "keramos.compute",
            "name": "noop",
            "target": "keramos.plugins.noop:NoopCompute",
            "distribution": "keramos",
            "version": noop[0]["version"],
            "check": "ok",
        }
    ]


def test_drivers_table_keeps_its_columns_aligned_past_sixteen_characters(capsys, monkeypatch):
    from keramos.framework import loader

    entries = [
        loader.InstalledEntryPoint("keramos.compute", "a_compute_driver_with_a_long_name", "pkg.compute:Long",
                                   "keramos-long-plugin", "2.0.0"),
        loader.InstalledEntryPoint("keramos.network", "noop", "keramos.plugins.noop:NoopNetwork", "keramos", "1.0"),
    ]
    monkeypatch.setattr(loader, "installed_entry_points", lambda: entries)
    code, out, _ = run_cli(capsys, "drivers")
    assert code == 0
    rows = [line for line in out.splitlines() if line.startswith("  ") and "(none installed)" not in line]
    assert [row.split() for row in rows] == [
        ["a_compute_driver_with_a_long_name", "pkg.compute:Long", "keramos-long-plugin", "2.0.0"],
        ["noop", "keramos.plugins.noop:NoopNetwork", "keramos", "1.0"],
    ]
    starts = [[cell.start() for cell in re.finditer(r"\S+", row)] for row in rows]
    assert starts[0] == starts[1]


def test_run_prints_each_task_and_the_result(capsys, tmp_path):
    payload = json.dumps({"amphora_id": "cli-1", "image_id": "img"})
    code, out, _ = run_cli(capsys, "run", "create_amphora", "--payload", payload, state_path=tmp_path)
    assert code == 0
    assert "boot_amphora" in out and "done" in out
    result = json.loads(out[out.index("{") :])
    assert result["amphora"]["status"] == "READY"


def test_run_reads_the_store_from_a_file(capsys, tmp_path):
    store = tmp_path / "store.json"
    store.write_text(json.dumps({"amphora_id": "cli-2", "image_id": "img"}))
    code, out, _ = run_cli(
        capsys, "run", "create_amphora", "--payload", f"@{store}", "--quiet", state_path=tmp_path
    )
    assert code == 0
    assert json.loads(out)["amphora"]["amphora_id"] == "cli-2"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "create_amphora", "--payload", "{not json"], "--payload is not valid JSON"),
        (["run", "create_amphora", "--payload", "@/nonexistent.json"], "cannot read --payload"),
        (["run", "create_amphora", "--payload", '{"amphora_id": "x"}'], "missing field(s): image_id"),
        (["run", "no_such_flow"], "unknown event 'no_such_flow'"),
    ],
)
def test_bad_input_exits_non_zero_with_a_clear_message(capsys, tmp_path, argv, message):
    code, _, err = run_cli(capsys, *argv, state_path=tmp_path)
    assert code == 1
    assert message in err


def test_a_flow_failure_exits_one_and_says_it_was_reverted(capsys, tmp_path):
    payload = json.dumps({"amphora_id": "dup", "image_id": "img"})
    assert run_cli(capsys, "run", "create_amphora", "--payload", payload, state_path=tmp_path)[0] == 0
    code, _, err = run_cli(capsys, "run", "create_amphora", "--payload", payload, state_path=tmp_path)
    assert code == 1
    assert "create_amphora failed and was reverted: KeramosError: amphora dup already exists" in err


def test_demo_shows_a_cast_consumed_and_a_flow_run_step_by_step(capsys):
    keramos_logger = logging.getLogger("keramos")
    before = (list(keramos_logger.handlers), keramos_logger.level, keramos_logger.propagate)
    code, out, _ = run_cli(capsys, "demo", "--no-amphorae")
    assert (list(keramos_logger.handlers), keramos_logger.level, keramos_logger.propagate) == before
    assert code == 0
    for expected in (
        "[1] worker started",
        "transport fake://",
        "cast sent, request id req-",
        "mark_amphora_ready",
        "is READY",
        "is failure (PayloadError",
        "boot_amphora                 reverted",
        "certificates left behind for it: 0",
        "is DELETED",
        "instances left: 0, stored certificates left: 0",
    ):
        assert expected in out
    assert "[6]" not in out


def test_without_haproxy_the_demo_says_what_its_second_part_needs_and_still_succeeds(capsys, monkeypatch):
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **kw: None if name == "haproxy" else real_which(name))
    code, out, _ = run_cli(capsys, "demo")
    assert code == 0
    assert "[6] real amphorae" in out
    assert "skipped: the haproxy program is not installed (Debian: apt-get install haproxy)" in out
    assert "demo finished" in out
