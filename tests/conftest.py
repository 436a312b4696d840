"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real datasets in ``../shared/data`` beside the project; skips the test when absent."""
    path = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip("../shared/data not found: real-data tests need the shared datasets beside the project")
    return path


@pytest.fixture()
def one_thread():
    """Tiny tensors: one thread avoids thread-pool overhead (and contention on shared CI cores)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
