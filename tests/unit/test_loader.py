"""Plugins load from entry points, and a broken one fails at start-up naming itself."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest

from keramos.framework import loader
from keramos.framework.config import make_conf
from keramos.framework.errors import PluginLoadError
from keramos.plugins.noop import NoopCompute

REPO = Path(__file__).resolve().parents[2]

GOOD_COMPUTE = """
from keramos.plugins.noop import NoopCompute

class GoodCompute(NoopCompute):
    pass

class HalfCompute:
    pass

from keramos.framework.contracts import ComputeDriver

class IncompleteCompute(ComputeDriver):
    def build(self, amphora_id, image_id, config_drive, *, flavor=None):
        return "x"

class ExplodingCompute(NoopCompute):
    def __init__(self, conf):
        raise RuntimeError("cannot reach the compute API")
"""

FLOWS = """
from taskflow.patterns import linear_flow
from keramos.framework.contracts import FlowFactory

class Hello(FlowFactory):
    name = "hello"
    def build(self):
        return linear_flow.Flow("hello")

class Misnamed(Hello):
    name = "something_else"
"""


def conf(tmp_path, **drivers):
    return make_conf(
        config_files=[],
        overrides={"DEFAULT": {"state_path": str(tmp_path)}, "drivers": drivers},
    )


@pytest.fixture
def plugins(plugin_distribution):
    plugin_distribution(
        {
            "keramos.compute": {
                "good": "kt_compute:GoodCompute",
                "half": "kt_compute:HalfCompute",
                "incomplete": "kt_compute:IncompleteCompute",
                "exploding": "kt_compute:ExplodingCompute",
                "missing_module": "kt_nowhere:Compute",
            },
            "keramos.flows": {"hello": "kt_flows:Hello", "misnamed": "kt_flows:Misnamed"},
        },
        {"kt_compute": GOOD_COMPUTE, "kt_flows": FLOWS},
    )


def test_a_third_party_driver_loads_from_its_entry_point(plugins, tmp_path):
    drivers = loader.load_drivers(conf(tmp_path, compute="good"))
    try:
        assert type(drivers.compute).__name__ == "GoodCompute"
    finally:
        drivers.close()


@pytest.mark.parametrize(
    ("name", "cause"),
    [
        ("nonexistent", "no such entry point is installed (installed: "),
        ("half", "is not a subclass of keramos.framework.contracts.compute.ComputeDriver"),
        ("incomplete", "IncompleteCompute does not implement ComputeDriver: missing delete, get"),
        ("exploding", "ExplodingCompute(conf) failed: cannot reach the compute API"),
        ("missing_module", "cannot import kt_nowhere:Compute: No module named 'kt_nowhere'"),
    ],
)
def test_a_broken_driver_fails_with_one_line_naming_group_and_entry_point(
    plugins, tmp_path, name, cause
):
    with pytest.raises(PluginLoadError) as raised:
        loader.load_drivers(conf(tmp_path, compute=name))
    message = str(raised.value)
    assert message.startswith(f"keramos.compute: entry point {name!r}: ")
    assert cause in message
    assert "\n" not in message


def test_a_flow_whose_name_differs_from_its_entry_point_is_refused(plugins, tmp_path):
    with pytest.raises(PluginLoadError, match=r"Misnamed.name is 'something_else', not 'misnamed'"):
        loader.load_flow_classes(["misnamed"])


def test_only_the_configured_flows_are_served(plugins, tmp_path):
    configured = conf(tmp_path, flows=["hello", "create_amphora"])
    drivers = loader.load_drivers(configured)
    try:
        assert sorted(loader.load_flows(configured, drivers)) == ["create_amphora", "hello"]
    finally:
        drivers.close()


def test_a_given_driver_must_honour_its_contract_and_the_error_names_no_entry_point(tmp_path):
    with pytest.raises(TypeError) as refused:
        loader.load_drivers(conf(tmp_path), network=NoopCompute(conf(tmp_path)))
    assert str(refused.value) == (
        "the network driver given is a keramos.plugins.noop.NoopCompute, "
        "not a keramos.framework.contracts.network.NetworkDriver"
    )


def test_installed_entry_points_name_their_distribution(plugins):
    entries = {(e.group, e.name): e for e in loader.installed_entry_points()}
    assert entries[("keramos.compute", "good")].distribution == "keramos-test-plugin"
    assert entries[("keramos.compute", "noop")].distribution == "keramos"
    assert entries[("keramos.flows", "create_amphora")].target == "keramos.flows.amphora:CreateAmphora"


def test_every_in_tree_entry_point_honours_its_contract():
    for entry in loader.installed_entry_points():
        if entry.distribution != "keramos":
            continue
        if entry.group == loader.FLOWS_GROUP:
            loader.load_flow_classes([entry.name])
        else:
            loader.load_driver_class(entry.group.split(".", 1)[1], entry.name)


def test_every_python_package_in_the_tree_is_listed_in_setup_cfg():
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    listed = set(parser["options"]["packages"].split())
    on_disk = set()
    for top in ("framework", "flows", "plugins"):
        for init in (REPO / top).rglob("__init__.py"):
            relative = init.parent.relative_to(REPO).parts
            on_disk.add(".".join(("keramos", *relative)))
    assert on_disk == listed
