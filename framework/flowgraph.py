"""Pictures of taskflow flows: an outline in text, a Graphviz DOT graph, and SVG through ``dot``.

Drawn from the flow object a factory builds, not from a description kept beside it, so the
picture cannot drift from what runs: every atom (task or retry controller) with what it requires
and provides, every subflow with its pattern (linear, unordered, graph), its retry controller,
and the links between its children, deciders included. Inputs a flow may be given or not (its
payload's optional fields, and arguments an atom declares optional) are drawn apart from those
it requires.
"""

from __future__ import annotations

import dataclasses
import html
import shutil
import subprocess
import textwrap
from collections.abc import Collection, Iterator

from taskflow import atom as tf_atom
from taskflow import flow as tf_flow
from taskflow import retry as tf_retry

from keramos.framework.errors import KeramosError

#: Output formats of :func:`render`.
FORMATS: tuple[str, ...] = ("text", "dot", "svg")

#: Seconds Graphviz may take to lay a flow out.
DOT_TIMEOUT = 60.0

#: Characters per line of a box's requires / optional / provides lists in a picture.
LABEL_WIDTH = 48


@dataclasses.dataclass
class Link:
    """A link between two children of a subflow: ``target`` runs after ``source``."""

    source: Node
    target: Node
    decider: str | None = None


@dataclasses.dataclass
class Node:
    """One atom or one (sub)flow of a flow, as drawn.

    ``kind`` is ``task`` or ``retry`` for an atom, or the pattern of a flow: ``linear``,
    ``unordered`` or ``graph``.
    """

    kind: str
    name: str
    requires: list[str] = dataclasses.field(default_factory=list)
    #: Inputs the atom runs without: declared optional, or optional in the flow's payload.
    optional: list[str] = dataclasses.field(default_factory=list)
    provides: list[str] = dataclasses.field(default_factory=list)
    retry: Node | None = None
    children: list[Node] = dataclasses.field(default_factory=list)
    links: list[Link] = dataclasses.field(default_factory=list)

    @property
    def is_atom(self) -> bool:
        """Whether this node is a task or a retry controller (not a flow)."""
        return self.kind in ("task", "retry")

    def atoms(self) -> Iterator[Node]:
        """Every atom under this node, depth first in the order the flow lists them; a flow's
        retry controller comes before its children (it runs first)."""
        if self.is_atom:
            yield self
            return
        if self.retry is not None:
            yield self.retry
        for child in self.children:
            yield from child.atoms()

    def entries(self) -> list[Node]:
        """The atoms that may run first in this node."""
        if self.is_atom:
            return [self]
        targets = {id(link.target) for link in self.links}
        return [atom for child in self.children if id(child) not in targets for atom in child.entries()]

    def exits(self) -> list[Node]:
        """The atoms that may run last in this node."""
        if self.is_atom:
            return [self]
        sources = {id(link.source) for link in self.links}
        return [atom for child in self.children if id(child) not in sources for atom in child.exits()]


def _pattern(flow: tf_flow.Flow) -> str:
    module = type(flow).__module__.rpartition(".")[2]
    return {"linear_flow": "linear", "unordered_flow": "unordered", "graph_flow": "graph"}.get(
        module, type(flow).__name__
    )


def _decider_name(metadata: dict) -> str | None:
    decider = metadata.get("decider")
    if decider is None:
        return None
    return getattr(decider, "__qualname__", None) or type(decider).__name__


def describe(item: tf_flow.Flow | tf_atom.Atom, optional_inputs: Collection[str] = ()) -> Node:
    """The :class:`Node` tree of a flow (or of a single atom). ``optional_inputs`` are the
    names the flow's caller may leave out (a payload's fields with a default): drawn as optional
    where an atom requires them."""
    if isinstance(item, tf_atom.Atom):
        required = set(item.requires)
        return Node(
            "retry" if isinstance(item, tf_retry.Retry) else "task",
            item.name,
            requires=sorted(required - set(optional_inputs)),
            optional=sorted((required & set(optional_inputs)) | set(item.optional)),
            provides=sorted(item.provides),
        )
    node = Node(_pattern(item), item.name)
    if item.retry is not None:
        node.retry = describe(item.retry, optional_inputs)
    by_item: dict[int, Node] = {}
    for child, _metadata in item.iter_nodes():
        by_item[id(child)] = described = describe(child, optional_inputs)
        node.children.append(described)
    for source, target, metadata in item.iter_links():
        node.links.append(Link(by_item[id(source)], by_item[id(target)], _decider_name(metadata)))
    return node


def _inputs_and_outputs(atom: Node) -> list[tuple[str, list[str]]]:
    lists = [("requires", atom.requires), ("optional", atom.optional), ("provides", atom.provides)]
    return [(what, names) for what, names in lists if names]


def _atom_line(atom: Node) -> str:
    line = f"{atom.kind} {atom.name}"
    for what, names in _inputs_and_outputs(atom):
        line += f"  {what}: {', '.join(names)}"
    return line


