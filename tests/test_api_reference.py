"""The pdoc API reference (``docs/build_api.py``) builds cleanly and documents the public surface."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("pdoc", reason="pdoc is not installed (a dev extra): pip install -e '.[dev]'")

SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "build_api.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("embnas_build_api", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build_api = _load_script()

#: Names each page must document (an ``id`` anchor per documented member).
KEY_NAMES = {
    "nas": ["Budget", "SearchResult", "PackedEmbedding", "register_controller", "search", "resume", "tune"],
    "nas.core.budget": ["Budget"],
    "nas.core.allocation": ["Allocation"],
    "nas.core.space": ["SearchSpace"],
    "nas.core.controller": ["Controller", "OneShotController"],
    "nas.core.evaluator": ["Evaluator"],
    "nas.core.plugins": ["register_controller", "register_space", "CONTROLLERS", "SPACES"],
    "nas.core.registry": ["Registry"],
    "nas.core.errors": ["EmbnasError", "BudgetError"],
    "nas.pipeline.config": ["SearchConfig"],
    "nas.pipeline.result": ["SearchResult"],
    "nas.pipeline.executors": ["Executor", "LocalExecutor", "RayExecutor", "TrainJob"],
    "nas.pipeline.tuning": ["tune_training", "Tuning", "Trial"],
    "nas.artifact.serving": ["PackedEmbedding"],
    "nas.artifact.native": ["RowGather", "row_gather", "unavailable_reason"],
    "nas.artifact.export": ["export_tables"],
    "nas.artifact.torchrec_tables": ["export_torchrec", "TorchRecTables"],
    "nas.testing": ["check_search_space", "check_controller"],
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("api")
    build_api.build(out)  # raises BrokenReference, with every problem, if the reference is broken
    return out


def test_every_listed_module_is_checked_here():
    assert set(KEY_NAMES) == set(build_api.MODULES)


@pytest.mark.parametrize("module", build_api.MODULES)
def test_each_module_has_a_page_with_its_key_names(reference: Path, module: str):
    page = build_api.page(reference, module)
    assert page.is_file(), f"no page for {module}"
    html = page.read_text(encoding="utf-8")
    missing = [name for name in KEY_NAMES[module] if f'id="{name}"' not in html]
    assert not missing, f"{page.name} does not document {missing}"


def test_the_index_links_every_page(reference: Path):
    index = (reference / "index.html").read_text(encoding="utf-8")
    unlinked = [m for m in build_api.MODULES if f'href="{m.replace(".", "/")}.html"' not in index]
    assert not unlinked, f"index.html does not link {unlinked}"


def test_a_name_in_all_that_does_not_resolve_breaks_the_build(tmp_path: Path, monkeypatch):
    (tmp_path / "apiref_unresolved.py").write_text('"""Doc."""\n__all__ = ["gone"]\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(build_api.BrokenReference, match="'gone', which does not resolve"):
        build_api.build(tmp_path / "out", ("apiref_unresolved",))


def test_a_module_that_does_not_import_breaks_the_build(tmp_path: Path, monkeypatch):
    (tmp_path / "apiref_raises.py").write_text('raise ImportError("half edited")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(build_api.BrokenReference, match="cannot import apiref_raises"):
        build_api.build(tmp_path / "out", ("apiref_raises",))


def test_a_pdoc_warning_breaks_the_build(tmp_path: Path, monkeypatch):
    source = '"""Doc."""\nfrom __future__ import annotations\n\n\ndef f(x: NoSuchType) -> int:\n    """F."""\n'
    (tmp_path / "apiref_bad_annotation.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(build_api.BrokenReference, match="pdoc: .*NoSuchType"):
        build_api.build(tmp_path / "out", ("apiref_bad_annotation",))
