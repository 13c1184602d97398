"""The package map of docs/ARCHITECTURE.md, checked: packages import downward only.

Every import of a ``medlens`` module (at the top of a file or inside a function) is collected
from the source with ``ast``; a package may import only from packages in lower layers. The
layers are the data path: foundations, images, readers and metrics, parts, data and engine,
reports and explanations, tasks, then the command line.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import medlens

SRC = Path(medlens.__file__).parent
LAYERS = {
    0: {"__init__", "errors", "_json", "_atomic", "_progress", "_data_path", "_lazy"},
    1: {"image", "geometry", "boxes"},  # the Image model, its grids, boxes on them
    2: {"io", "metrics"},
    3: {"transforms", "preprocessing", "models", "inference", "summary", "synthetic"},
    4: {"measure", "deid", "registration", "reconstruction", "generative"},
    5: {"data", "engine"},
    6: {"report"},
    7: {"explain"},
    8: {"tasks"},
    9: {"serve"},
    10: {"cli"},
    11: {"testing"},
}
LAYER = {name: layer for layer, names in LAYERS.items() for name in names}


def _imports() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for path in SRC.rglob("*.py"):
        relative = path.relative_to(SRC)
        source = relative.parts[0] if len(relative.parts) > 1 else relative.stem
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if parts[0] == "medlens":
                    target = parts[1] if len(parts) > 1 else "__init__"
                    if target != source:
                        edges[source].add(target)
    return edges


def test_every_package_has_a_layer():
    found = {p.stem if p.is_file() else p.name for p in SRC.iterdir()
             if (p.suffix == ".py" or (p / "__init__.py").exists())}  # fmt: skip
    assert found - set(LAYER) == set(), "add new packages to LAYERS (and ARCHITECTURE.md)"


def test_packages_import_downward_only():
    """Upward or sideways imports are refused; the foundations (layers 0 and 1) may use each
    other, and the package root is a lazy facade over the public names."""
    upward = [
        f"{source} -> {target}"
        for source, targets in _imports().items()
        if source != "__init__"
        for target in targets
        if LAYER[target] > LAYER[source] or (LAYER[target] == LAYER[source] > 1)
    ]
    assert upward == []


def test_explain_and_report_know_no_task():
    edges = _imports()
    assert "tasks" not in edges["explain"] and "tasks" not in edges["report"]


def test_the_architecture_page_names_every_layer():
    page = (SRC.parents[1] / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    for name in LAYER:
        if not name.startswith("_") and name != "__init__":
            assert re.search(rf"`{name}`", page), f"docs/ARCHITECTURE.md does not name {name}"


def test_how_to_add_a_task_lists_exactly_what_a_task_must_supply():
    """The page's example names every abstract method of ``Task``, with its signature."""
    import inspect

    from medlens.tasks.base import Task

    page = (SRC.parents[1] / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    code = page.split("## How to add a task", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    example = next(n for n in ast.walk(ast.parse(code)) if isinstance(n, ast.ClassDef))
    methods = {n.name: n for n in example.body if isinstance(n, ast.FunctionDef)}
    assert set(methods) == set(Task.__abstractmethods__)
    for name, node in methods.items():
        expected = [p for p in inspect.signature(getattr(Task, name)).parameters]
        given = [a.arg for a in (*node.args.args, *node.args.kwonlyargs)]
        assert [p for p in expected if p not in ("options",)] == given, name
    attributes = {t.id for n in example.body if isinstance(n, ast.Assign) for t in n.targets}
    assert {"name", "summary", "plan_type"} <= attributes


def test_the_command_line_answers_help_without_torch():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from medlens.cli.main import main\n"
        "for args in (['--help'], ['train', '--help'], ['predict', '--help']):\n"
        "    assert main(args) == 0\n"
        "assert 'torch' not in sys.modules, 'medlens --help imported torch'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
