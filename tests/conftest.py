"""Shared pytest fixtures."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

#: The fuzz tests' count lines of this run.
_collected: list[str] = []


@pytest.fixture(scope="session", autouse=True)
def reference_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One cache of full reference models for the whole test run (never the user's own cache).

    Tests that train the same reference (same data, backbone, recipe and seed) share it,
    as runs do; subprocesses of the command line inherit it through the environment.
    """
    folder = tmp_path_factory.mktemp("embnas-cache")
    previous = os.environ.get("EMBNAS_CACHE")
    os.environ["EMBNAS_CACHE"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("EMBNAS_CACHE", None)
    else:
        os.environ["EMBNAS_CACHE"] = previous


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


#: Lines the fuzz tests print about how many cases they ran: shown at the end of every run.
_FUZZ_COUNT = re.compile(r"^(fuzz |run-folder readers |embnas \w+ \()")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Keep the case counts the fuzzers printed (captured output of their call)."""
    if report.when == "call":
        _collected.extend(line[:160] for line in report.capstdout.splitlines() if _FUZZ_COUNT.match(line))


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:  # noqa: ANN001
    """The fuzzers' case counts, so that a run's output says how much was fuzzed."""
    lines = list(_collected)
    if lines:
        terminalreporter.section("fuzz cases")
        for line in lines:
            terminalreporter.write_line(line)
