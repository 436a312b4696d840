"""A front: several budgets searched with one supernet, each budget an ordinary run, resumable, equal to a single run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import nas.app.front as front_module
from nas.app.cli import main
from nas.app.front import split_budgets
from nas.core.errors import ConfigError
from nas.pipeline.runs import Run

FAST = ["--controller", "random", "--trials", "3", "--epochs", "2", "--eval-every", "1", "--quiet", "--fitness-users", "300"]


@pytest.fixture(autouse=True)
def reference_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("EMBNAS_CACHE", str(tmp_path_factory.getbasetemp() / "embnas-cache"))


@pytest.fixture(scope="module")
def front(tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EMBNAS_CACHE", str(tmp_path_factory.getbasetemp() / "embnas-cache"))
        assert main(["search", "--runs", str(runs), "--name", "f", "--budget", "0.8,0.9", *FAST]) == 0
    return runs / "f"


def trained(folder: Path, stage: str) -> int:
    return sum(1 for event in Run(folder).events("trained") if event["stage"] == stage)


def test_every_budget_is_a_whole_run_and_the_supernet_is_trained_once(front: Path):
    summary = json.loads((front / "front.json").read_text())
    assert [entry["budget"] for entry in summary["budgets"]] == ["0.8", "0.9"]
    for entry in summary["budgets"]:
        run = Path(entry["run"])
        assert (run / "export" / "manifest.json").is_file() and (run / "metrics.json").is_file()
        assert (run / "report" / "index.html").is_file()  # linked from front.html
        assert trained(run, "supernet") == 0  # read from the shared one
        assert entry["bytes"] <= entry["max_bytes"]
    assert trained(front / "supernet", "supernet") == 1
    assert summary["budgets"][0]["bytes"] > summary["budgets"][1]["bytes"]
    page = (front / "front.html").read_text()
    assert page.count('data-point="budget"') == 2 and "full model" in page and "<script" not in page


def test_a_budget_of_the_front_equals_a_single_search_with_the_same_supernet_budgets(front: Path, tmp_path: Path):
    assert main(["search", "--runs", str(tmp_path), "--name", "one", "--budget", "0.9", "--supernet-budgets", "0.8,0.9",
                 *FAST]) == 0
    single = json.loads((tmp_path / "one" / "metrics.json").read_text())
    within = json.loads((front / "budget-0.9" / "metrics.json").read_text())
    assert single["allocation"]["fingerprint"] == within["allocation"]["fingerprint"]
    assert single["allocated"]["test"] == within["allocated"]["test"]


def test_a_stopped_front_continues_without_training_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    calls = []
    real = front_module.run_search

    def stopping(config, *args, **kwargs):  # noqa: ANN001, ANN202 - run_search's arguments
        calls.append(config.budget)
        if len(calls) == 2:
            raise KeyboardInterrupt  # stopped before the second budget's run began
        return real(config, *args, **kwargs)

    monkeypatch.setattr(front_module, "run_search", stopping)
    arguments = ["search", "--runs", str(tmp_path), "--name", "f", "--budget", "0.8,0.9", *FAST]
    assert main(arguments) == 130
    assert not (tmp_path / "f" / "front.json").exists()
    def work(folder: Path) -> list[str]:
        return [e["event"] for e in Run(folder).events() if e["event"] in ("trial", "trained")]

    finished = work(tmp_path / "f" / "budget-0.8")
    monkeypatch.setattr(front_module, "run_search", real)
    assert main(arguments) == 0
    assert work(tmp_path / "f" / "budget-0.8") == finished  # read back: nothing measured or trained again
    assert trained(tmp_path / "f" / "supernet", "supernet") == 1
    assert len(json.loads((tmp_path / "f" / "front.json").read_text())["budgets"]) == 2


def test_budgets_that_cannot_make_a_front_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    with pytest.raises(ConfigError):
        split_budgets("0.8,,0.9")
    with pytest.raises(ConfigError, match="once"):
        split_budgets("0.8,0.8")
    assert main(["search", "--runs", str(tmp_path), "--budget", "0.8,0.9", "--supernet-budgets", "0.5", *FAST]) == 2
    assert "drop --supernet-budgets" in capsys.readouterr().err
    assert main(["search", "--runs", str(tmp_path), "--budget", "0.8,0.999", *FAST]) == 2
    assert "smallest feasible budget" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # refused before anything ran: no front folder left behind
