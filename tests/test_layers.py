"""The packages are layered one way: storage <- graph <- traffic <- workers <- api <- cli.

A module may import only from its own package or a lower layer, and no two project modules may
import each other, directly or through others. Both rules are checked on the source with
``ast``: top-level imports and imports inside functions (a lazy import is still a dependency),
absolute and relative ones.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]

#: Layer rank of each top-level package; a module may import from a rank <= its own.
LAYERS = {"storage": 0, "graph": 1, "traffic": 2, "workers": 3, "api": 4, "cli": 5}


def module_name(path: Path, root: Path = ROOT) -> str:
    """Dotted module name of a .py file under ``root`` (a package's ``__init__`` names the package)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_files(root: Path = ROOT) -> list[Path]:
    """Every .py file of the layered packages, sorted."""
    return sorted(p for pkg in LAYERS for p in (root / pkg).rglob("*.py"))


def imported_modules(path: Path, root: Path = ROOT) -> list[tuple[int, str, str]]:
    """``(line, imported module, import statement)`` for every import in ``path``.

    Relative imports are resolved against the file's package. ``from package import name``
    yields ``package.name`` as well as ``package``, so importing a submodule through its
    package counts as importing the submodule.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        text = ast.unparse(node) if isinstance(node, (ast.Import, ast.ImportFrom)) else ""
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name, text) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.append((node.lineno, base, text))
            found.extend((node.lineno, f"{base}.{alias.name}", text) for alias in node.names)
    return found


def module_graph(root: Path = ROOT) -> tuple[nx.DiGraph, list[str]]:
    """Import graph between project modules, and the list of layer violations found on the way.

    An edge ``a -> b`` means module ``a`` imports module ``b`` (only project modules that exist
    as files are nodes; ``from pkg import func`` resolves to ``pkg``).
    """
    files = project_files(root)
    modules = {module_name(p, root) for p in files}
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    violations = []
    for path in files:
        source = module_name(path, root)
        source_rank = LAYERS[source.split(".")[0]]
        for line, target, text in imported_modules(path, root):
            top = target.split(".")[0]
            if top not in LAYERS:
                continue
            if LAYERS[top] > source_rank:
                violations.append((
                    str(path.relative_to(root)), line,
                    f"`{text}` imports {top} (layer {LAYERS[top]}) from "
                    f"{source.split('.')[0]} (layer {source_rank})",
                ))
            if target in modules and target != source:
                graph.add_edge(source, target, line=line, text=text, path=path)
    return graph, [f"{p}:{line}: {what}" for p, line, what in sorted(set(violations))]


def import_cycles(graph: nx.DiGraph, root: Path = ROOT) -> list[str]:
    """One line per strongly connected component of more than one module, naming its imports."""
    cycles = []
    for component in nx.strongly_connected_components(graph):
        if len(component) < 2:
            continue
        sub = graph.subgraph(component)
        edges = "; ".join(
            f"{d['path'].relative_to(root)}:{d['line']} `{d['text']}`"
            for _, _, d in sorted(sub.edges(data=True), key=lambda e: (e[0], e[1]))
        )
        cycles.append(f"cycle between {sorted(component)}: {edges}")
    return sorted(cycles)


def test_no_import_of_a_higher_layer():
    _, violations = module_graph()
    assert not violations, "imports against the layering:\n" + "\n".join(violations)


def test_no_import_cycle_between_modules():
    graph, _ = module_graph()
    cycles = import_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_checker_catches_planted_violations(tmp_path):
    """The checker itself: a backward import (lazy and relative ones too) and a cycle are found."""
    for pkg in LAYERS:
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "graph" / "a.py").write_text("def f():\n    from traffic import b\n")
    (tmp_path / "traffic" / "b.py").write_text("from . import c\n")
    (tmp_path / "traffic" / "c.py").write_text("import traffic.b\nfrom ..api import x\n")
    graph, violations = module_graph(tmp_path)
    assert violations == [
        "graph/a.py:2: `from traffic import b` imports traffic (layer 2) from graph (layer 1)",
        "traffic/c.py:2: `from ..api import x` imports api (layer 4) from traffic (layer 2)",
    ]
    cycles = import_cycles(graph, tmp_path)
    assert len(cycles) == 1 and "['traffic.b', 'traffic.c']" in cycles[0]
