"""Dependencies point one way: recsys knows nothing of the search; spaces and controllers only of nas.core."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT = ("nas", "recsys", "search_spaces", "controllers")


def imported_packages(path: Path) -> set[str]:
    """Dotted names of every project module ``path`` imports, at any depth of the file."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {n for n in names if n.split(".")[0] in PROJECT}


def allowed(package: str, name: str) -> bool:
    top = name.split(".")[0]
    if package == "recsys":
        return top == "recsys"
    if package == "nas.core":
        return name.startswith("nas.core") or top == "recsys" and name == "recsys.errors"
    if package in ("search_spaces", "controllers"):
        return top == package or name.startswith("nas.core")
    return True


@pytest.mark.parametrize("package", ["recsys", "nas.core", "search_spaces", "controllers"])
def test_imports_point_one_way(package: str):
    folder = ROOT.joinpath(*package.split("."))
    offending = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in folder.rglob("*.py")
        for name in imported_packages(path)
        if not allowed(package, name)
    }
    assert not offending, sorted(offending)
