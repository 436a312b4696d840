"""Options refused where they are given: non-finite numbers, absurd widths, tables that cannot fit; the summary's byte limit."""

from __future__ import annotations

import pytest

import nas
from nas.app.cli import main
from nas.app.summary import summary_table
from nas.core.accounting import export_byte_limit, masked_value_limit
from nas.core.errors import ConfigError
from nas.pipeline.config import (
    D_MAX_LIMIT,
    FineTuneConfig,
    SearchConfig,
    SupernetOptions,
    TrainingOptions,
    available_memory,
    check_memory,
    training_memory,
)

INF, NAN = float("inf"), float("nan")
#: A one-epoch search on small data: seconds.
FAST = {"train": {"epochs": 1, "eval_every": 1}, "fitness_users": 300, "progress": False}


@pytest.fixture(scope="module")
def data():
    from recsys.data import synthetic

    return synthetic(n_users=300, n_items=400, seed=3)


@pytest.mark.parametrize("option", ["lr", "reg", "temperature"])
@pytest.mark.parametrize("value", [INF, -INF, NAN])
def test_non_finite_training_options_are_refused_naming_the_option(option, value):
    with pytest.raises(ConfigError, match=rf"training option {option} \(--{option}\) must be a finite number"):
        TrainingOptions(**{option: value})


@pytest.mark.parametrize("option", ["lr", "gamma", "reg"])
@pytest.mark.parametrize("value", [INF, NAN])
def test_non_finite_fine_tuning_options_are_refused_naming_the_option(option, value):
    with pytest.raises(ConfigError, match=f"fine-tuning option {option} must be a finite number"):
        FineTuneConfig(**{option: value})


def test_fine_tuning_options_out_of_range_name_the_option():
    for options, name in [({"lr": 0.0}, "lr"), ({"gamma": 1.5}, "gamma"), ({"reg": -1.0}, "reg"),
                          ({"decay_every": 0}, "decay_every"), ({"batch_size": 0}, "batch_size")]:
        with pytest.raises(ConfigError, match=f"fine-tuning {name} must be"):
            FineTuneConfig(**options)


def test_non_finite_numbers_in_option_dicts_and_int_fields_are_refused():
    with pytest.raises(ConfigError, match=r"controller_options\.lr \(--controller-option\) must be a finite number"):
        SearchConfig(controller_options={"lr": INF})
    with pytest.raises(ConfigError, match=r"space_options\.grid\[1\] \(--space-option\) must be a finite number"):
        SearchConfig(space_options={"grid": [4, NAN]})
    with pytest.raises(ConfigError, match="supernet option epochs must be a finite number"):
        SupernetOptions(epochs=INF)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"training option epochs \(--epochs\)"):
        TrainingOptions(epochs=INF)  # type: ignore[arg-type]
    SearchConfig(controller_options={"lr": 0.05}, space_options={"grid": [4, 8]})  # finite ones pass


def test_lr_inf_on_the_command_line_is_one_line_before_any_training(tmp_path, capsys: pytest.CaptureFixture[str]):
    for flag in ("--lr", "--reg"):
        assert main(["search", "--runs", str(tmp_path), flag, "inf", "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"({flag}) must be a finite number, got inf" in err
    assert not list(tmp_path.iterdir()), "nothing is left behind"


def test_nas_search_refuses_a_non_finite_learning_rate():
    with pytest.raises(ConfigError, match="lr"):
        nas.search(train={"lr": NAN}, progress=False)


def test_an_absurd_d_max_is_refused_by_the_configuration():
    with pytest.raises(ConfigError, match=f"--d-max must be between 1 and {D_MAX_LIMIT:,}.*got 100000"):
        SearchConfig(d_max=100_000)
    with pytest.raises(ConfigError, match="--d-max must be between"):
        SearchConfig(d_max=0)
    with pytest.raises(ConfigError, match="--d-min must be non-negative"):
        SearchConfig(d_min=-1)
    assert SearchConfig(d_max=D_MAX_LIMIT).d_max == D_MAX_LIMIT


def test_check_memory_refuses_tables_that_cannot_fit_naming_the_bytes():
    rows = {"user": 30_000, "item": 40_000}
    config = SearchConfig(d_max=60_000)
    needed = training_memory(rows, 60_000)
    assert needed == 4 * 70_000 * 60_000 * 4
    with pytest.raises(ConfigError, match=rf"--d-max 60000 needs at least {needed:,} bytes .* only 1,000,000,000 bytes"):
        check_memory(config, rows, available=10**9)
    check_memory(config, rows, available=needed)  # exactly enough passes
    check_memory(SearchConfig(), rows, available=10**9)  # 64 wide: 72 MB


def test_available_memory_is_measured_on_the_cpu():
    free = available_memory("cpu")
    assert free is None or free > 0
    assert available_memory("cuda:0") is None or available_memory("cuda:0") > 0


def _summary_budget_line(result) -> str:
    return next(line for line in summary_table(result).splitlines() if line.strip().startswith("budget"))


def test_summary_of_an_element_mask_search_shows_the_byte_limit_that_applies(data):
    result = nas.search(data, controller="magprune", budget=0.9, **FAST)
    budget = result.budget
    assert result.allocation.element_masks
    limit = export_byte_limit(budget, element_mask=True)
    assert result.export_bytes <= limit and limit > budget.max_bytes
    line = _summary_budget_line(result)
    assert f"{limit:,} bytes with the element masks" in line
    assert "stored on top of a value budget" in line and f"{limit - budget.max_bytes:,} bytes of masks" in line


def test_summary_of_an_element_mask_search_under_a_byte_budget_counts_the_masks_inside(data):
    result = nas.search(data, controller="magprune", budget="40KB", **FAST)
    budget = result.budget
    limit = export_byte_limit(budget, element_mask=True)
    assert limit == 40_000 and result.export_bytes <= limit
    assert masked_value_limit(budget) < budget.max_values  # the masks take bytes the values would have had
    line = _summary_budget_line(result)
    assert f"at most {masked_value_limit(budget):,} values, {limit:,} bytes, element masks included" in line


def test_summary_without_element_masks_keeps_the_budget_bytes(data):
    result = nas.search(data, controller="equal", budget=0.9, **FAST)
    assert not result.allocation.element_masks
    assert f"{result.budget.max_values:,} values, {result.budget.max_bytes:,} bytes" in _summary_budget_line(result)


def test_d_max_that_cannot_fit_in_memory_is_one_line_and_leaves_no_run(tmp_path, monkeypatch, capsys: pytest.CaptureFixture[str]):
    import nas.pipeline.config as config_module
    from nas.app.cli import main

    monkeypatch.setattr(config_module, "available_memory", lambda device="cpu": 10_000_000)
    assert main(["search", "--runs", str(tmp_path), "--d-max", "4096", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--d-max 4096 needs at least" in err and "are available" in err
    assert not list(tmp_path.iterdir()), "refused before a run folder is made"


def test_a_diverged_training_is_one_line_and_nothing_is_exported(tmp_path, capsys: pytest.CaptureFixture[str]):
    from nas.app.cli import main

    args = ["search", "--runs", str(tmp_path), "--name", "diverged", "--lr", "1e30", "--epochs", "2", "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "training diverged in epoch" in err
    assert not (tmp_path / "diverged" / "export").exists() and not (tmp_path / "diverged" / "metrics.json").exists()
