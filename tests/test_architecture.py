"""The package's import structure: nerlib's modules import each other in one direction only.

Read with `ast` from the source files (nothing is imported), so a cycle is found even where an
import hidden inside a function would let the package load.
"""

from __future__ import annotations

import ast
import os
import re

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "nerlib")
# The package's face and its command dispatcher import everything; nothing imports them back.
ENTRY_POINTS = {"__init__", "__main__"}


def module_names(folder: str = PACKAGE) -> set[str]:
    return {name[:-3] for name in os.listdir(folder) if name.endswith(".py")}


def nerlib_imports(source: str, modules: set[str]) -> list[tuple[str, int, bool]]:
    """`(module, line, inside a function)` for every import of a nerlib module in `source`.

    Relative (`from .data import x`, `from . import data`) and absolute (`import nerlib.data`,
    `from nerlib import data`) forms are recognised.
    """
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            names: list[str] = []
            if isinstance(child, ast.ImportFrom):
                package = child.module or ""
                if child.level == 1 or package == "nerlib" or package.startswith("nerlib."):
                    package = package[len("nerlib"):].lstrip(".") if child.level == 0 else package
                    if package:
                        names = [package.split(".")[0]]
                    else:
                        names = [alias.name for alias in child.names]
            elif isinstance(child, ast.Import):
                names = [alias.name.split(".")[1] for alias in child.names
                         if alias.name.startswith("nerlib.") and alias.name.count(".") >= 1]
            found.extend((name, child.lineno, in_function) for name in names if name in modules)
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(source), False)
    return found


def import_graph(folder: str = PACKAGE) -> tuple[dict[str, set[str]], list[str]]:
    """Each module's nerlib imports (top level and inside functions), and the function-local ones as `file:line`."""
    modules = module_names(folder)
    graph, local = {}, []
    for name in sorted(modules):
        with open(os.path.join(folder, name + ".py"), encoding="utf-8") as handle:
            imports = nerlib_imports(handle.read(), modules)
        graph[name] = {target for target, _, _ in imports if target != name}
        local += [f"nerlib/{name}.py:{line} imports {target}" for target, line, inside in imports if inside]
    return graph, local


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as `[a, b, ..., a]`, or None; modules in ENTRY_POINTS are left out."""
    done: set[str] = set()
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return None
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in ENTRY_POINTS:
                cycle = walk(target)
                if cycle:
                    return cycle
        path.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in ENTRY_POINTS:
            cycle = walk(start)
            if cycle:
                return cycle
    return None


def test_no_import_cycle():
    graph, _ = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_nerlib_import_inside_a_function():
    # Heavy optional third-party packages (onnxruntime, fastapi, matplotlib, ...) may be imported
    # late; a nerlib module imported inside a function only hides an import that should be at the top.
    _, local = import_graph()
    assert local == []


def test_checks_see_cycles_and_hidden_imports(tmp_path):
    """The checks themselves on a hand-made package: a cycle through a function-local import is found."""
    (tmp_path / "low.py").write_text("import os\n\ndef f():\n    from .high import g\n    return g\n")
    (tmp_path / "high.py").write_text("from .low import f\nfrom nerlib import low as again\n")
    (tmp_path / "__init__.py").write_text("from .high import f\n")
    graph, local = import_graph(str(tmp_path))
    assert graph == {"__init__": {"high"}, "high": {"low"}, "low": {"high"}}
    assert find_cycle(graph) == ["high", "low", "high"]
    assert local == ["nerlib/low.py:4 imports high"]
    (tmp_path / "low.py").write_text("import os\n")
    assert find_cycle(import_graph(str(tmp_path))[0]) is None


@pytest.mark.parametrize("source, expected", [
    ("from .data import load_split\n", [("data", 1, False)]),
    ("from . import data, labels\n", [("data", 1, False), ("labels", 1, False)]),
    ("import nerlib.data\n", [("data", 1, False)]),
    ("from nerlib.labels import LabelSet\n", [("labels", 1, False)]),
    ("def f():\n    import onnxruntime\n    from .data import x\n", [("data", 3, True)]),
    ("import numpy\nfrom .features.sub import y\n", []),
])
def test_import_forms(source, expected):
    assert nerlib_imports(source, {"data", "labels"}) == expected


def test_readme_layout_names_every_module_and_only_those():
    """README's Layout section lists the package's files as they are."""
    readme = os.path.join(os.path.dirname(PACKAGE), "README.md")
    with open(readme, encoding="utf-8") as handle:
        text = handle.read()
    layout = text[text.index("## Layout"):]
    layout = layout[:layout.index("```", layout.index("```") + 3)]
    named = set(re.findall(r"nerlib/(\w+)\.py", layout))
    assert named == module_names()


def test_starting_a_command_imports_no_scorer_or_plotting_stack():
    """`python -m nerlib predict` starts without scikit-learn (seqeval's), matplotlib or onnxruntime."""
    import subprocess
    import sys

    probe = ("import sys, nerlib.cli; heavy = ('sklearn', 'seqeval', 'matplotlib', 'onnxruntime', 'fastapi'); "
             "print(sorted(name for name in heavy if name in sys.modules))")
    env = {**os.environ, "PYTHONPATH": os.path.dirname(PACKAGE), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_every_test_the_docs_name_exists():
    """A promise in the README or docs/ that names its test names one that runs: none renamed or gone."""
    root = os.path.dirname(PACKAGE)
    defined = set()
    for folder, _, files in os.walk(os.path.join(root, "tests")):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(folder, name), encoding="utf-8") as handle:
                    defined |= set(re.findall(r"^\s*(?:async )?def (test_\w+)", handle.read(), re.MULTILINE))
    documents = [os.path.join(root, "README.md")] + [
        os.path.join(root, "docs", name) for name in sorted(os.listdir(os.path.join(root, "docs"))) if name.endswith(".md")]
    missing = []
    for path in documents:
        with open(path, encoding="utf-8") as handle:
            named = re.findall(r"`(test_\w+)", handle.read())
        missing += [f"{os.path.basename(path)}: {name}" for name in named if name not in defined]
    assert defined and not missing
