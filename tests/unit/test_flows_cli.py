"""``keramos flows list|show``: pictures drawn from the flow objects the factories build."""

from __future__ import annotations

import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import taskflow.engines
from taskflow import atom as tf_atom
from taskflow import retry, task
from taskflow.patterns import graph_flow, linear_flow, unordered_flow

from keramos.framework import flowgraph, loader
from keramos.framework.cli import main
from keramos.framework.cli.flows import DRAWING_STATE_STORE
from keramos.framework.config import make_conf
from tests.conftest import require

REPO = Path(__file__).resolve().parents[2]
COMMITTED_PICTURE = REPO / "doc" / "pictures" / "create_amphora.svg"
SVG = "{http://www.w3.org/2000/svg}"


def require_dot() -> None:
    require(shutil.which("dot") is not None, "Graphviz's dot program (apt-get install graphviz)")


@pytest.fixture
def cli(capsys, tmp_path):
    config = tmp_path / "keramos.conf"
    config.write_text(f"[DEFAULT]\nstate_path = {tmp_path}\n")

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(["--config-file", str(config), *argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def atoms_as_taskflow_compiles(flow_name: str, tmp_path: Path) -> list[str]:
    """The atom names of the flow, walked by taskflow's own compiler, not by flowgraph."""
    conf = make_conf([], config_files=[], overrides={"DEFAULT": {"state_path": str(tmp_path)}})
    drivers = loader.load_drivers(
        conf, state_store=loader.load_driver("state_store", DRAWING_STATE_STORE, conf)
    )
    try:
        flow = loader.load_flow_classes([flow_name])[flow_name](drivers, conf).build()
    finally:
        drivers.close()
    engine = taskflow.engines.load(flow)
    engine.compile()
    names = [node.name for node in engine.compilation.execution_graph if isinstance(node, tf_atom.Atom)]
    assert names
    return names


def svg_texts_and_titles(svg: str) -> tuple[list[str], list[str]]:
    root = ET.fromstring(svg)
    texts = sorted(element.text or "" for element in root.iter(f"{SVG}text"))
    titles = sorted(element.text or "" for element in root.iter(f"{SVG}title"))
    return texts, titles


def test_list_names_and_describes_every_installed_flow(cli):
    code, out, _ = cli("flows", "list")
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert set(lines) == set(loader.load_flow_classes())
    assert "Record, verify the image" in lines["create_amphora"]


@pytest.mark.parametrize("flow_name", ["create_amphora", "failover_amphora", "push_config"])
def test_text_lists_every_atom_taskflow_compiles(cli, tmp_path, flow_name):
    code, out, _ = cli("flows", "show", flow_name)
    assert code == 0
    shown = [line.split()[1] for line in out.splitlines() if line.strip().startswith(("task ", "retry "))]
    assert sorted(shown) == sorted(atoms_as_taskflow_compiles(flow_name, tmp_path))
    assert out.splitlines()[0] == f"linear flow {flow_name}"


def test_text_shows_what_each_task_requires_and_provides(cli):
    _, out, _ = cli("flows", "show", "create_amphora")
    boot = next(line for line in out.splitlines() if "task boot_amphora" in line)
    assert "requires: amphora_id, amphora_server_cert, image_id" in boot
    assert "provides: compute_id" in boot


def test_optional_inputs_are_drawn_apart_from_required_ones(cli):
    _, out, _ = cli("flows", "show", "create_amphora")
    boot = next(line for line in out.splitlines() if "task boot_amphora" in line)
    assert "requires: amphora_id, amphora_server_cert, image_id  optional: network_id" in boot
    check = next(line for line in out.splitlines() if "task check_initial_config" in line)
    assert "optional: lb" in check and "requires:" not in check
    _, dot, _ = cli("flows", "show", "create_amphora", "--format", "dot")
    assert "<I>optional: network_id</I>" in dot


def _points(path: str) -> list[tuple[float, float]]:
    numbers = [float(number) for number in re.findall(r"-?\d+(?:\.\d+)?", path)]
    corners = list(zip(numbers[::2], numbers[1::2], strict=True))
    return [
        (x0 + (x1 - x0) * step / 10, y0 + (y1 - y0) * step / 10)
        for (x0, y0), (x1, y1) in zip(corners, corners[1:], strict=False)
        for step in range(11)
    ]


def test_no_arrow_runs_through_a_subflow_title(cli):
    require_dot()
    _, svg, _ = cli("flows", "show", "create_amphora", "--format", "svg")
    namespace = {"svg": "http://www.w3.org/2000/svg"}
    root = ET.fromstring(svg)
    titles = []
    for cluster in root.iterfind(".//svg:g[@class='cluster']", namespace):
        text = cluster.find("svg:text", namespace)
        size, x, y = float(text.get("font-size")), float(text.get("x")), float(text.get("y"))
        width = len(text.text) * size * 0.6
        left = {"start": x, "middle": x - width / 2, "end": x - width}[text.get("text-anchor", "start")]
        titles.append((text.text, left, left + width, y - size, y + size * 0.3))
    assert len(titles) == 5
    arrows = [edge.find("svg:path", namespace).get("d") for edge in root.iterfind(".//svg:g[@class='edge']", namespace)]
    assert arrows
    for title, left, right, top, bottom in titles:
        for arrow in arrows:
            assert not any(left <= x <= right and top <= y <= bottom for x, y in _points(arrow)), title


def test_svg_is_valid_and_names_every_task(cli, tmp_path):
    require_dot()
    output = tmp_path / "create_amphora.svg"
    code, _, err = cli("flows", "show", "create_amphora", "--format", "svg", "--output", str(output))
    assert code == 0 and str(output) in err
    texts, _ = svg_texts_and_titles(output.read_text())
    for name in atoms_as_taskflow_compiles("create_amphora", tmp_path):
        assert name in texts


def test_dot_output_is_accepted_by_graphviz(cli):
    require_dot()
    _, out, _ = cli("flows", "show", "create_amphora", "--format", "dot")
    laid_out = subprocess.run(
        ["dot", "-Tsvg"], input=out, capture_output=True, text=True, timeout=60, check=False
    )
    assert laid_out.returncode == 0, laid_out.stderr
    ET.fromstring(laid_out.stdout)


def test_committed_picture_is_the_flow_as_built_now(cli, tmp_path):
    """doc/pictures/create_amphora.svg, which the README shows, has the same boxes, labels and
    arrows as the picture of today's flow. Regenerate it with
    ``keramos flows show create_amphora --format svg --output doc/pictures/create_amphora.svg``."""
    require_dot()
    _, fresh, _ = cli("flows", "show", "create_amphora", "--format", "svg")
    assert svg_texts_and_titles(COMMITTED_PICTURE.read_text()) == svg_texts_and_titles(fresh), (
        "doc/pictures/create_amphora.svg is stale: regenerate it (see this test's docstring)"
    )


def test_unknown_flow_is_one_line_and_exit_1(cli):
    code, out, err = cli("flows", "show", "no_such_flow")
    assert code == 1 and out == ""
    assert len(err.strip().splitlines()) == 1 and "no_such_flow" in err


def test_svg_without_graphviz_names_the_program(cli, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    code, _, err = cli("flows", "show", "create_amphora", "--format", "svg")
    assert code == 1
    assert "'dot'" in err and "graphviz" in err and len(err.strip().splitlines()) == 1


class Noted(task.Task):
    def execute(self, value):
        return value


def test_patterns_retries_and_deciders_are_drawn():
    chosen = Noted("chosen", provides="picked")
    skipped = Noted("skipped", rebind={"value": "picked"})
    graph = graph_flow.Flow("choose", retry=retry.Times(3, name="try_thrice")).add(chosen, skipped)
    graph.link(chosen, skipped, decider=lambda history: False)
    both = unordered_flow.Flow("both").add(Noted("left", provides="l"), Noted("right", provides="r"))
    flow = linear_flow.Flow("outer").add(both, graph)
    node = flowgraph.describe(flow)
    assert [atom.name for atom in node.atoms()] == ["left", "right", "try_thrice", "chosen", "skipped"]
    text = flowgraph.to_text(node)
    assert "unordered flow both" in text and "graph flow choose" in text
    assert "retry try_thrice" in text and "(retries this flow)" in text
    assert "decider" in text and "skipped runs after chosen" in text
    dot = flowgraph.to_dot(node)
    # Both tasks of the unordered flow lead to the first task of the graph flow.
    ids = {atom.name: f"atom{index}" for index, atom in enumerate(node.atoms())}
    assert f"{ids['left']} -> {ids['chosen']}" in dot and f"{ids['right']} -> {ids['chosen']}" in dot
    assert "label=\"if " in dot
    if shutil.which("dot"):
        ET.fromstring(flowgraph.to_svg(dot))
