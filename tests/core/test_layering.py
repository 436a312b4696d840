"""Dependencies point one way, and the folders show the layers.

``recsys`` knows nothing of the search; spaces and controllers know only ``nas.core``;
inside ``nas`` the sub-packages are layers, lowest first: ``core``, ``artifact``,
``pipeline``, then ``app`` and ``testing``.  A module imports only its own layer and
those below.  The built-in spaces and controllers are named by one module alone, the
composition root ``nas/__init__.py``; every other layer reaches them through the
registries.  And no module imports itself back through a chain of imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT = ("nas", "recsys", "search_spaces", "controllers")

#: The layers of ``nas``, lowest first; a module may import its own layer and those below.
NAS_LAYERS = {"nas.core": 0, "nas.artifact": 1, "nas.pipeline": 2, "nas.app": 3, "nas.testing": 3}
#: The one module that imports the built-in plug-ins.
COMPOSITION_ROOT = "nas"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for top in PROJECT for p in (ROOT / top).rglob("*.py")}


def imported(path: Path, modules: dict[str, Path], *, runtime: bool = False) -> set[str]:
    """The project modules ``path`` imports, at any depth of the file (a function's imports included).

    With ``runtime``, imports only a type checker runs (``if TYPE_CHECKING:``) are left out.
    """
    names: set[str] = set()
    tree = ast.parse(path.read_text())
    if runtime:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
                node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:  # ``from package import module`` imports the module
                sub = f"{node.module}.{alias.name}"
                names.add(sub if sub in modules else node.module)
    return {n for n in names if n.split(".")[0] in PROJECT}


def layer_of(name: str) -> str | None:
    return next((layer for layer in NAS_LAYERS if name == layer or name.startswith(layer + ".")), None)


def allowed(importer: str, name: str) -> bool:
    top = name.split(".")[0]
    package = importer.split(".")[0]
    if package == "recsys":
        return top == "recsys"
    if package in ("search_spaces", "controllers"):
        return top == package or name.startswith("nas.core")
    if importer == COMPOSITION_ROOT:
        return True
    if top in ("search_spaces", "controllers"):
        return False
    layer = layer_of(importer)
    if layer == "nas.core":
        return name.startswith("nas.core") or name == "recsys.errors"
    if layer == "nas.artifact":
        return top == "nas" and NAS_LAYERS.get(layer_of(name) or "", 99) <= NAS_LAYERS[layer]
    if top == "recsys":
        return True
    target = layer_of(name)
    return target is not None and NAS_LAYERS[target] <= NAS_LAYERS[layer]


@pytest.mark.parametrize("package", ["recsys", "search_spaces", "controllers", *NAS_LAYERS, COMPOSITION_ROOT])
def test_imports_point_one_way(package: str):
    modules = project_modules()
    mine = [m for m in modules if (m == package if package == COMPOSITION_ROOT else m == package or m.startswith(package + "."))]
    assert mine, f"no modules in {package}"
    offending = {
        f"{modules[m].relative_to(ROOT)} imports {name}"
        for m in mine
        for name in imported(modules[m], modules)
        if not allowed(m, name)
    }
    assert not offending, sorted(offending)


def test_every_nas_module_is_in_a_layer():
    loose = [m for m in project_modules() if m.startswith("nas.") and layer_of(m) is None and m != "nas.__main__"]
    assert not loose, f"modules outside the layers {sorted(NAS_LAYERS)}: {loose}"


def test_only_the_composition_root_names_the_built_in_plugins():
    modules = project_modules()
    naming = sorted(
        m for m in modules if m.split(".")[0] == "nas"
        for name in imported(modules[m], modules) if name.split(".")[0] in ("controllers", "search_spaces")
    )
    assert set(naming) <= {COMPOSITION_ROOT}, naming


def test_no_import_cycle():
    """No chain of imports that run leads from a module back to itself (type-only imports do not run)."""
    modules = project_modules()
    graph = {m: imported(p, modules, runtime=True) & set(modules) - {m} for m, p in modules.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module)
            assert cycle is None, " -> ".join(cycle)


def test_the_serving_loader_imports_nothing_of_the_project():
    """Nothing but its compiled gather, which itself imports nothing of the project."""
    modules = project_modules()
    assert imported(modules["nas.artifact.serving"], modules) == {"nas.artifact.native"}
    assert imported(modules["nas.artifact.native"], modules) == set()