def to_text(node: Node, indent: str = "") -> str:
    """An indented outline: one line per atom and per subflow, in the flow's order."""
    if node.is_atom:
        return indent + _atom_line(node)
    lines = [f"{indent}{node.kind} flow {node.name}"]
    if node.retry is not None:
        lines.append(indent + "  " + _atom_line(node.retry) + "  (retries this flow)")
    lines += [to_text(child, indent + "  ") for child in node.children]
    lines += [
        f"{indent}  decider {link.decider}: {link.target.name} runs after {link.source.name} "
        "only if it says so"
        for link in node.links
        if link.decider
    ]
    return "\n".join(lines)


def _quote(text: str) -> str:
    """``text`` as a DOT quoted string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class _Dot:
    """Builds the DOT source of one flow; atoms are numbered so that names need no escaping
    in identifiers."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._ids: dict[int, str] = {}
        self._clusters: dict[int, str] = {}

    def atom_id(self, atom: Node) -> str:
        return self._ids.setdefault(id(atom), f"atom{len(self._ids)}")

    def atom(self, atom: Node, indent: str) -> None:
        rows = [f"<B>{html.escape(atom.name)}</B>"]
        for what, names in _inputs_and_outputs(atom):
            lines = textwrap.wrap(f"{what}: {', '.join(names)}", LABEL_WIDTH, subsequent_indent="    ")
            style = ("<I>", "</I>") if what == "optional" else ("", "")
            rows += [
                f'<FONT POINT-SIZE="8" COLOR="#444444">{style[0]}{html.escape(line)}{style[1]}</FONT>'
                for line in lines
            ]
        shape = "diamond" if atom.kind == "retry" else "box"
        label = "<" + '<BR ALIGN="LEFT"/>'.join(rows) + '<BR ALIGN="LEFT"/>>'
        self.lines.append(f"{indent}{self.atom_id(atom)} [label={label}, shape={shape}];")

    def flow(self, node: Node, indent: str) -> None:
        cluster = self._clusters.setdefault(id(node), f"cluster{len(self._clusters) + 1}")
        self.lines.append(f"{indent}subgraph {cluster} {{")
        self.lines.append(f"{indent}  label={_quote(f'{node.name} ({node.kind})')}; labeljust=l;")
        inner = indent + "  "
        if node.retry is not None:
            self.atom(node.retry, inner)
        for child in node.children:
            if child.is_atom:
                self.atom(child, inner)
            else:
                self.flow(child, inner)
        self.lines.append(f"{indent}}}")
        if node.retry is not None:
            for entry in node.entries():
                self.edge(node.retry, entry, "style=dotted")
        for link in node.links:
            attributes = [f"label={_quote('if ' + link.decider)}"] if link.decider else []
            # An arrow to or from a subflow ends at its frame, so it never runs through the
            # subflow's title.
            if not link.source.is_atom:
                attributes.append(f"ltail={self._clusters[id(link.source)]}")
            if not link.target.is_atom:
                attributes.append(f"lhead={self._clusters[id(link.target)]}")
            for source in link.source.exits():
                for target in link.target.entries():
                    self.edge(source, target, ", ".join(attributes))

    def edge(self, source: Node, target: Node, attributes: str = "") -> None:
        suffix = f" [{attributes}]" if attributes else ""
        self.lines.append(f"  {self.atom_id(source)} -> {self.atom_id(target)}{suffix};")


def to_dot(node: Node) -> str:
    """A Graphviz DOT digraph: a cluster per (sub)flow, a box per task, a diamond per retry
    controller, an arrow per ordering the flow imposes (labelled with its decider)."""
    dot = _Dot()
    if node.is_atom:
        dot.atom(node, "  ")
    else:
        dot.flow(node, "  ")
    header = [
        f"digraph {_quote(node.name)} {{",
        "  rankdir=TB;",
        "  compound=true;",
        '  node [fontname="Helvetica", fontsize=10];',
        '  graph [fontname="Helvetica", fontsize=11];',
    ]
    return "\n".join([*header, *dot.lines, "}"]) + "\n"


def to_svg(dot_source: str) -> str:
    """Lay ``dot_source`` out with Graphviz's ``dot`` program; a :class:`KeramosError` says
    when it is missing or fails."""
    program = shutil.which("dot")
    if program is None:
        raise KeramosError(
            "SVG needs Graphviz's 'dot' program, which is not on PATH "
            "(Debian: apt-get install graphviz); --format dot works without it"
        )
    try:
        done = subprocess.run(
            [program, "-Tsvg"],
            input=dot_source,
            capture_output=True,
            text=True,
            timeout=DOT_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise KeramosError(f"Graphviz's dot did not finish within {DOT_TIMEOUT:g}s") from None
    if done.returncode != 0:
        reason = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
        raise KeramosError(f"Graphviz's dot failed: {reason}")
    return done.stdout


def render(flow: tf_flow.Flow, fmt: str, optional_inputs: Collection[str] = ()) -> str:
    """The picture of ``flow`` in ``fmt`` (one of :data:`FORMATS`); ``optional_inputs`` as for
    :func:`describe`."""
    node = describe(flow, optional_inputs)
    if fmt == "text":
        return to_text(node) + "\n"
    if fmt == "dot":
        return to_dot(node)
    if fmt == "svg":
        return to_svg(to_dot(node))
    raise KeramosError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
