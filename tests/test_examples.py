"""The examples run as documented and agree with a brute-force answer."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from nas.artifact.export import export_tables
from nas.artifact.native import row_gather
from nas.artifact.serving import PackedEmbedding
from nas.core.allocation import Allocation
from nas.core.budget import Budget

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def mf_export(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    dims = {"user": rng.integers(1, 9, 40), "item": rng.integers(0, 9, 300)}
    weights = {name: torch.from_numpy(rng.standard_normal((len(sizes), 8)).astype(np.float32)) for name, sizes in dims.items()}
    allocation = Allocation(dims)
    rows = {name: len(sizes) for name, sizes in dims.items()}
    export_tables(folder, weights, allocation, Budget.from_params(allocation.cost, rows, 8, d_min=0))
    return folder


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_serve_mf_top_k_is_the_brute_force_top_k(tmp_path: Path):
    tables = PackedEmbedding.load(mf_export(tmp_path / "export"), layout="tiered")
    users = torch.tensor([0, 7, 39])
    scores, items = load_example("serve_mf").top_k(tables, users, k=5, chunk=64)  # several chunks
    full = tables.lookup("user", users) @ tables.table("item").T
    expected_scores, _ = full.topk(5, dim=1)
    assert torch.equal(scores, expected_scores)
    assert torch.equal(full.gather(1, items), expected_scores)


def test_serve_mf_runs_and_every_layout_agrees(tmp_path: Path):
    folder = mf_export(tmp_path / "export")
    done = subprocess.run([sys.executable, str(EXAMPLES / "serve_mf.py"), str(folder), "--batch", "16", "--repeat", "2",
                           "--chunk", "100"], capture_output=True, text=True, check=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("PackedEmbedding")]
    ways = 4 if row_gather() is not None else 3  # packed compiled and eager, tiered, dense
    assert len(lines) == ways and all(line.endswith("yes") for line in lines), done.stdout


def test_serve_mf_refuses_a_folder_that_is_not_an_export_in_one_line(tmp_path: Path):
    done = subprocess.run([sys.executable, str(EXAMPLES / "serve_mf.py"), str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().startswith("serve_mf.py: ") and len(done.stderr.strip().splitlines()) == 1
