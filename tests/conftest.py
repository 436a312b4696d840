"""Shared pytest fixtures."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

#: The fuzz tests' count lines of this run.
_collected: list[str] = []


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
