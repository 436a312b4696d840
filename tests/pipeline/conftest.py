"""Fixtures shared by the run-folder tests: a small interaction file that a search finishes in seconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def small_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 users, about 400 items with power-law popularity, as ``user_id,item_id`` rows (fixed seed)."""
    rng = np.random.default_rng(0)
    rows = ["user_id,item_id"]
    for user in range(300):
        rows += [f"{user},{item}" for item in sorted(set((rng.zipf(1.3, size=25) % 400).tolist()))]
    path = tmp_path_factory.mktemp("data") / "small.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="session")
def small_search(small_csv: Path) -> list[str]:
    """``embnas search`` options of a quick search on :func:`small_csv` (add ``--runs`` and ``--name``).

    A random controller, so the run has several candidates, a controller state and trial events.
    """
    return ["--data", str(small_csv), "--epochs", "2", "--eval-every", "1", "--quiet", "--fitness-users", "300",
            "--controller", "random", "--trials", "3", "--retrain-top", "2"]
