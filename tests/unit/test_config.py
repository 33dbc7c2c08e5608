"""Configuration: options documented, sample config current, overrides and bad values."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

import pytest
from oslo_config import cfg

from keramos.framework import config

REPO = Path(__file__).resolve().parents[2]
GENERATOR_CONF = REPO / "etc" / "keramos" / "keramos-config-generator.conf"
SAMPLE = REPO / "etc" / "keramos" / "keramos.conf.sample"


def test_every_option_has_help_text():
    for group, opts in config.list_opts():
        for opt in opts:
            assert opt.help and len(opt.help) > 10, f"[{group or 'DEFAULT'}] {opt.name} has no help"


def test_the_sample_config_is_current(tmp_path):
    fresh = tmp_path / "keramos.conf.sample"
    subprocess.run(
        [
            sys.executable,
            "-W",
            "ignore",
            "-m",
            "oslo_config.generator",
            "--config-file",
            str(GENERATOR_CONF),
            "--output-file",
            str(fresh),
        ],
        check=True,
        cwd=REPO,
        capture_output=True,
    )
    assert fresh.read_text() == SAMPLE.read_text(), (
        "etc/keramos/keramos.conf.sample is stale: run 'tox -e genconfig' and commit it"
    )


def test_the_sample_config_covers_every_option_namespace_keramos_declares():
    """A namespace declared in setup.cfg but left out of the generator's list would keep its
    options out of the sample, and the staleness check above could not see it."""
    declared = configparser.ConfigParser()
    declared.read(REPO / "setup.cfg")
    namespaces = {
        line.split("=")[0].strip()
        for line in declared["options.entry_points"]["oslo.config.opts"].splitlines()
        if line.strip()
    }
    generator = GENERATOR_CONF.read_text().splitlines()
    generated = {line.split("=", 1)[1].strip() for line in generator if line.startswith("namespace")}
    assert namespaces - generated == set()
    assert generated - namespaces == {"oslo.log"}


def sample_defaults() -> dict[tuple[str, str], list[str]]:
    """(group, option) -> the default values the sample shows (``#name = value`` lines)."""
    shown: dict[tuple[str, str], list[str]] = {}
    group = "DEFAULT"
    for line in SAMPLE.read_text().splitlines():
        if line.startswith("[") and line.endswith("]"):
            group = line[1:-1]
        elif line.startswith("#") and " = " in line and " " not in line.split(" = ")[0]:
            name, value = line[1:].split(" = ", 1)
            shown.setdefault((group, name), []).append(value)
    return shown


def as_sample_values(value) -> list[str]:
    if isinstance(value, bool):
        return [str(value).lower()]
    if isinstance(value, list):
        return [",".join(value)]
    return [str(value)]


def test_the_sample_shows_the_defaults_keramos_gives_oslo_messaging_options():
    conf = config.make_conf(config_files=[])
    shown = sample_defaults()
    assert shown[("oslo_messaging_rabbit", "rabbit_quorum_queue")] == ["true"]
    assert conf.oslo_messaging_rabbit.rabbit_quorum_queue is True
    for group, defaults in config.MESSAGING_DEFAULTS.items():
        for name in defaults:
            value = conf[name] if group is None else conf[group][name]
            # driver is a MultiStrOpt: the sample shows one line per value.
            expected = value if name == "driver" else as_sample_values(value)
            assert shown[(group or "DEFAULT", name)] == expected, f"[{group}] {name}"


def test_files_then_overrides(tmp_path):
    conf_file = tmp_path / "keramos.conf"
    conf_file.write_text("[worker]\ntopic = from-file\nworkers = 3\n")
    conf = config.make_conf(
        ["--config-file", str(conf_file)], overrides={"worker": {"workers": 5}}
    )
    assert conf.worker.topic == "from-file"
    assert conf.worker.workers == 5
    assert conf.control_exchange == "keramos"
    assert conf.oslo_messaging_notifications.topics == ["keramos_notifications"]


def test_a_bad_value_in_a_file_is_refused_naming_the_option(tmp_path):
    conf_file = tmp_path / "keramos.conf"
    conf_file.write_text("[worker]\nengine = turbo\n")
    with pytest.raises(cfg.ConfigFileValueError, match=r"^\[worker\] engine: .*'turbo'$"):
        config.make_conf(["--config-file", str(conf_file)])


def test_a_bad_value_of_an_option_a_plugin_registers_is_found_by_check_values(tmp_path):
    conf_file = tmp_path / "keramos.conf"
    conf_file.write_text("[example_plugin]\nmode = bogus\n")
    conf = config.make_conf(["--config-file", str(conf_file)])
    conf.register_opts([cfg.StrOpt("mode", choices=["a", "b"])], group="example_plugin")
    with pytest.raises(cfg.ConfigFileValueError, match=r"^\[example_plugin\] mode: .*'bogus'$"):
        config.check_values(conf)


def test_state_paths_follow_state_path(tmp_path):
    conf = config.make_conf(config_files=[], overrides={"DEFAULT": {"state_path": str(tmp_path)}})
    assert conf.state_store.connection == f"sqlite:///{tmp_path}/keramos.sqlite"
    assert conf.persistence.connection == f"sqlite:///{tmp_path}/flows.sqlite"
