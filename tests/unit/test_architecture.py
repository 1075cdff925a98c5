"""The package's shape, checked from its source: the walls a newcomer can rely on.

- no import circle among ``include/fmops`` modules, counting imports inside functions too (only
  ``if TYPE_CHECKING:`` blocks are left out: they never run);
- the target is chosen in one place: no comparison with a target's name outside
  ``fmops/targets/`` (the registry and the two implementations);
- the model kind is chosen in one place: no comparison of a ``task`` with a ``data.task`` value
  outside ``fmops/kinds/``, except where the data itself differs (``config.py``'s rules and the
  ``fmops/data/`` package, which read labelled texts or chats);
- ``config.py`` imports nothing from ``fmops/sagemaker/``; the sagemaker package does not
  import the local executor;
- no module in ``include/fmops`` over 800 lines.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "include" / "fmops"
TARGET_NAMES = {"local", "sagemaker"}
MAX_LINES = 800


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node except those under ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for orelse in node.orelse for n in [orelse, *_runtime_nodes(orelse)])
            continue
        yield node
        yield from _runtime_nodes(node)


def _known(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str) -> set[str]:
    """The fmops modules that ``module`` imports, at module level or inside functions."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {m for m in map(_known, names) if m and m != module}
    return found


def import_circles() -> list[list[str]]:
    """Strongly connected components of the import graph with more than one module (Tarjan)."""
    graph = {m: imports_of(m) for m in MODULES}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return circles


def test_no_import_circles():
    circles = import_circles()
    described = [
        " <-> ".join(c)
        + ": "
        + "; ".join(f"{a} imports {b}" for a in c for b in sorted(imports_of(a) & set(c)))
        for c in circles
    ]
    assert not circles, "import circles:\n" + "\n".join(described)


def test_the_circle_finder_finds_a_circle(tmp_path, monkeypatch):
    """The check above can fail: two modules importing each other inside functions."""
    package = tmp_path / "fmops"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from fmops import b\n")
    (package / "b.py").write_text("from fmops.a import f\n")
    (package / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from fmops import a\n"
    )
    import test_architecture as me

    monkeypatch.setattr(me, "PACKAGE", package)
    monkeypatch.setattr(me, "MODULES", me._modules())
    assert me.import_circles() == [["fmops.a", "fmops.b"]]


def _target_comparisons(path: Path) -> list[str]:
    """Comparisons of something named ``target`` with a target's name, e.g.
    ``config.target == "sagemaker"`` or ``handle.get("target") != "local"``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        names = {
            o.value for o in operands if isinstance(o, ast.Constant) and o.value in TARGET_NAMES
        }
        others = [ast.unparse(o) for o in operands if not isinstance(o, ast.Constant)]
        if names and any("target" in text for text in others):
            found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_branch_on_the_target_name_outside_the_targets():
    outside = [
        path
        for name, path in MODULES.items()
        if not (name == "fmops.targets" or name.startswith("fmops.targets."))
    ]
    found = [line for path in outside for line in _target_comparisons(path)]
    assert not found, "branches on the target's name outside fmops/targets:\n" + "\n".join(found)


def test_the_branch_finder_finds_one(tmp_path, monkeypatch):
    source = tmp_path / "fmops" / "x.py"
    source.parent.mkdir()
    source.write_text('if config.target == "sagemaker":\n    pass\nok = service == "sagemaker"\n')
    import test_architecture as me

    monkeypatch.setattr(me, "PACKAGE", source.parent)
    assert [line.split(": ", 1)[1] for line in me._target_comparisons(source)] == [
        "config.target == 'sagemaker'"
    ]


KIND_TASKS = {"classification", "instruction"}
# Where data.task may be compared: the kinds, the config's own rules, and the data package (the
# shape of the records: labelled texts or chats).
KIND_BRANCHES_ALLOWED = ("fmops.kinds", "fmops.config", "fmops.data")


def _kind_comparisons(path: Path) -> list[str]:
    """Comparisons of a ``data.task`` with a model kind's value, e.g.
    ``config.data.task == "classification"``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        names = {o.value for o in operands if isinstance(o, ast.Constant) and o.value in KIND_TASKS}
        others = [ast.unparse(o) for o in operands if not isinstance(o, ast.Constant)]
        if names and any(text.endswith("data.task") for text in others):
            found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_branch_on_the_model_kind_outside_the_kinds():
    outside = [
        path
        for name, path in MODULES.items()
        if not any(name == a or name.startswith(a + ".") for a in KIND_BRANCHES_ALLOWED)
    ]
    found = [line for path in outside for line in _kind_comparisons(path)]
    assert not found, "branches on data.task outside fmops/kinds:\n" + "\n".join(found)


def test_the_kind_branch_finder_finds_one(tmp_path):
    source = tmp_path / "x.py"
    source.write_text(
        'if config.data.task == "instruction":\n    pass\nok = scenario.name == "instruction"\n'
    )
    import test_architecture as me

    monkeypatch_package = me.PACKAGE
    try:
        me.PACKAGE = source.parent
        found = me._kind_comparisons(source)
    finally:
        me.PACKAGE = monkeypatch_package
    assert [line.split(": ", 1)[1] for line in found] == ["config.data.task == 'instruction'"]


@pytest.mark.parametrize(
    ("importer", "forbidden"),
    [("fmops.config", "fmops.sagemaker"), ("fmops.sagemaker", "fmops.jobs.local")],
)
def test_walls_between_packages(importer, forbidden):
    offenders = [
        f"{name} imports {other}"
        for name in MODULES
        if name == importer or name.startswith(importer + ".")
        for other in imports_of(name)
        if other == forbidden or other.startswith(forbidden + ".")
    ]
    assert not offenders, offenders


def test_no_module_over_800_lines():
    long = {
        name: lines
        for name, path in MODULES.items()
        if (lines := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"
