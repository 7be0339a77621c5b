"""The package's shape, checked from its source with ``ast``: no import cycle (imports inside functions count),
no module over 500 lines, nothing importing scripts/ or tests/, no sys.path edits."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "qana_keras"
MAX_LINES = 500


def module_files(package: Path = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under ``package`` (``pkg.__init__`` named ``pkg``)."""
    files = {}
    for path in sorted(package.rglob("*.py")):
        name = ".".join(path.relative_to(package.parent).with_suffix("").parts)
        files[name.removesuffix(".__init__")] = path
    return files


def imported_names(path: Path, module: str) -> list[str]:
    """Every dotted name imported anywhere in the file (top level and inside functions), relative ones resolved."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            names += [base] + [f"{base}.{alias.name}" for alias in node.names]
    return names


def import_graph(files: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the package modules it imports (the longest known prefix of each imported name)."""
    graph = {name: set() for name in files}
    for module, path in files.items():
        for name in imported_names(path, module):
            while name and name not in files:
                name = name.rpartition(".")[0]
            # A parent package is not an edge: importing qana_keras.data.x runs qana_keras/__init__ anyway.
            if name and name != module and not module.startswith(name + "."):
                graph[module].add(name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module."""
    names = sorted(graph)
    index = {name: i for i, name in enumerate(names)}
    rows = [index[a] for a in names for _ in graph[a]]
    cols = [index[b] for a in names for b in graph[a]]
    matrix = csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(names), len(names)))
    _, labels = connected_components(matrix, directed=True, connection="strong")
    groups = {}
    for name, label in zip(names, labels):
        groups.setdefault(label, []).append(name)
    return [sorted(group) for group in groups.values() if len(group) > 1]


def test_the_checker_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_checker_sees_imports_inside_functions(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "one.py").write_text("def f():\n    from pkg import two\n")
    (package / "two.py").write_text("from . import one\n")
    assert cycles(import_graph(module_files(package))) == [["pkg.one", "pkg.two"]]


def test_no_import_cycle():
    found = cycles(import_graph(module_files()))
    assert not found, "import cycles: " + "; ".join(" <-> ".join(group) for group in found)


def test_no_module_over_500_lines():
    long = {name: len(path.read_text().splitlines()) for name, path in module_files().items()}
    assert not {name: n for name, n in long.items() if n > MAX_LINES}


def test_the_package_imports_neither_scripts_nor_tests_nor_edits_sys_path():
    for module, path in module_files().items():
        assert "sys.path" not in path.read_text(), path
        bad = [name for name in imported_names(path, module) if name.split(".")[0] in ("scripts", "tests")]
        assert not bad, f"{path} imports {bad}"


# The allowed import direction: a module imports only modules of its own layer or of layers before it. Base
# modules first, then loading (data, models, runtime), crops, the run folder, the pipeline stages in pipeline
# order (a stage may use an earlier one: refit re-converts, evaluation converts and maps untrained designs),
# reporting, and the command line last.
LAYERS = [
    ("qana_keras", "qana_keras.config", "qana_keras.io", "qana_keras.provenance", "qana_keras.metrics",
     "qana_keras.markdown", "qana_keras.plots"),
    ("qana_keras.data", "qana_keras.models", "qana_keras.runtime"),
    ("qana_keras.crop",),
    ("qana_keras.runs",),
    ("qana_keras.training",),
    ("qana_keras.conversion",),
    ("qana_keras.refit",),
    ("qana_keras.onchip",),
    ("qana_keras.evaluation",),
    ("qana_keras.reporting",),
    ("qana_keras.commands", "qana_keras.failures"),
    ("qana_keras.cli",),
]


def layer_of(module: str) -> int:
    """The index in LAYERS of the longest prefix naming ``module`` (the module or a package holding it)."""
    best = None
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and (best is None or len(name) > len(best[1])):
                best = (i, name)
    assert best is not None, f"{module} is in no layer of tests/test_package_shape.LAYERS: add it"
    return best[0]


def test_imports_run_one_way_only():
    upward = [f"{a} -> {b}" for a, targets in import_graph(module_files()).items() for b in sorted(targets)
              if layer_of(b) > layer_of(a)]
    assert not upward, "imports against the layer order: " + "; ".join(upward)


def test_the_layer_check_catches_an_upward_import():
    assert layer_of("qana_keras.data.dataset") < layer_of("qana_keras.training.train")
    assert layer_of("qana_keras.runs") > layer_of("qana_keras.crop.cache")
